"""SVI fit, Laplace posterior, reproducibility, checkpoints and saved fits."""

from __future__ import annotations

import numpy as np
import pytest

from fatebias_core.errors import FitError
from fatebias_core.model.inference import (
    BatchSampler,
    fit,
    load_fit,
    predict_fates,
    steps_to_convergence,
    write_fit,
)


def _truth(tiny_sim, fate: str, genes: list[str]) -> np.ndarray:
    return tiny_sim.sim.truth_daywise[fate].set_index("gene").loc[genes].to_numpy()


def test_fitted_theta_recovers_the_truth(tiny_sim, tiny_fit):
    theta, _ = tiny_fit.median_effects()
    for k, fate in enumerate(tiny_fit.contrast_fates):
        truth = _truth(tiny_sim, fate, tiny_fit.gene_names)
        active = np.abs(truth).max(1) > 0
        assert active.sum() >= 3
        r = np.corrcoef(theta[active, k].ravel(), truth[active].ravel())[0, 1]
        assert r > 0.9, (fate, r)


def test_laplace_uses_the_dispersion_weight(tiny_sim, tiny_fit):
    info = tiny_fit.info
    assert info["posterior_method"] == "laplace"
    # Dirichlet(c pi) noise has Pearson dispersion 1 / (c + 1).
    c = tiny_sim.config.sim_concentration
    assert info["likelihood_weight"] == pytest.approx(c + 1, rel=0.15)


def test_intervals_cover_the_truth(tiny_sim, tiny_fit):
    draws = tiny_fit.sample_effects(400, seed=1)
    mean, sd = draws.theta.mean(0), draws.theta.std(0)
    covered = []
    for k, fate in enumerate(tiny_fit.contrast_fates):
        z = (mean[:, k] - _truth(tiny_sim, fate, tiny_fit.gene_names)) / sd[:, k]
        covered.append(np.abs(z) < 1.645)
    # 96 gene/days: 90% intervals cover 0.9 +/- 0.03; both too narrow and too wide fail.
    assert 0.82 <= np.mean(covered) <= 0.97


def test_same_seed_same_numbers(tiny_sim):
    cfg = tiny_sim.config.model_copy(update={"num_steps": 60, "posterior_method": "meanfield"})
    a, b = fit(tiny_sim.experiment, cfg), fit(tiny_sim.experiment, cfg)
    np.testing.assert_array_equal(a.elbo, b.elbo)
    for key in a.posterior.params:
        np.testing.assert_array_equal(a.posterior.params[key], b.posterior.params[key])
    c = fit(tiny_sim.experiment, cfg.model_copy(update={"seed": 5}))
    assert not np.array_equal(a.elbo, c.elbo)


def test_checkpoint_resume_gives_the_uninterrupted_numbers(tiny_sim, tmp_path, monkeypatch):
    cfg = tiny_sim.config.model_copy(update={"num_steps": 80, "posterior_method": "meanfield"})
    full = fit(tiny_sim.experiment, cfg)

    import fatebias_core.model.inference as inf

    real_step = inf.SVI.step
    calls = {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 51:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(inf.SVI, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_sim.experiment, cfg, checkpoint_dir=tmp_path, checkpoint_every=20)
    assert (tmp_path / "checkpoint.pt").exists()
    monkeypatch.setattr(inf.SVI, "step", real_step)
    resumed = fit(tiny_sim.experiment, cfg, checkpoint_dir=tmp_path, checkpoint_every=20)
    assert resumed.info["resumed_from"] == 40
    np.testing.assert_allclose(resumed.elbo, full.elbo, rtol=1e-6)
    for key in full.posterior.params:
        np.testing.assert_allclose(resumed.posterior.params[key], full.posterior.params[key], rtol=1e-5, atol=1e-7)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_corrupt_checkpoint_is_a_clear_error(tiny_sim, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FitError, match="corrupt"):
        cfg = tiny_sim.config.model_copy(update={"num_steps": 5, "posterior_method": "meanfield"})
        fit(tiny_sim.experiment, cfg, checkpoint_dir=tmp_path)


def test_exploding_elbo_stops_with_a_clear_message(tiny_sim):
    cfg = tiny_sim.config.model_copy(update={"num_steps": 50, "lr": 1e6, "lr_final": 1e6, "clip_norm": 1e12, "posterior_method": "meanfield"})
    with pytest.raises(FitError, match="ELBO became"):
        fit(tiny_sim.experiment, cfg)


def test_saved_fit_round_trips(tiny_fit, tmp_path):
    write_fit(tiny_fit, tmp_path)
    back = load_fit(tmp_path)
    assert back.posterior.family == "laplace"
    a, b = tiny_fit.sample_effects(20, seed=3), back.sample_effects(20, seed=3)
    np.testing.assert_allclose(a.theta, b.theta)
    np.testing.assert_allclose(a.beta, b.beta)
    assert back.gene_names == tiny_fit.gene_names


def test_load_fit_of_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FitError, match="fit.json"):
        load_fit(tmp_path)


def test_nuisance_only_fit_predicts_but_has_no_effects(tiny_sim):
    cfg = tiny_sim.config.model_copy(update={"num_steps": 50})
    res = fit(tiny_sim.experiment, cfg, guide_effects=False)
    probs = predict_fates(res, tiny_sim.experiment)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    with pytest.raises(FitError, match="nuisance-only"):
        res.sample_effects(5)


def test_batches_are_full_and_cover_every_cell():
    import torch

    s = BatchSampler(10, 4, seed=0, device=torch.device("cpu"))
    seen = torch.cat([s.next() for _ in range(5)])
    assert seen.numel() == 20 and set(seen.tolist()) == set(range(10))


def test_steps_to_convergence():
    trace = np.concatenate([np.linspace(100, 10, 200), np.full(400, 10.0)])
    assert steps_to_convergence(trace, 50, 1e-4) == 299  # both windows flat from index 199 on
    assert steps_to_convergence(np.linspace(100, 10, 400), 50, 1e-4) is None
