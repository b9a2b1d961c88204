"""The two mash modes: settings, V fallback, strong-set gating, retry."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import ConfigError, FitError
from fatebias_core.mash import ModeSettings, NativeBackend, inflate_se, mash_table, run_mode


def _table(B: np.ndarray, S: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({"gene": [f"G{i}" for i in range(B.shape[0])]})
    for r in range(B.shape[1]):
        df[f"betahat_d{r}"] = B[:, r]
    for r in range(B.shape[1]):
        df[f"se_d{r}"] = S[:, r]
    return df


@pytest.fixture
def all_strong() -> pd.DataFrame:
    """Every row has |z| > 2 somewhere, even after SE inflation: no null rows for V."""
    rng = np.random.default_rng(8)
    J, R = 60, 3
    S = rng.uniform(0.05, 0.1, (J, R))
    B = rng.normal(0, 0.05, (J, R))
    hit = rng.integers(0, R, J)
    B[np.arange(J), hit] = rng.choice([-1, 1], J) * rng.uniform(0.6, 1.2, J)
    return _table(B, S)


def test_settings_follow_the_configuration() -> None:
    cfg = FatebiasConfig()
    c = ModeSettings.from_config(cfg, "conservative")
    e = ModeSettings.from_config(cfg, "enriched")
    assert (c.prior, c.nullweight, c.usepointmass, c.add_datadriven) == ("nullbiased", 10.0, True, False)
    assert (e.prior, e.nullweight, e.usepointmass, e.add_datadriven) == ("uniform", 3.0, True, True)
    assert (e.se_inflate, e.se_floor, e.npc, e.strong_lfsr, e.min_strong) == (1.2, 0.0, 2, 0.1, 50)
    with pytest.raises(ConfigError, match="conservative, enriched"):
        ModeSettings.from_config(cfg, "plain")
    np.testing.assert_allclose(inflate_se(np.array([0.001, 0.1]), 1.5, 0.02), [0.02, 0.15], rtol=1e-15)


def test_every_row_strong_falls_back_to_identity_V(all_strong, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="fatebias.mash"):
        res = mash_table(all_strong, "conservative", FatebiasConfig())
    assert "not enough null data" in caplog.text
    assert res.fit.V_source.startswith("identity (null-correlation estimate failed)")
    np.testing.assert_array_equal(res.V, np.eye(3))
    assert any("not enough null data" in m for m in res.messages)
    ref = mash_table(all_strong, "conservative", FatebiasConfig(mash_estimate_V=False))
    post = [c for c in res.table.columns if c.startswith(("postmean_", "postsd_", "lfsr_"))]
    np.testing.assert_array_equal(res.table[post].to_numpy(), ref.table[post].to_numpy())
    assert res.fallback is None and "identity" in res.describe()


class _FailingED(NativeBackend):
    """Native backend whose data-driven fit fails, to exercise the retry."""

    calls: list[tuple[bool, bool]]

    def __init__(self) -> None:
        self.calls = []

    def fit(self, data, settings, datadriven):
        self.calls.append((datadriven, data.v_is_identity))
        if datadriven:
            raise FitError("extreme deconvolution: a component covariance became singular")
        return super().fit(data, settings, datadriven)


def test_failed_fit_is_retried_with_identity_V_and_canonical_covariances(caplog) -> None:
    rng = np.random.default_rng(9)
    B = rng.normal(0, 0.2, (80, 3))
    S = np.full((80, 3), 0.1)
    backend = _FailingED()
    settings = ModeSettings.from_config(FatebiasConfig(), "enriched")
    with caplog.at_level(logging.WARNING, logger="fatebias.mash"):
        fit = run_mode(B, S, settings, conditions=("d0", "d1", "d2"), backend=backend)
    assert backend.calls == [(True, False), (False, True)]
    assert fit.fallback is not None and "retried with identity V and canonical covariances" in fit.fallback
    assert "retried with identity V" in caplog.text
    np.testing.assert_array_equal(fit.V, np.eye(3))
    assert not fit.datadriven_used and len(fit.result.covariance_names) == 8


class _NoRetry(NativeBackend):
    """A backend that, like R's, must not be retried with another model."""

    retries_failed_fit = False

    def fit(self, data, settings, datadriven):
        raise FitError("R mashr enriched fit failed: Error in solve.default(V): singular")


def test_a_backend_that_does_not_retry_fails_with_its_message() -> None:
    rng = np.random.default_rng(9)
    B = rng.normal(0, 0.2, (80, 3))
    settings = ModeSettings.from_config(FatebiasConfig(), "enriched")
    with pytest.raises(FitError, match=r"^R mashr enriched fit failed: Error in solve.default\(V\): singular$"):
        run_mode(B, np.full((80, 3), 0.1), settings, backend=_NoRetry())


def _strong_table() -> pd.DataFrame:
    """400 rows x 4 days, 30% of them with random-walk effects: enough strong rows for ED."""
    rng = np.random.default_rng(10)
    J, R = 400, 4
    S = np.full((J, R), 0.1)
    eff = np.zeros((J, R))
    on = rng.random(J) < 0.3
    eff[on] = np.cumsum(rng.normal(0, 0.4, (on.sum(), R)), axis=1)
    return _table(eff + rng.normal(0, 1, (J, R)) * S, S)


def test_unconverged_extreme_deconvolution_is_kept_with_a_warning(caplog) -> None:
    """As mashr keeps what its EM returns: no switch to identity V and canonical covariances."""
    df = _strong_table()
    with caplog.at_level(logging.WARNING, logger="fatebias.mash"):
        res = mash_table(df, "enriched", FatebiasConfig(mash_ed_maxiter=2))
    assert res.fallback is None and res.fit.datadriven_used
    assert res.fit.V_source.startswith("estimated")
    assert "had not converged after 2 iterations" in caplog.text
    assert any("had not converged" in m for m in res.messages)
    full = mash_table(df, "enriched", FatebiasConfig())
    assert not any("had not converged" in m for m in full.messages)


def test_data_driven_covariances_are_gated_by_the_strong_set() -> None:
    df = _strong_table()
    res = mash_table(df, "enriched", FatebiasConfig())
    n_strong = res.fit.result.n_strong
    assert n_strong is not None and n_strong >= 50
    assert res.covariance_names[-3:] == ("ED_PCA_1", "ED_PCA_2", "ED_tPCA")
    assert "3 data-driven" in res.describe()
    gated = mash_table(df, "enriched", FatebiasConfig(mash_min_strong_for_cov=n_strong + 1))
    assert not any(n.startswith("ED_") for n in gated.covariance_names)
    assert any("canonical only" in m for m in gated.messages)
    off = mash_table(df, "enriched", FatebiasConfig(mash_add_datadriven_cov=False))
    assert off.fit.result.n_strong is None and len(off.covariance_names) == 9
