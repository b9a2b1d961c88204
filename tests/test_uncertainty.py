"""Honest uncertainty when cells are not independent: clones, the clone effect, the robust posterior, the NTC check."""

from __future__ import annotations

import numpy as np
import pytest

from fatebias_core.checks.ntc import ntc_calibration, pseudo_gene_experiment
from fatebias_core.config import make_config
from fatebias_core.data.load import load_experiment
from fatebias_core.data.simulate import simulate_experiment
from fatebias_core.model.inference import fit
from fatebias_core.model.posterior import summarise_posterior

SMALL = dict(
    sim_n_cells=4000,
    sim_n_genes=16,
    sim_n_guides=96,
    sim_n_ntc_guides=24,
    sim_ntc_fraction=0.25,
    sim_kmax=7,
    progress=False,
    device="cpu",
    run_diagnostics=False,
    num_posterior_draws=300,
)


def _load(**settings):
    cfg = make_config({**SMALL, **settings})
    sim = simulate_experiment(cfg)
    return cfg, sim, load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)


def _null_z(result, cfg) -> np.ndarray:
    table = summarise_posterior(result, cfg).gene_daywise()
    est = table[[c for c in table.columns if c.startswith("betahat_")]].to_numpy()
    se = table[[c for c in table.columns if c.startswith("se_")]].to_numpy()
    return (est / se).ravel()


@pytest.fixture(scope="module")
def clone_null():
    """A null experiment with strong clones whose cells missed a quarter of their guides (no labels)."""
    return _load(sim_active_frac=0.0, sim_clone_size_mean=10.0, sim_clone_bias_sd=1.0, sim_write_clone_labels=False,
                 sim_guide_detection=0.75, sim_seed=7)


def test_the_default_covers_where_cells_without_their_clone_do_not(clone_null) -> None:
    cfg, _, exp = clone_null
    naive_cfg = cfg.model_copy(update={"clone_effects": False, "uncertainty": "model"})
    z_naive = _null_z(fit(exp, naive_cfg), naive_cfg)
    robust = fit(exp, cfg)
    z = _null_z(robust, cfg)
    # Cells of a clone counted as independent: far too narrow.
    assert np.sqrt(np.mean(z_naive**2)) > 1.5
    # The clone effect with the cluster-robust covariance covers zero at about the nominal rate.
    assert np.sqrt(np.mean(z**2)) < 1.2
    assert 0.8 <= np.mean(np.abs(z) < 1.645) <= 0.98
    assert robust.info["clone_effects"] and robust.info["n_clusters"] < exp.n_cells / 3


def test_ntc_check_fires_for_the_naive_fit_and_not_for_the_default(clone_null) -> None:
    cfg, _, exp = clone_null
    naive_cfg = cfg.model_copy(update={"clone_effects": False, "uncertainty": "model"})
    naive = ntc_calibration(exp, fit(exp, naive_cfg), naive_cfg)
    default = ntc_calibration(exp, fit(exp, cfg), cfg)
    assert not naive.calibrated and naive.z_sd > 1.4
    assert default.calibrated and default.coverage_90 > naive.coverage_90 and default.z_sd < naive.z_sd
    stats = default.to_dict()
    assert stats["n_pseudo_genes"] >= 6 and stats["n"] == stats["n_pseudo_genes"] * 2 * exp.cells.n_days
    q, z = default.qq()
    assert q.size == z.size == stats["n"] and np.all(np.diff(z) >= 0)


def test_pseudo_genes_take_their_ntc_guides_slots() -> None:
    cfg, _, exp = _load(sim_n_cells=600)
    chosen = np.arange(0, 24, 2)  # every other NTC guide
    out, names = pseudo_gene_experiment(exp, chosen, size=4)
    g0, g1 = exp.guides, out.guides
    assert len(names) == 3 and all(len(n) == 4 for n in names)
    assert g1.n_guides == g0.n_guides + 12 and g1.n_genes == g0.n_genes + 3
    # Every chosen NTC a cell carried is now a targeting guide in one of its NTC slots.
    carried = np.isin(g0.ntc_ids - 1, chosen) & (g0.ntc_ids > 0)
    new = g1.guide_ids > g0.n_guides
    np.testing.assert_array_equal(new.sum(axis=1), carried.sum(axis=1))
    np.testing.assert_array_equal(g1.mask, g0.mask)  # the burden is unchanged
    assert ((g1.ntc_ids > 0).sum(axis=1) == (g0.ntc_ids > 0).sum(axis=1) - carried.sum(axis=1)).all()
    assert (g1.gene_of_guide[g0.n_guides + 1 :] > g0.n_genes).all()
