"""How the whole chain grows with the screen and the cells (not a test).

For each screen size, simulates a screen with ``fatebias simulate`` (5 guides per gene,
Kmax 20, the default settings otherwise: the Laplace fit, both mash modes, guide-level
mash, the diagnostics and the report), then runs the chain step by step in a fresh
process with the local engine and prints each step's time, the whole chain's time and
the process's peak resident memory after each step (a high-water mark, so a step's
number is the largest of it and the steps before).

Where a size does not fit this machine, ``benchmarks/laplace_growth.py`` measures the
posterior step alone on fewer cells and states its growth law.

Usage::

    python benchmarks/chain_growth.py                                      # 100, 300, 600 genes at 50k cells
    python benchmarks/chain_growth.py --genes 300 --cells 200000
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

import yaml

WORKER = r"""
import json, resource, sys, time
from fatebias_core.config import load_config
from fatebias_core.pipeline.chain import run_chain
from fatebias_core.pipeline.check import load_experiment_checked
from fatebias_core.pipeline.graph import CHAIN, enabled_steps

def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

cfg = load_config(sys.argv[1])
rows = []
t0 = time.perf_counter()
exp = load_experiment_checked(cfg, verbose=False)
rows.append({"step": "load", "seconds": time.perf_counter() - t0, "peak_gb": peak_gb()})
for step in enabled_steps(cfg, CHAIN):
    t = time.perf_counter()
    run_chain(cfg, until=step, experiment=exp)
    rows.append({"step": step, "seconds": time.perf_counter() - t, "peak_gb": peak_gb()})
K = len(cfg.contrast_fates)
P = exp.cells.n_days + exp.cells.n_reps + 1 + exp.guides.n_genes * exp.cells.n_days + exp.guides.n_guides
print(json.dumps({"cells": exp.n_cells, "genes": exp.guides.n_genes, "guides": exp.guides.n_guides, "KP": K * P,
                  "steps": rows, "seconds": time.perf_counter() - t0}))
"""


def _one(cells: int, genes: int, guides: int, kmax: int, work: Path, active_frac: float | None = None) -> dict:
    folder = work / f"g{genes}_c{cells}"
    settings = {"sim_n_cells": cells, "sim_n_genes": genes, "sim_n_guides": guides, "sim_kmax": kmax,
                "sim_n_ntc_guides": max(guides // 40, 4), "progress": False}
    if active_frac is not None:
        settings["sim_active_frac"] = active_frac
    sim_yaml = work / f"sim_g{genes}_c{cells}.yaml"
    sim_yaml.write_text(yaml.safe_dump(settings))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fatebias_core.cli", "simulate", "--out", str(folder), "--config", str(sim_yaml)], check=True,
                   capture_output=True, text=True)
    simulate_s = time.perf_counter() - t0
    proc = subprocess.run([sys.executable, "-c", WORKER, str(folder / "config.yaml")], capture_output=True, text=True,
                          cwd=folder, check=False)
    if proc.returncode != 0:
        sys.exit(f"failed at {genes} genes, {cells} cells:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["simulate_s"] = simulate_s
    return row


def _cpu() -> str:
    """The processor's model name (Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, nargs="+", default=[100, 300, 600])
    ap.add_argument("--cells", type=int, nargs="+", default=[50_000])
    ap.add_argument("--guides-per-gene", type=int, default=5)
    ap.add_argument("--kmax", type=int, default=20)
    ap.add_argument("--active-frac", type=float, help="fraction of genes with a true effect (0: a null experiment; default: the simulator's)")
    ap.add_argument("--keep", help="run in this folder and keep the runs (default: a temporary folder)")
    ap.add_argument("--json", help="also write the measurements to this JSON file")
    args = ap.parse_args()
    rows = []
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fatebias-chain-growth-") as tmp:
        for cells in args.cells:
            for genes in args.genes:
                row = _one(cells, genes, genes * args.guides_per_gene, args.kmax, Path(args.keep or tmp), args.active_frac)
                rows.append(row)
                steps = ", ".join(f"{s['step']} {s['seconds']:.1f}" for s in row["steps"])
                print(f"{row['cells']:,} cells, {row['genes']:,} genes, {row['guides']:,} guides (K P {row['KP']:,}): "
                      f"chain {row['seconds']:.1f} s, peak {max(s['peak_gb'] for s in row['steps']):.2f} GB  [{steps}]",
                      flush=True)
    print(f"\nmachine: {_cpu()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    names = [s["step"] for s in rows[0]["steps"]]
    print("| genes | guides | cells | K P | " + " | ".join(names) + " | whole chain | peak memory |")
    print("| --- " * (6 + len(names)) + "|")
    for r in rows:
        secs = {s["step"]: s["seconds"] for s in r["steps"]}
        print(f"| {r['genes']:,} | {r['guides']:,} | {r['cells']:,} | {r['KP']:,} | "
              + " | ".join(f"{secs.get(n, float('nan')):.1f} s" for n in names)
              + f" | {r['seconds']:.0f} s | {max(s['peak_gb'] for s in r['steps']):.1f} GB |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
