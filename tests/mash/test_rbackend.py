"""The optional ``r`` backend (rpy2 + R mashr), checked against R mashr run by Rscript.

Where rpy2 or R's mashr is missing these tests skip with the reason (``.ci/run``
installs R, mashr and rpy2 when the shared R package sources are present).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import FatebiasError
from fatebias_core.mash import ModeSettings, mash_table, regularize_null_correlation, run_mode
from fatebias_core.mash.rbackend import RBackend, RBackendError, r_backend_available

DATA = Path(__file__).resolve().parents[1] / "data" / "mash"
R_OK, R_WHY = r_backend_available()
needs_r = pytest.mark.skipif(not R_OK, reason=f"R mashr backend unavailable: {R_WHY}")
needs_rscript = pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript is not on PATH")

# What a user would write in R for one mode, given the inflated SEs and the V used.
RSCRIPT = r"""
suppressPackageStartupMessages(library(mashr))
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; mode <- args[2]
B <- as.matrix(read.csv(file.path(dir, "B.csv")))
S <- as.matrix(read.csv(file.path(dir, "S.csv")))
V <- as.matrix(read.csv(file.path(dir, "V.csv")))
Vraw <- estimate_null_correlation_simple(mash_set_data(B, S))
write.csv(Vraw, file.path(dir, "Vraw.csv"), row.names = FALSE)
data <- mash_set_data(B, S, V = V)
U <- cov_canonical(data)
if (mode == "enriched") {
  strong <- get_significant_results(mash_1by1(data), 0.1)
  if (length(strong) >= 50) {
    U.pca <- cov_pca(data, 2, subset = strong)
    U <- c(U, cov_ed(data, U.pca, subset = strong))
  }
  m <- mash(data, U, prior = "uniform", nullweight = 3, usepointmass = TRUE, verbose = FALSE)
} else {
  m <- mash(data, U, prior = "nullbiased", nullweight = 10, usepointmass = TRUE, verbose = FALSE)
}
out <- cbind(get_pm(m), get_psd(m), get_lfsr(m))
write.csv(out, file.path(dir, "out.csv"), row.names = FALSE)
"""


def test_missing_rpy2_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without rpy2 (hidden here, so this runs with or without R) the backend says what is missing."""
    monkeypatch.setitem(sys.modules, "rpy2", None)
    monkeypatch.setitem(sys.modules, "rpy2.robjects", None)
    df = pd.read_csv(DATA / "gene_40x4_small" / "input.csv")
    with pytest.raises(FatebiasError, match=r"^mash_backend 'r' needs rpy2 and R \(pip install 'fatebias\[r\]'\)"):
        mash_table(df, "conservative", FatebiasConfig(mash_backend="r"))


@needs_r
@needs_rscript
@pytest.mark.parametrize("mode", ["conservative", "enriched"])
def test_r_backend_gives_what_rscript_gives(mode: str, tmp_path: Path) -> None:
    """The rpy2 backend's table equals R mashr run directly by Rscript, to 1e-8."""
    df = pd.read_csv(DATA / "gene_300x4" / "input.csv")
    res = mash_table(df, mode, FatebiasConfig(mash_backend="r"))
    assert res.fit.backend == "r" and res.fallback is None
    if mode == "enriched":
        assert res.covariance_names[-3:] == ("ED_PCA_1", "ED_PCA_2", "ED_tPCA")
    days = list(res.fit.conditions)
    B = df[[f"betahat_{d}" for d in days]].to_numpy()
    pd.DataFrame(B, columns=days).to_csv(tmp_path / "B.csv", index=False)
    pd.DataFrame(res.fit.Shat, columns=days).to_csv(tmp_path / "S.csv", index=False)
    pd.DataFrame(res.V, columns=days).to_csv(tmp_path / "V.csv", index=False)
    (tmp_path / "run.R").write_text(RSCRIPT)
    proc = subprocess.run(
        ["Rscript", str(tmp_path / "run.R"), str(tmp_path), mode], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    out = pd.read_csv(tmp_path / "out.csv").to_numpy()
    R = len(days)
    for k, name in enumerate(("postmean", "postsd", "lfsr")):
        mine = res.table[[f"{name}_{d}" for d in days]].to_numpy()
        np.testing.assert_allclose(mine, out[:, k * R : (k + 1) * R], rtol=0, atol=1e-8, err_msg=name)
    # V: R's estimate, regularised as both backends do
    Vraw = pd.read_csv(tmp_path / "Vraw.csv").to_numpy()
    np.testing.assert_allclose(res.V, regularize_null_correlation(Vraw, 1e-6, 0.05), atol=1e-12)


@needs_r
@pytest.mark.parametrize("mode", ["conservative", "enriched"])
def test_r_backend_agrees_with_native(mode: str) -> None:
    df = pd.read_csv(DATA / "gene_300x4" / "input.csv")
    native = mash_table(df, mode, FatebiasConfig())
    r = mash_table(df, mode, FatebiasConfig(mash_backend="r"))
    assert len(r.covariance_names) == len(native.covariance_names)
    assert r.covariance_names[-3:] == native.covariance_names[-3:]
    for name, tol in (("postmean_", 1e-4), ("postsd_", 1e-4), ("lfsr_", 1e-3), ("plarge_", 1e-4)):
        cols = [c for c in native.table.columns if c.startswith(name)]
        np.testing.assert_allclose(r.table[cols].to_numpy(), native.table[cols].to_numpy(), atol=tol)
    assert r.table.columns.tolist() == native.table.columns.tolist()
    np.testing.assert_allclose(r.V, native.V, atol=1e-12)


@needs_r
@pytest.mark.parametrize("mode", ["conservative", "enriched"])
def test_r_backend_plarge_comes_from_rs_fitted_mixture(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native posterior under R's fitted_g reproduces R's own posterior summaries.

    So the mixture that gives plarge_<day> is R's fit, read correctly (component order,
    normalised covariances, grid, point mass).
    """
    from fatebias_core.mash import rbackend

    seen = {}
    original = rbackend.fitted_g_posterior

    def spy(res, data, settings):
        post = original(res, data, settings)
        J, R = data.Bhat.shape
        for name in ("mean", "sd", "lfsr"):
            seen[name] = (getattr(post, name), rbackend._r_numeric(res.rx2(name)).reshape((J, R), order="F"))
        return post

    monkeypatch.setattr(rbackend, "fitted_g_posterior", spy)
    df = pd.read_csv(DATA / "gene_300x4" / "input.csv")
    r = mash_table(df, mode, FatebiasConfig(mash_backend="r", effect_size_eps=0.3))
    for name, (native_under_r, from_r) in seen.items():
        np.testing.assert_allclose(native_under_r, from_r, rtol=0, atol=1e-10, err_msg=name)
    assert (r.table["plarge_eps"] == 0.3).all()


@needs_r
def test_r_failure_is_one_line_with_rs_message_and_no_retry() -> None:
    rng = np.random.default_rng(9)
    settings = dataclasses.replace(ModeSettings.from_config(FatebiasConfig(), "conservative"), prior="bogus")
    with pytest.raises(RBackendError) as err:
        run_mode(rng.normal(0, 0.2, (80, 3)), np.full((80, 3), 0.1), settings, backend=RBackend())
    msg = str(err.value)
    assert msg.startswith("R mashr conservative fit failed: ") and "\n" not in msg
    assert "should be one of" in msg  # R's match.arg message


@needs_r
def test_r_backend_uses_identity_v_without_null_rows() -> None:
    df = pd.read_csv(DATA / "gene_40x4_small" / "input.csv")
    strong = df.copy()
    strong[[c for c in df.columns if c.startswith("betahat_")]] = 5.0  # no null rows
    r_strong = mash_table(strong, "conservative", FatebiasConfig(mash_backend="r"))
    assert r_strong.fit.V_source.startswith("identity (null-correlation estimate failed)")


@needs_r
def test_starting_r_leaves_child_processes_their_environment() -> None:
    """rpy2 prepends R's library folders to LD_LIBRARY_PATH; the backend puts it back.

    Otherwise a Python started from this process (e.g. a Dagster run) could load the
    system's libpython instead of its own and fail to import ssl.
    """
    RBackend()
    assert "/lib/R/lib" not in os.environ.get("LD_LIBRARY_PATH", "")
    subprocess.run([sys.executable, "-c", "import ssl"], check=True, timeout=60)
