"""Faster diagnostics, same verdicts: held-out refits at the mode (or warm-started SVI fits
that stop at convergence), a permutation control without guide-level mash, on a signal and a
null experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fatebias_core.checks.heldout import heldout_comparison
from fatebias_core.checks.permutation import permutation_control
from fatebias_core.config import load_config, make_config
from fatebias_core.data.load import load_experiment
from fatebias_core.data.simulate import simulate
from fatebias_core.model.inference import fit, load_fit
from fatebias_core.pipeline.chain import run_chain

from .conftest import TINY_CHAIN


def _run(tmp_path: Path, **settings):
    """Simulate, run the chain without diagnostics; return the config, the experiment and the fit."""
    sim = simulate(make_config({**TINY_CHAIN, "run_diagnostics": False, **settings}), tmp_path / "sim")
    cfg = load_config(sim.paths["config"], out_dir=str(tmp_path / "run"))
    exp = load_experiment(cfg, verbose=False)
    run_chain(cfg, experiment=exp)
    return cfg, exp, load_fit(Path(cfg.out_dir) / "fit")


@pytest.fixture(scope="module")
def signal(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("signal"))


@pytest.fixture(scope="module")
def null(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("null"), sim_active_frac=0.0, sim_seed=5)


def _heldout_pair(cfg, exp, fit):
    svi = cfg.model_copy(update={"heldout_fit": "svi"})
    return heldout_comparison(exp, svi, fit), heldout_comparison(exp, svi, None)


@pytest.mark.slow
def test_heldout_refits_keep_the_verdict(signal) -> None:
    """At the mode (the default), by warm-started SVI and by SVI from scratch: the same verdict on a signal."""
    cfg, exp, fit = signal
    assert cfg.heldout_fit == "mode" and fit.posterior.family == "laplace"
    warm, cold = _heldout_pair(cfg, exp, fit)
    for res in (warm, cold):
        assert res.method == "svi" and res.scores.full_better and res.scores.z > 2
    assert abs(warm.scores.ce_full - cold.scores.ce_full) < 0.02 * cold.scores.ce_full  # 150 SVI steps: the warm fit is a little further
    mode = heldout_comparison(exp, cfg, fit)
    assert mode.method == "mode"
    assert all(mode.fit_info[m]["converged"] and mode.fit_info[m]["newton_iterations"] <= 10 for m in ("full", "nuisance"))
    assert mode.scores.full_better and mode.scores.z > 2
    # The mode is the fit SVI approaches: as good as the warm-started SVI fit, at least as good as the cold one.
    assert abs(mode.scores.ce_full - warm.scores.ce_full) < 0.005 * warm.scores.ce_full
    assert mode.scores.ce_full <= cold.scores.ce_full * 1.001
    assert abs(mode.scores.ce_nuisance - cold.scores.ce_nuisance) < 0.002 * cold.scores.ce_nuisance
    # Without a Laplace run fit there is no mode to refit from: SVI it is.
    assert heldout_comparison(exp, cfg, None).method == "svi"


@pytest.mark.slow
@pytest.mark.parametrize("which", ["signal", "null"])
def test_permutation_control_without_guide_mash(which: str, request) -> None:
    cfg, exp, _ = request.getfixturevalue(which)
    res = permutation_control(exp, cfg, cfg.out_dir, run_chain)
    assert res.passed and res.n_hits <= 1
    folder = Path(cfg.out_dir) / "permutation"
    assert (folder / "mash_gene_conservative.csv").exists() and (folder / "hits_ranked.csv").exists()
    assert not list(folder.glob("mash_guide_*.csv")) and not list(folder.glob("gene_from_guide_*.csv"))
    assert set(res.hits_by_mode) == {"conservative", "enriched"}
    real = load_fit(Path(cfg.out_dir) / "fit")
    perm_fit = load_fit(folder / "fit")  # one Newton solve at the real run's hyperparameters
    assert perm_fit.info["likelihood_weight"] == pytest.approx(real.info["likelihood_weight"])
    assert perm_fit.info["estimated"] == [] and perm_fit.info["laplace_converged"]
    np.testing.assert_allclose(perm_fit.posterior.params["sigma_guide"], real.posterior.params["sigma_guide"], rtol=1e-12)
    assert res.fixed["fixed_sigma_guide"] == pytest.approx(real.posterior.params["sigma_guide"].tolist(), rel=1e-12)


@pytest.mark.slow
def test_a_fit_at_its_own_hyperparameters_is_the_same_fit(signal) -> None:
    """Fixing every hyperparameter at the fitted values gives back the same mode and intervals in one Newton solve."""
    cfg, exp, real = signal
    params = real.posterior.params
    fixed = fit(exp, cfg.model_copy(update={
        "fixed_sigma_guide": params["sigma_guide"].tolist(), "likelihood_weight": float(params["weight"]),
        "fixed_clone_cov": None if real.posterior.clone_cov is None else real.posterior.clone_cov.tolist(),
        "clone_effects": real.posterior.clone_cov is not None,
    }))
    assert fixed.info["estimated"] == [] and fixed.info["laplace_converged"]
    got = fixed.posterior.params
    for key in ("theta", "u", "a", "b", "c"):
        np.testing.assert_allclose(got[key], params[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["block_cov"], params["block_cov"], rtol=1e-4, atol=1e-9)


@pytest.mark.slow
def test_heldout_with_strong_clones_and_no_effects_is_not_fooled(tmp_path: Path) -> None:
    """Cells of one clone share its fate bias; holding out cells, the full model "predicts" a
    held-out cell's clone bias through the guides of its clone-mates, and beats the
    nuisance-only model on a screen with no guide effects at all. Whole held-out clones
    are new to both models."""
    from fatebias_core.checks import heldout

    cfg, exp, fit = _run(
        tmp_path, sim_n_cells=3000, sim_n_genes=20, sim_n_guides=120, sim_active_frac=0.0, sim_s_guide=0.0, sim_clone_size_mean=10,
        sim_clone_bias_sd=1.0, sim_seed=11,
    )
    assert exp.cells.clusters().max() + 1 < exp.n_cells / 5
    by_clone = heldout_comparison(exp, cfg, fit)
    assert by_clone.scores.n_clones < by_clone.scores.n_cells and by_clone.scores.z < 2

    def by_cell(strata, cluster, frac, seed):
        return heldout.stratified_holdout(strata, frac, seed)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(heldout, "clone_holdout", by_cell)
        leaky = heldout_comparison(exp, cfg, fit)
    # Held-out cells of clones the fit has seen: their guides "predict" their clone's bias.
    assert leaky.scores.full_better and leaky.scores.z > by_clone.scores.z + 1
