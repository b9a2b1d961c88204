"""Agreement with R mashr 0.2.81 / ashr 2.2-65 on the shared reference cases.

Each folder under tests/data/mash holds an input table and what R returned for it in
three settings: ``plain`` (mashr defaults: no SE inflation, identity V, nullbiased
prior), ``conservative`` and ``enriched`` (MODEL.md section 7).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fatebias_core.config import FatebiasConfig
from fatebias_core.mash import mash_table

DATA = Path(__file__).resolve().parents[1] / "data" / "mash"
CASES = ("gene_300x4", "guide_1800x4", "gene_200x3", "gene_40x4_small")
# strong rows (mash_1by1 lfsr < 0.1) stated by the fixtures' README
STRONG = {"gene_300x4": 57, "guide_1800x4": 282, "gene_200x3": 24, "gene_40x4_small": 3}
SETTINGS = {
    "plain": ("conservative", {"mash_se_inflate": 1.0, "mash_se_floor": 0.0, "mash_estimate_V": False}),
    "conservative": ("conservative", {}),
    "enriched": ("enriched", {}),
}


def _compare(case: str, which: str) -> tuple[pd.DataFrame, dict[str, float]]:
    mode, overrides = SETTINGS[which]
    res = mash_table(pd.read_csv(DATA / case / "input.csv"), mode, FatebiasConfig(**overrides))
    ref = pd.read_csv(DATA / case / f"r_{which}.csv")
    diff = {}
    for k in ("postmean", "postsd", "lfsr"):
        cols = [c for c in ref.columns if c.startswith(k + "_")]
        diff[k] = float(np.abs(res.table[cols].to_numpy() - ref[cols].to_numpy()).max())
    return res, diff


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("which", ["plain", "conservative"])
def test_canonical_modes_match_r(case: str, which: str) -> None:
    _, diff = _compare(case, which)
    assert diff["postmean"] < 1e-4 and diff["postsd"] < 1e-4, diff
    assert diff["lfsr"] < 1e-3, diff


@pytest.mark.parametrize("case", ["gene_200x3", "gene_40x4_small"])
def test_enriched_with_canonical_covariances_matches_r(case: str) -> None:
    """Fewer than 50 strong rows: enriched is canonical covariances with a uniform prior."""
    res, diff = _compare(case, "enriched")
    assert res.fit.result.n_strong == STRONG[case]
    assert not res.fit.datadriven_used
    assert diff["postmean"] < 1e-4 and diff["postsd"] < 1e-4, diff
    assert diff["lfsr"] < 1e-3, diff


@pytest.mark.parametrize("case", ["gene_300x4", "guide_1800x4"])
def test_enriched_with_data_driven_covariances_against_r(case: str) -> None:
    """Data-driven covariances engage on the same strong rows as in R.

    The posteriors are not within the 1e-2 lfsr target on these two cases (see the
    module docs of fatebias_core.mash.covariances and the report): what is asserted
    here is the agreement reached, so that a regression shows.
    """
    res, diff = _compare(case, "enriched")
    assert res.fit.result.n_strong == STRONG[case]
    assert res.covariance_names[-3:] == ("ED_PCA_1", "ED_PCA_2", "ED_tPCA")
    ref = pd.read_csv(DATA / case / "r_enriched.csv")
    cols = [c for c in ref.columns if c.startswith("lfsr_")]
    mine, theirs = res.table[cols].to_numpy(), ref[cols].to_numpy()
    assert ((mine < 0.05) == (theirs < 0.05)).mean() > 0.995
    assert (np.abs(mine - theirs) < 1e-2).mean() > 0.93
    assert diff["postmean"] < 0.2 and diff["lfsr"] < 0.3, diff
