"""Benchmark: SVI speed and time to a converged fit at the seed pipeline's full scale.

Simulates 200,000 cells, 2,000 guides over 300 genes, Kmax 20 (the seed's full scale),
fits it with batch size 8,192 and reports:

* ms per SVI step (after warm-up), against the seed's SVI timed in the same run on the
  same tensors (``benchmarks/seed_reference.py``, a reconstruction of the seed's
  plain-Pyro fit; ``--no-seed`` skips it);
* steps to convergence (windowed relative ELBO change below ``convergence_tol``) and
  the wall time to reach it;
* the time of the default Laplace refinement and of the whole default fit.

Not a test: run by hand, e.g. ``python benchmarks/fit_speed.py`` (add ``--cells
1000000 --device cuda`` on a GPU machine, ``--quick`` for a short smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from fatebias_core.config import make_config
from fatebias_core.data.load import load_experiment
from fatebias_core.data.simulate import simulate_experiment
from fatebias_core.model.inference import fit

sys.path.insert(0, str(Path(__file__).parent))



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--guides", type=int, default=2000)
    ap.add_argument("--kmax", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=None, help="SVI steps (default: the configured num_steps)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--quick", action="store_true", help="300 steps only (speed, not convergence)")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    ap.add_argument("--no-seed", action="store_true", help="do not time the seed reconstruction")
    args = ap.parse_args()

    cfg = make_config(
        sim_n_cells=args.cells, sim_n_genes=args.genes, sim_n_guides=args.guides, sim_kmax=args.kmax,
        sim_n_ntc_guides=max(args.guides // 40, 1), batch_size=args.batch_size, device=args.device, progress=True,
    )
    if args.quick:
        cfg = cfg.model_copy(update={"num_steps": 300})
    elif args.steps:
        cfg = cfg.model_copy(update={"num_steps": args.steps})
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, device {args.device}")
    t0 = time.perf_counter()
    sim = simulate_experiment(cfg)
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    print(f"simulated and loaded {exp.n_cells} cells in {time.perf_counter() - t0:.1f} s "
          f"(mean guides/cell {exp.cells.burden.mean():.1f})")

    seed_ms = None
    if not args.no_seed:
        from seed_reference import time_seed_steps

        seed_ms = time_seed_steps(exp, cfg.contrast_fates, cfg.ref_fate, args.batch_size, steps=(5, 20))["ms_per_step"]
        print(f"seed reconstruction: {seed_ms:.1f} ms/step on the same tensors")
    t0 = time.perf_counter()
    res = fit(exp, cfg)
    total = time.perf_counter() - t0
    info = res.info
    ms = info["ms_per_step"]
    conv = info["steps_to_convergence"]
    svi_s = info["runtime_s"]
    out = {
        "cells": exp.n_cells,
        "guides": exp.guides.n_guides,
        "genes": exp.guides.n_genes,
        "kmax": args.kmax,
        "batch_size": args.batch_size,
        "device": info["device"],
        "ms_per_step": ms,
        "seed_ms_per_step": None if seed_ms is None else round(seed_ms, 1),
        "speedup_vs_seed": None if seed_ms is None else round(seed_ms / ms, 1),
        "num_steps": info["steps"],
        "steps_to_convergence": conv,
        "seconds_to_convergence": None if conv is None else round(conv * ms / 1e3, 1),
        "svi_seconds": svi_s,
        "laplace_seconds": info.get("laplace_runtime_s"),
        "total_fit_seconds": round(total, 1),
        "likelihood_weight": round(info["likelihood_weight"], 2),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
