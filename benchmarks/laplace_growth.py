"""How the Laplace step grows with the screen and the cells (not a test).

Runs the default fit (the Laplace step with empirical Bayes, no SVI) on simulated
screens of increasing size, each in its own process, and prints its time and peak
resident memory with the number of parameters ``K P`` (P = days + replicates + 1 +
genes x days + guides, K contrasts). It then fits the growth laws the dense step
follows, ``memory = m0 + c_m (K P)^2`` and ``time = c_n cells + c_p (K P)^3``, by least
squares, and extrapolates them to the screens of the issue "Screens of any size".

With ``--algebra blocks`` it measures the gene-block algebra instead, whose laws are
``time = c_n cells + c_g genes x K P`` (the first-order elimination reads each gene's row
of the Hessian) and ``memory = m0 + c_m cells`` (the design's non-zeros).

Usage::

    python benchmarks/laplace_growth.py                                  # genes 100..450 x 5 guides, 50k cells
    python benchmarks/laplace_growth.py --algebra blocks --genes 500 1000 2000 4000 --cells 20000
    python benchmarks/laplace_growth.py --genes 300 --cells 50000 100000 200000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

WORKER = r"""
import json, resource, sys, time
from fatebias_core.data.simulate import simulate_experiment
from fatebias_core.config import make_config
from fatebias_core.data.load import load_experiment
from fatebias_core.model.laplace_fit import laplace_fit
cells, genes, guides, kmax = map(int, sys.argv[1:5])
cfg = make_config(sim_n_cells=cells, sim_n_genes=genes, sim_n_guides=guides, sim_kmax=kmax,
                  sim_n_ntc_guides=max(guides // 40, 1), progress=False, laplace_algebra=sys.argv[5])
sim = simulate_experiment(cfg)
exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
res = laplace_fit(exp, cfg)
seconds = time.perf_counter() - t0
K = len(cfg.contrast_fates)
P = exp.cells.n_days + exp.cells.n_reps + 1 + exp.guides.n_genes * exp.cells.n_days + exp.guides.n_guides
print(json.dumps({"cells": exp.n_cells, "genes": exp.guides.n_genes, "guides": exp.guides.n_guides, "KP": K * P,
                  "seconds": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "before_gb": base / 1024**2}))
"""

#: Screens the issue asks about: (genes, guides, cells).
TARGETS = [(300, 2000, 200_000), (1000, 5000, 200_000), (2000, 10_000, 200_000), (5000, 25_000, 200_000),
           (20_000, 100_000, 1_000_000)]


def _one(cells: int, genes: int, guides: int, kmax: int, algebra: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", WORKER, str(cells), str(genes), str(guides), str(kmax), algebra],
                              capture_output=True, text=True, cwd=tmp, check=False)
    if proc.returncode != 0:
        sys.exit(f"failed at {genes} genes, {cells} cells:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, nargs="+", default=[100, 200, 300, 450])
    ap.add_argument("--cells", type=int, nargs="+", default=[50_000])
    ap.add_argument("--guides-per-gene", type=int, default=5)
    ap.add_argument("--kmax", type=int, default=20)
    ap.add_argument("--algebra", choices=["dense", "blocks"], default="dense",
                    help="laplace_algebra to measure (blocks: time = c_n cells + c_g genes x K P, memory = m0 + c_m cells)")
    ap.add_argument("--json", help="also write the measurements to this JSON file")
    args = ap.parse_args()
    rows = []
    for cells in args.cells:
        for genes in args.genes:
            row = _one(cells, genes, genes * args.guides_per_gene, args.kmax, args.algebra)
            rows.append(row)
            print(f"{row['cells']:>9,} cells {row['genes']:>6,} genes {row['guides']:>7,} guides  K P {row['KP']:>7,}  "
                  f"{row['seconds']:8.1f} s  peak {row['peak_gb']:6.2f} GB", flush=True)
    kp = np.array([r["KP"] for r in rows], dtype=float)
    n = np.array([r["cells"] for r in rows], dtype=float)
    g = np.array([r["genes"] for r in rows], dtype=float)
    t = np.array([r["seconds"] for r in rows])
    mem = np.array([r["peak_gb"] for r in rows])
    K = 2
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    if args.algebra == "dense":
        (cn, cp), *_ = np.linalg.lstsq(np.stack([n, kp**3], axis=1), t, rcond=None)
        (m0, cm), *_ = np.linalg.lstsq(np.stack([np.ones_like(kp), kp**2], axis=1), mem, rcond=None)
        print(f"\ngrowth fitted: time = {cn:.3g} s x cells + {cp:.3g} s x (K P)^3; peak = {m0:.2f} GB + {cm:.3g} GB x (K P)^2")

        def law(genes: int, size: int, cells: int) -> tuple[float, float]:
            return cn * cells + cp * size**3, m0 + cm * size**2
    else:
        (cn, cg), *_ = np.linalg.lstsq(np.stack([n, g * kp], axis=1), t, rcond=None)
        (m0, cm), *_ = np.linalg.lstsq(np.stack([np.ones_like(n), n], axis=1), mem, rcond=None)
        print(f"\ngrowth fitted: time = {cn:.3g} s x cells + {cg:.3g} s x genes x K P; peak = {m0:.2f} GB + {cm:.3g} GB x cells")

        def law(genes: int, size: int, cells: int) -> tuple[float, float]:
            return cn * cells + cg * genes * size, m0 + cm * cells
    print("| genes | guides | cells | K P | measured or extrapolated time | peak memory |")
    print("| --- | --- | --- | --- | --- | --- |")
    for genes, guides, cells in TARGETS:
        size = K * (4 + 2 + 1 + genes * 4 + guides)
        secs, gb = law(genes, size, cells)
        print(f"| {genes:,} | {guides:,} | {cells:,} | {size:,} | {secs / 60:,.0f} min (extrapolated) | {gb:,.1f} GB (extrapolated) |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
