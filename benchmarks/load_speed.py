"""Loading speed: a 1,000,000-cell x 20-guide experiment, in memory and from an .h5ad.

Builds the AnnData directly (a realistic high-MOI guide matrix, CellRank 2 layout),
writes it with its guide map to a temporary folder, and times ``load_experiment`` on
the in-memory object and on the file. The target is under 30 s on 2 cores.

Usage::

    python benchmarks/load_speed.py [--n-cells 1000000] [--n-guides 20] [--repeats 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from fatebias_core.config import make_config
from fatebias_core.data.load import load_experiment

FATES = ["EC", "MES", "NEU"]


def build(n_cells: int, n_guides: int, seed: int = 0) -> tuple[ad.AnnData, pd.DataFrame]:
    """A CellRank-2-layout AnnData with ``n_guides`` guides (two NTCs) and its guide map."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(FATES)), size=n_cells).astype(np.float32)
    detect = rng.random((n_cells, n_guides)) < 0.2  # about 4 guides per cell
    guide_matrix = sp.csr_matrix(detect.astype(np.float32))
    names = [f"G{j // 2:03d}_sg{j % 2 + 1}" for j in range(n_guides - 2)] + ["NTC_1", "NTC_2"]
    index = pd.Index([f"cell{i:07d}" for i in range(n_cells)])
    obs = pd.DataFrame(
        {
            "day": pd.Categorical.from_codes(
                rng.integers(0, 4, n_cells), categories=["d0", "d1", "d2", "d3"]
            ),
            "term_states_fwd": pd.Categorical.from_codes(
                np.where(probs.max(axis=1) > 0.9, probs.argmax(axis=1), -1), categories=FATES
            ),
        },
        index=index,
    )
    covariates = pd.DataFrame(
        {
            "replicate": pd.Categorical.from_codes(
                rng.integers(0, 2, n_cells), categories=["rep1", "rep2"]
            )
        },
        index=index,
    )
    adata = ad.AnnData(
        obs=obs,
        obsm={"lineages_fwd": probs, "guide_assignment": guide_matrix, "covariates": covariates},
        uns={"guide_assignment_names": np.asarray(names, dtype=object)},
    )
    gmap = pd.DataFrame(
        {
            "guide_name": names,
            "gene_name": [n.split("_")[0] for n in names[:-2]] + ["non-targeting"] * 2,
            "is_ntc": [0] * (n_guides - 2) + [1, 1],
        }
    )
    return adata, gmap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=1_000_000)
    parser.add_argument("--n-guides", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    t0 = time.perf_counter()
    adata, gmap = build(args.n_cells, args.n_guides)
    print(
        f"built {args.n_cells} cells x {args.n_guides} guides in {time.perf_counter() - t0:.1f} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        adata.write_h5ad(folder / "adata.h5ad")
        gmap.to_csv(folder / "guide_map.csv", index=False)
        size = (folder / "adata.h5ad").stat().st_size / 2**20
        cfg = make_config(
            adata_path=str(folder / "adata.h5ad"), guide_map_csv=str(folder / "guide_map.csv")
        )
        for label, kwargs in (
            ("in memory", {"adata": adata, "guide_map": gmap}),
            (f"from disk ({size:.0f} MiB)", {}),
        ):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                exp = load_experiment(cfg, verbose=False, **kwargs)
                times.append(time.perf_counter() - t0)
            verdict = "ok" if min(times) < 30 else "SLOW (target < 30 s)"
            print(
                f"load_experiment {label}: {min(times):.2f} s "
                f"({exp.n_cells} cells, width {exp.guides.kmax}, {exp.guides.n_guides} guides) {verdict}"
            )


if __name__ == "__main__":
    main()
