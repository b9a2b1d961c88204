"""Speed, memory and agreement of the Laplace step against a previous version (not a test).

Simulates one experiment (default: the seed's scale, 200,000 cells, 300 genes, 2,000
guides, Kmax 20, with clones), writes it to a temporary folder, and runs the Laplace
step with empirical Bayes (``laplace_fit`` from a zero start: no SVI) on it twice, each
in its own process on the same machine in the same run:

* the code of this checkout;
* the code at ``--baseline`` (a git revision, default ``HEAD``; extracted with ``git
  archive`` into a temporary folder and put first on ``PYTHONPATH``).

It prints each side's time and peak resident memory, the ratio baseline / current, and
how far the two posteriors differ: the largest difference of the mode, and the
relative difference of the gene/day standard errors (median, 99th percentile, largest).

Usage::

    python benchmarks/laplace_speed.py                              # seed scale against HEAD
    python benchmarks/laplace_speed.py --baseline 184f07d --cells 50000
    python benchmarks/laplace_speed.py --algebra blocks --genes 1000 --guides 5000 --cells 50000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, resource, sys, time
import numpy as np
import fatebias_core
print("code:", fatebias_core.__file__, file=sys.stderr)
from fatebias_core.config import make_config
from fatebias_core.data.load import load_experiment
from fatebias_core.model.laplace_fit import laplace_fit
folder, out, algebra = sys.argv[1], sys.argv[2], sys.argv[3]
extra = {} if algebra == "default" else {"laplace_algebra": algebra}
cfg = make_config(adata_path=f"{folder}/adata.h5ad", guide_map_csv=f"{folder}/guide_map.csv", progress=False, **extra)
exp = load_experiment(cfg, verbose=False)
t0 = time.perf_counter()
res = laplace_fit(exp, cfg)
seconds = time.perf_counter() - t0
p = res.posterior.params
L, K, D = p["theta"].shape
se = np.sqrt(np.diagonal(p["block_cov"], axis1=1, axis2=2)[:, : K * D])
np.savez(out, theta=p["theta"], u=p["u"], se=se)
print(json.dumps({"seconds": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "eb_updates": int(p["eb_iterations"]), "newton": int(p["newton_iterations"])}))
"""


def _run(code_dir: Path, folder: Path, out: Path, algebra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_dir))
    # run from the data folder: ``python -c`` puts the working directory first on the path
    proc = subprocess.run([sys.executable, "-c", WORKER, str(folder), str(out), algebra], env=env, cwd=folder, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"the Laplace step failed under {code_dir}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--guides", type=int, default=2000)
    ap.add_argument("--kmax", type=int, default=20)
    ap.add_argument("--baseline", default="HEAD", help="git revision to compare against (default HEAD)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--algebra", default="default", choices=["default", "auto", "dense", "blocks"],
                    help="laplace_algebra on both sides (default: each side's own default)")
    args = ap.parse_args()

    from fatebias_core.config import make_config
    from fatebias_core.data.simulate import simulate

    with tempfile.TemporaryDirectory(prefix="fatebias-laplace-bench-") as tmp:
        tmp = Path(tmp)
        cfg = make_config(sim_n_cells=args.cells, sim_n_genes=args.genes, sim_n_guides=args.guides, sim_kmax=args.kmax,
                          sim_n_ntc_guides=max(args.guides // 40, 1), seed=args.seed, progress=False)
        t0 = time.perf_counter()
        simulate(cfg, tmp / "data")
        print(f"simulated {args.cells} cells, {args.genes} genes, {args.guides} guides in {time.perf_counter() - t0:.0f} s")
        base = tmp / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], capture_output=True, text=True, check=True).stdout.strip()
        old = _run(base, tmp / "data", tmp / "old.npz", args.algebra)
        print(f"baseline {rev}: {old['seconds']:.1f} s, peak {old['peak_gb']:.1f} GB ({old['eb_updates']} EB updates)", flush=True)
        new = _run(ROOT, tmp / "data", tmp / "new.npz", args.algebra)
        print(f"current: {new['seconds']:.1f} s, peak {new['peak_gb']:.1f} GB ({new['eb_updates']} EB updates)", flush=True)
        a, b = np.load(tmp / "old.npz"), np.load(tmp / "new.npz")
        mode = max(float(np.abs(a["theta"] - b["theta"]).max()), float(np.abs(a["u"] - b["u"]).max()))
        rel = np.abs(b["se"] / a["se"] - 1.0).ravel()
    print(f"largest difference of the mode: {mode:.2e}")
    print(f"gene/day SE relative difference: median {np.median(rel):.2e}, 99th percentile {np.quantile(rel, 0.99):.2e}, largest {rel.max():.2e}")
    machine = f"{platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}"
    print("| cells | genes | guides | baseline s | current s | ratio | baseline GB | current GB | machine |")
    print(f"| {args.cells:,} | {args.genes:,} | {args.guides:,} | {old['seconds']:.1f} | {new['seconds']:.1f} | "
          f"{old['seconds'] / new['seconds']:.2f}x | {old['peak_gb']:.1f} | {new['peak_gb']:.1f} | {machine} |")


if __name__ == "__main__":
    main()
