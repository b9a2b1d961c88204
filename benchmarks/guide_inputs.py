"""Guide inputs (issue 25): one simulated experiment in three forms, checked, assigned and (optionally) run.

Takes a folder written by ``fatebias simulate`` and writes beside it

* (a) ``adata.h5ad``: the simulation, its cells renamed like two concatenated 10x runs
  (``<barcode>-1-<k>``), the guide matrix in obsm (the default ``guide_source: obsm``);
* (b) the same ``adata.h5ad`` and Cell Ranger's ``protospacer_calls_per_cell.csv``, one per
  replicate, with the plain ``<barcode>-1`` names (``guide_source: cellranger_calls``);
* (c) ``experiment.h5mu``: ``rna`` (the AnnData without its guide matrix) and ``gdo`` (the
  guide UMI counts), assigned by crispat (``guide_source: mudata``, ``assign_method``).

Then it times ``fatebias check`` on each form (wall time of the command, and the time the
check reports for itself), ``fatebias assign`` on (c) (crispat's run, cached in the run
folder) and ``fatebias check`` on (c) again (reading the cached assignment), and reports the
assignment's agreement with the simulated truth. With ``--run`` it runs ``fatebias run`` on
each form and compares the hits.

Usage::

    fatebias simulate --out sim --n-cells 200000 --n-genes 300 --n-guides 2000 --kmax 20 --clone-size-mean 10
    python benchmarks/guide_inputs.py --sim sim --out forms [--method gauss] [--run]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import guide_forms as gf  # noqa: E402


def write_forms(sim: Path, out: Path, method: str, params: dict, extra: dict) -> dict[str, Path]:
    """The three forms and a configuration for each; returns the configurations by form."""
    out.mkdir(parents=True, exist_ok=True)
    adata = ad.read_h5ad(sim / "adata.h5ad")
    plain, rep = gf.name_cells(adata)
    counts, guides = gf.counts_of(adata)
    adata.write_h5ad(out / "adata.h5ad")
    csvs = []
    for r in np.unique(rep):
        rows = np.flatnonzero(rep == r)
        csvs.append(gf.write_calls_csv(out / f"protospacer_calls_per_cell_{r}.csv", counts[rows], guides, plain[rows]).name)
    gf.write_h5mu(out / "experiment.h5mu", adata)
    base = yaml.safe_load((sim / "config.yaml").read_text())
    base["guide_map_csv"] = str((sim / base["guide_map_csv"]).resolve())
    forms = {
        "a": {"adata_path": "adata.h5ad"},
        "b": {"adata_path": "adata.h5ad", "guide_source": "cellranger_calls", "guide_files": csvs},
        "c": {"adata_path": "experiment.h5mu", "guide_source": "mudata", "assign_method": method, "assign_params": params},
    }
    configs = {}
    for name, settings in forms.items():
        path = out / f"config_{name}.yaml"
        path.write_text(yaml.safe_dump({**base, **settings, **extra, "out_dir": f"results_{name}"}, sort_keys=False))
        configs[name] = path
    return configs


def timed(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(["fatebias", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"fatebias {' '.join(args)} failed: {done.stderr.strip()}")
    return wall, done.stdout


def reported(text: str) -> float | None:
    m = re.search(r"checked in ([\d.]+) s", text)
    return float(m.group(1)) if m else None


def agreement(sim: Path, out: Path) -> dict:
    """The assignment of (c) against the simulated truth (the detected guides of the simulation)."""
    truth = ad.read_h5ad(sim / "adata.h5ad").obsm["guide_assignment"].tocsr()
    truth.data[:] = 1
    got = ad.read_h5ad(out / "results_c" / "guide_assignment.h5ad")
    names_t = [str(g) for g in ad.read_h5ad(sim / "adata.h5ad", backed="r").uns["guide_assignment_names"]]
    cols = pd.Index(list(got.var_names)).get_indexer(names_t)
    assigned = got.X.tocsr()[:, cols].astype(bool)
    truth = truth.astype(bool)
    both = int(assigned.multiply(truth).sum())
    return {
        "true_guide_cells": int(truth.sum()),
        "assigned": int(assigned.sum()),
        "recall": round(both / max(int(truth.sum()), 1), 4),
        "precision": round(both / max(int(assigned.sum()), 1), 4),
        "cells_identical": int((np.asarray((assigned != truth).sum(axis=1)).ravel() == 0).sum()),
        "n_cells": int(truth.shape[0]),
    }


def hits(out: Path, form: str) -> pd.DataFrame:
    table = pd.read_csv(out / f"results_{form}" / "hits_ranked.csv", dtype={"gene": str})
    return table.loc[table["hit_anyday"].astype(bool), ["gene", "active_days"]].sort_values("gene").reset_index(drop=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sim", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--method", default="gauss")
    p.add_argument("--params", default="{}", help="assign_params as JSON")
    p.add_argument("--run", action="store_true", help="run the chain on every form and compare the hits")
    p.add_argument("--no-diagnostics", action="store_true", help="run_diagnostics: false in every configuration")
    args = p.parse_args()
    extra = {"run_diagnostics": False} if args.no_diagnostics else {}
    configs = write_forms(args.sim, args.out, args.method, json.loads(args.params), extra)
    result: dict = {}
    for form in ("a", "b"):
        wall, text = timed(["check", "--config", str(configs[form])])
        result[f"check_{form}"] = {"wall_s": round(wall, 2), "reported_s": reported(text)}
    wall, _ = timed(["assign", "--config", str(configs["c"])])
    result["assign_c"] = {"wall_s": round(wall, 2)}
    wall, text = timed(["check", "--config", str(configs["c"])])
    result["check_c_cached"] = {"wall_s": round(wall, 2), "reported_s": reported(text)}
    result["qc_c"] = [ln for ln in text.splitlines() if ln.startswith("  ") and ("assignment" in ln or "guides per cell (MOI)" in ln or "thresholds" in ln or "detection" in ln)]
    result["agreement_c"] = agreement(args.sim, args.out)
    if args.run:
        for form in ("a", "b", "c"):
            wall, _ = timed(["run", "--config", str(configs[form]), "--engine", "local"])
            result[f"run_{form}_s"] = round(wall, 1)
        ha, hb, hc = (hits(args.out, f) for f in ("a", "b", "c"))
        result["hits"] = {"a": ha.to_dict("records"), "a_equals_b": ha.equals(hb), "a_equals_c": ha.equals(hc),
                          "c": hc.to_dict("records")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
