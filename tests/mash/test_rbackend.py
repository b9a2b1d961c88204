"""The optional ``r`` backend (rpy2 + R mashr)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import FatebiasError
from fatebias_core.mash import mash_table
from fatebias_core.mash.rbackend import r_backend_available

DATA = Path(__file__).resolve().parents[1] / "data" / "mash"
R_OK, R_WHY = r_backend_available()
needs_r = pytest.mark.skipif(not R_OK, reason=f"R mashr backend unavailable: {R_WHY}")


@pytest.mark.skipif(R_OK, reason="R mashr is installed here")
def test_missing_r_is_one_clear_error() -> None:
    df = pd.read_csv(DATA / "gene_40x4_small" / "input.csv")
    with pytest.raises(FatebiasError, match="mash_backend 'r'"):
        mash_table(df, "conservative", FatebiasConfig(mash_backend="r"))


@needs_r
@pytest.mark.parametrize("which", ["conservative", "enriched"])
def test_r_backend_reproduces_the_reference(which: str) -> None:
    df = pd.read_csv(DATA / "gene_200x3" / "input.csv")
    res = mash_table(df, which, FatebiasConfig(mash_backend="r"))
    ref = pd.read_csv(DATA / "gene_200x3" / f"r_{which}.csv")
    cols = [c for c in ref.columns if c.startswith(("postmean_", "postsd_", "lfsr_"))]
    np.testing.assert_allclose(res.table[cols].to_numpy(), ref[cols].to_numpy(), atol=1e-6)
    assert res.fit.backend == "r" and "(r)" in res.describe()


@needs_r
def test_r_backend_agrees_with_native_and_falls_back_like_it() -> None:
    df = pd.read_csv(DATA / "gene_40x4_small" / "input.csv")
    native = mash_table(df, "conservative", FatebiasConfig())
    r = mash_table(df, "conservative", FatebiasConfig(mash_backend="r"))
    cols = [c for c in native.table.columns if c.startswith(("postmean_", "postsd_"))]
    np.testing.assert_allclose(r.table[cols].to_numpy(), native.table[cols].to_numpy(), atol=1e-4)
    np.testing.assert_allclose(r.V, native.V, atol=1e-12)
    strong = df.copy()
    strong[[c for c in df.columns if c.startswith("betahat_")]] = 5.0  # no null rows
    r_strong = mash_table(strong, "conservative", FatebiasConfig(mash_backend="r"))
    assert r_strong.fit.V_source.startswith("identity (null-correlation estimate failed)")
