"""Simulation (docs/method.md, "Simulation"): layout, truth, the model equation, determinism, round trip."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from fatebias_core import cli
from fatebias_core.config import load_config, make_config
from fatebias_core.data.load import load_experiment
from fatebias_core.data.simulate import PROB_FLOOR, SimulatedData, simulate, simulate_experiment
from fatebias_core.errors import ConfigError

SIM = {
    "sim_n_cells": 600,
    "sim_n_genes": 12,
    "sim_n_guides": 40,  # 4 genes with 4 guides, 8 with 3
    "sim_n_ntc_guides": 4,
    "sim_n_days": 3,
    "sim_n_reps": 2,
    "sim_kmax": 6,
    "sim_ntc_fraction": 0.2,
    "sim_active_frac": 0.25,
    "sim_s_time": 0.05,
}


def sim_config(**overrides) -> object:
    return make_config(**{**SIM, **overrides})


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    simulate(sim_config(s_tau=0.7, lr=0.01), out)
    return out


def test_files_and_cellrank2_layout(sim_dir: Path) -> None:
    names = {p.name for p in sim_dir.iterdir()}
    assert names == {
        "adata.h5ad",
        "guide_map.csv",
        "truth_daywise.csv",
        "truth_daywise_NEU.csv",
        "truth_estimand_daywise.csv",
        "truth_estimand_daywise_NEU.csv",
        "truth_guides.csv",
        "sim_metadata.yaml",
        "config.yaml",
    }
    a = ad.read_h5ad(sim_dir / "adata.h5ad")
    lin = a.obsm["lineages_fwd"]
    assert isinstance(lin, np.ndarray) and lin.shape == (600, 3)
    assert list(a.obs["term_states_fwd"].cat.categories) == ["EC", "MES", "NEU"]
    assert len(a.uns["term_states_fwd_colors"]) == 3
    terminal = a.obs["term_states_fwd"].notna().to_numpy()
    np.testing.assert_array_equal(terminal, lin.max(axis=1) > 0.9)
    assert sp.issparse(a.obsm["guide_assignment"]) and a.obsm["guide_assignment"].format == "csr"
    assert len(a.uns["guide_assignment_names"]) == 44
    assert list(a.obsm["covariates"].columns) == ["replicate"]
    assert sorted(a.obs["day"].unique()) == ["d0", "d1", "d2"]
    gmap = pd.read_csv(sim_dir / "guide_map.csv")
    assert list(gmap.columns) == ["guide_name", "gene_name", "is_ntc"]
    assert gmap.is_ntc.sum() == 4 and len(gmap) == 44
    assert list(pd.read_csv(sim_dir / "truth_daywise.csv").columns) == [
        "gene",
        "true_d0",
        "true_d1",
        "true_d2",
    ]
    assert list(pd.read_csv(sim_dir / "truth_guides.csv").columns) == [
        "guide",
        "gene",
        "delta_MES",
        "delta_NEU",
    ]


def test_round_trip_through_the_loader(sim_dir: Path) -> None:
    cfg = load_config(sim_dir / "config.yaml")
    exp = load_experiment(cfg, verbose=False)
    a = ad.read_h5ad(sim_dir / "adata.h5ad")
    meta = yaml.safe_load((sim_dir / "sim_metadata.yaml").read_text())["realised"]
    assert exp.n_cells == meta["n_cells"] == 600
    assert exp.guides.n_guides == 40 and exp.guides.n_genes == 12 and exp.summary.n_ntc_guides == 4
    assert exp.cells.day_labels == ("d0", "d1", "d2") and exp.cells.rep_labels == ("rep1", "rep2")
    assert exp.summary.cells_per_day == meta["cells_per_day"] == {"d0": 200, "d1": 200, "d2": 200}
    assert exp.summary.unmapped_guides == () and exp.summary.map_guides_absent == ()
    assert exp.summary.dropped == {"cells with more than Kmax=20 guides": 0}
    np.testing.assert_allclose(exp.cells.fate_probs, a.obsm["lineages_fwd"], atol=1e-7)
    assert exp.cells.burden.max() <= SIM["sim_kmax"] and exp.cells.burden.min() >= 1
    assert exp.cells.burden.mean() == pytest.approx(meta["guides_per_cell_mean"])
    assert "CellRank 2" in exp.summary.fate_names_source


def test_model_equation_and_loader_conventions_agree() -> None:
    """Recompute pi from the true parameters and the *loaded* embedding (docs/method.md, "Model")."""
    cfg = sim_config(
        fates=["EC", "NEU", "MES"]
    )  # the reference and contrasts not in column 0/1/2 order
    data = simulate_experiment(cfg)
    p = data.params
    exp = load_experiment(cfg, verbose=False, adata=data.adata, guide_map=data.guide_map)
    np.testing.assert_array_equal(exp.cells.burden, p.burden)
    np.testing.assert_array_equal(exp.cells.day, p.day)
    # Loader guide id -> simulator guide index, by name.
    sim_index = pd.Series(np.arange(len(p.guide_names)), index=list(p.guide_names))
    beta = np.zeros((exp.guides.n_guides + 1, len(p.contrast_fates), cfg.sim_n_days))
    beta[1:] = p.beta[sim_index[list(exp.guides.guide_names)].to_numpy()]
    guide_sum = (
        beta[exp.guides.guide_ids, :, exp.cells.day[:, None]] * exp.guides.mask[..., None]
    ).sum(axis=1)
    eta_c = (
        p.day_intercept[:, exp.cells.day].T
        + p.rep_effect[:, exp.cells.rep].T
        + p.burden_slope * exp.cells.burden_centered[:, None].astype(np.float64)
        + guide_sum
    )
    eta = np.zeros((exp.n_cells, 3))
    eta[:, [cfg.fates.index(f) for f in p.contrast_fates]] = eta_c
    pi = np.exp(eta) / np.exp(eta).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(pi, p.true_probs, atol=1e-6)
    assert p.contrast_fates == ("MES", "NEU")


def test_truth_follows_the_documented_design() -> None:
    cfg = sim_config()
    data = simulate_experiment(cfg)
    p = data.params
    n_active = round(0.25 * 12)
    assert (p.active.sum(axis=0) == n_active).all()
    assert (p.theta[~p.active] == 0).all()  # sim_s_tau = 0: inactive genes exactly null
    on = p.theta != 0
    on_active = on[p.active]  # (n, D)
    assert on_active.any(axis=1).all()
    prof = p.profile[p.active]
    for kind, days_on in zip(prof, on_active, strict=True):
        first, last = np.flatnonzero(days_on)[[0, -1]]
        assert days_on[first : last + 1].all()  # one contiguous block of active days
        if kind == "constant":
            assert days_on.all()
        elif kind == "onset":
            assert first >= 1 and last == cfg.sim_n_days - 1
        else:
            assert first == 0 and last <= cfg.sim_n_days - 2
    mags = np.abs(p.theta[on])
    assert (
        mags.min() > cfg.sim_effect_min - 6 * cfg.sim_s_time
        and mags.max() < cfg.sim_effect_max + 6 * cfg.sim_s_time
    )
    # Signs are constant over a gene's active days (jitter is small next to the effect).
    signs = np.sign(p.theta).sum(axis=2)
    np.testing.assert_array_equal(np.abs(signs), on.sum(axis=2))
    # Guide deviations centred within each gene.
    for c in range(2):
        sums = np.bincount(p.gene_of_guide, weights=p.delta[:, c])
        np.testing.assert_allclose(sums, 0, atol=1e-12)
    assert p.delta.std() > 0
    # Truth tables are theta.
    np.testing.assert_array_equal(data.truth_daywise["MES"].iloc[:, 1:].to_numpy(), p.theta[:, 0])
    np.testing.assert_array_equal(data.truth_daywise["NEU"].iloc[:, 1:].to_numpy(), p.theta[:, 1])
    # Background effects when sim_s_tau > 0 (the module fixture used 0.7): constant over days.
    bg = simulate_experiment(sim_config(sim_s_tau=0.3)).params
    inactive = bg.theta[~bg.active]
    assert (inactive != 0).all() and (inactive == inactive[:, :1]).all()
    np.testing.assert_array_equal(bg.theta[bg.active], p.theta[p.active])  # other draws unchanged


def test_cells_design_and_noise() -> None:
    cfg = sim_config(sim_concentration=1e5)
    data = simulate_experiment(cfg)
    p = data.params
    counts = np.bincount(p.day * cfg.sim_n_reps + p.rep)
    assert counts.max() - counts.min() <= 1
    g = data.adata.obsm["guide_assignment"]
    assert (g.data >= 1).all()
    n_ntc = np.asarray(g[:, cfg.sim_n_guides :].sum(axis=1) > 0).ravel()
    assert 0 < n_ntc.mean() < 1
    np.testing.assert_array_equal(np.diff(g.indptr), p.burden)  # distinct guides, one entry each
    probs = data.adata.obsm["lineages_fwd"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert probs.min() >= PROB_FLOOR * 0.5
    assert np.abs(probs - p.true_probs).max() < 0.05  # high concentration: little noise
    noisy = simulate_experiment(sim_config(sim_concentration=5.0)).adata.obsm["lineages_fwd"]
    assert np.abs(noisy - p.true_probs).mean() > 5 * np.abs(probs - p.true_probs).mean()


def test_same_seed_identical_files_and_truth_independent_of_cell_count(tmp_path: Path) -> None:
    cfg = sim_config()
    simulate(cfg, tmp_path / "a")
    simulate(cfg, tmp_path / "b")
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    other = simulate(sim_config(sim_seed=1), tmp_path / "c")
    assert not other.truth.equals(pd.read_csv(tmp_path / "a" / "truth_daywise.csv"))
    more_cells = simulate_experiment(sim_config(sim_n_cells=900)).params
    np.testing.assert_array_equal(more_cells.theta, simulate_experiment(cfg).params.theta)


def test_config_yaml_is_ready_to_run(sim_dir: Path) -> None:
    raw = yaml.safe_load((sim_dir / "config.yaml").read_text())
    assert raw == {
        "adata_path": "adata.h5ad",
        "guide_map_csv": "guide_map.csv",
        "out_dir": "results",
        "D": 3,
        "R": 2,
        "s_tau": 0.7,
        "lr": 0.01,
    }
    cfg = load_config(sim_dir / "config.yaml")
    assert Path(cfg.adata_path) == (sim_dir / "adata.h5ad").resolve()
    assert Path(cfg.out_dir) == (sim_dir / "results").resolve()


def test_metadata_records_settings_and_counts(sim_dir: Path) -> None:
    meta = yaml.safe_load((sim_dir / "sim_metadata.yaml").read_text())
    assert meta["settings"]["sim_n_cells"] == 600 and meta["settings"]["sim_seed"] == 0
    r = meta["realised"]
    assert (r["n_genes"], r["n_guides"], r["n_ntc_guides"], r["n_days"], r["n_reps"]) == (
        12,
        40,
        4,
        3,
        2,
    )
    assert r["n_active_genes"] == {"MES": 3, "NEU": 3}
    assert sum(r["profiles"]["MES"].values()) == 12
    truth = pd.read_csv(sim_dir / "truth_daywise.csv")
    assert r["truly_active_gene_days"]["MES"] == int(
        (truth.iloc[:, 1:].abs() > 0.2).to_numpy().sum()
    )
    assert set(meta["nuisance"]) == {"MES", "NEU"}


def test_cli_simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    argv = [
        "simulate",
        "--out",
        str(out),
        "--n-cells",
        "200",
        "--n-genes",
        "5",
        "--n-guides",
        "10",
        "--n-days",
        "2",
    ]
    assert cli.main(argv) == 0
    assert "simulated 200 cells over 2 days x 2 replicates" in capsys.readouterr().out
    exp = load_experiment(load_config(out / "config.yaml"), verbose=False)
    assert exp.n_cells == 200 and exp.guides.n_genes == 5


def test_cli_simulate_bad_settings_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sim"
    assert cli.main(["simulate", "--out", str(out), "--n-genes", "8", "--n-guides", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sim_n_guides (4) must be at least sim_n_genes (8)" in err[0]
    assert not out.exists()
    with pytest.raises(ConfigError, match="sim_n_cells"):
        simulate_experiment(sim_config(sim_n_cells=5))


# --------------------------------------------------------------------------- realism settings
OFF = {
    "sim_clone_size_mean": 0.0,
    "sim_clone_bias_sd": 0.0,
    "sim_write_clone_labels": True,
    "sim_smoothing_k": 0,
    "sim_smoothing_weight": 1.0,
    "sim_noise": "dirichlet",
    "sim_logit_noise_sd": 0.5,
    "sim_knockdown_sd": 0.0,
    "sim_batch_sd": 0.0,
}


def digest(data: SimulatedData) -> str:
    """A portable digest of the simulated arrays (floats rounded to 9 decimals)."""
    p = data.params
    g = data.adata.obsm["guide_assignment"]
    h = hashlib.sha256()
    for a in (g.indptr, g.indices, p.day, p.rep, p.burden, p.gene_of_guide):
        h.update(np.asarray(a, dtype=np.int64).tobytes())
    h.update(np.asarray(g.data, dtype=np.float32).tobytes())
    for a in (data.adata.obsm["lineages_fwd"], p.true_probs, p.theta, p.delta):
        h.update(np.round(np.asarray(a, dtype=np.float64), 9).tobytes())
    return h.hexdigest()[:16]


def log_ratios(probs: np.ndarray) -> np.ndarray:
    """(N, 2) log(p_MES / p_EC), log(p_NEU / p_EC) for the default fates."""
    return np.log(probs[:, 1:]) - np.log(probs[:, :1])


def test_off_realism_settings_are_the_plain_simulator() -> None:
    """The same seed gives the same experiment, another seed another; explicit off values and no-op settings
    are bit-identical to the defaults, which add no clones, knockdown spread or batch."""
    base = simulate_experiment(sim_config())
    assert digest(simulate_experiment(sim_config())) == digest(base)
    assert digest(simulate_experiment(sim_config(sim_seed=3))) != digest(base)
    for extra in (
        OFF,
        {"sim_smoothing_k": 1},
        {"sim_smoothing_k": 25, "sim_smoothing_weight": 0.0},
        {"sim_logit_noise_sd": 3.0, "sim_write_clone_labels": False},
    ):
        same = simulate_experiment(sim_config(**extra))
        np.testing.assert_array_equal(
            same.adata.obsm["lineages_fwd"], base.adata.obsm["lineages_fwd"]
        )
        np.testing.assert_array_equal(same.params.true_probs, base.params.true_probs)
        assert (same.adata.obsm["guide_assignment"] != base.adata.obsm["guide_assignment"]).nnz == 0
    p = base.params
    assert (
        p.clone is None and p.clone_bias is None and p.knockdown is None and p.batch_offset is None
    )
    assert "clone" not in base.adata.obs
    assert base.kappa == {"MES": 1.0, "NEU": 1.0}
    for fate in ("MES", "NEU"):
        pd.testing.assert_frame_equal(base.truth_estimand[fate], base.truth_daywise[fate])


def test_clones_share_guide_set_and_replicate() -> None:
    cfg = sim_config(sim_n_cells=3000, sim_clone_size_mean=5.0)
    data = simulate_experiment(cfg)
    p = data.params
    assert p.clone is not None and p.clone.shape == (3000,)
    sizes = np.bincount(p.clone)
    assert sizes.min() >= 1 and sizes.sum() == 3000
    assert abs(sizes[:-1].mean() - 5.0) < 0.35  # the last clone is cut to fit
    assert 3.0 < sizes[:-1].var() < 5.2  # 1 + Poisson(4): variance 4
    first = np.unique(p.clone, return_index=True)[1][p.clone]
    g = data.adata.obsm["guide_assignment"].toarray() > 0
    np.testing.assert_array_equal(g, g[first])  # one guide set per clone
    np.testing.assert_array_equal(p.rep, p.rep[first])
    np.testing.assert_array_equal(p.burden, p.burden[first])
    assert (p.day != p.day[first]).any()  # a clone's cells are spread over days
    np.testing.assert_array_equal(np.bincount(p.day), [1000, 1000, 1000])
    assert (p.clone_bias == 0).all() and data.kappa == {"MES": 1.0, "NEU": 1.0}
    labels = data.adata.obs["clone"]
    assert len(labels.cat.categories) == len(sizes)
    np.testing.assert_array_equal(labels.cat.codes.to_numpy(), p.clone)
    # Without labels: the same data, no obs column.
    quiet = simulate_experiment(
        sim_config(sim_n_cells=3000, sim_clone_size_mean=5.0, sim_write_clone_labels=False)
    )
    assert "clone" not in quiet.adata.obs
    np.testing.assert_array_equal(quiet.adata.obsm["lineages_fwd"], data.adata.obsm["lineages_fwd"])
    np.testing.assert_array_equal(quiet.params.clone, p.clone)
    # The effects do not depend on clones.
    np.testing.assert_array_equal(p.theta, simulate_experiment(sim_config()).params.theta)


def test_clone_bias_correlates_the_cells_of_a_clone() -> None:
    sd = 0.6
    kw = {"sim_n_cells": 4000, "sim_clone_size_mean": 5.0, "sim_concentration": 1e6}
    data = simulate_experiment(sim_config(**kw, sim_clone_bias_sd=sd))
    p = data.params
    resid = log_ratios(data.adata.obsm["lineages_fwd"]) - p.eta  # eta: without the clone bias
    sizes = np.bincount(p.clone)
    means = np.stack([np.bincount(p.clone, weights=resid[:, c]) / sizes for c in range(2)], axis=1)
    between = means[sizes >= 2].var(axis=0)
    np.testing.assert_allclose(between, sd**2, rtol=0.2)
    np.testing.assert_allclose(resid, p.clone_bias[p.clone], atol=0.05)
    # Within a clone the residuals agree (only the tiny Dirichlet noise is left).
    assert (resid - means[p.clone]).std() < 0.02
    # Given its clone a cell's effects are not attenuated (the fit's estimand: kappa 1 without
    # logit noise); averaged over clones they are, by about the probit approximation's factor.
    approx = 1 / np.sqrt(1 + np.pi * sd**2 / 8)
    for fate, k in data.kappa.items():
        assert k == 1.0
        clone_factor = data.metadata["estimand_parts"][fate]["clone"]
        assert clone_factor < 1 and abs(clone_factor - approx) < 0.04
    unbiased = simulate_experiment(sim_config(**kw)).params
    resid0 = (
        log_ratios(simulate_experiment(sim_config(**kw)).adata.obsm["lineages_fwd"]) - unbiased.eta
    )
    means0 = np.bincount(unbiased.clone, weights=resid0[:, 0]) / np.bincount(unbiased.clone)
    assert means0.var() < 1e-3


def brute_force_smoothing(probs: np.ndarray, day: np.ndarray, k: int, w: float) -> np.ndarray:
    out = probs.copy()
    for d in np.unique(day):
        idx = np.flatnonzero(day == d)
        q = probs[idx]
        dist = ((q[:, None, :] - q[None, :, :]) ** 2).sum(axis=2)
        nb = np.argsort(dist, axis=1, kind="stable")[:, :k]
        out[idx] = (1 - w) * q + w * q[nb].mean(axis=1)
    return out / out.sum(axis=1, keepdims=True)


def test_smoothing_averages_neighbours_within_each_day() -> None:
    raw = simulate_experiment(sim_config(sim_concentration=10.0))
    smooth = simulate_experiment(sim_config(sim_concentration=10.0, sim_smoothing_k=20))
    half = simulate_experiment(
        sim_config(sim_concentration=10.0, sim_smoothing_k=20, sim_smoothing_weight=0.5)
    )
    p0, p1, ph = (d.adata.obsm["lineages_fwd"] for d in (raw, smooth, half))
    day = raw.params.day
    np.testing.assert_allclose(p1, brute_force_smoothing(p0, day, 20, 1.0), atol=1e-12)
    np.testing.assert_allclose(ph, brute_force_smoothing(p0, day, 20, 0.5), atol=1e-12)
    for p in (p1, ph):
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
        assert p.min() >= PROB_FLOOR * 0.5
    for d in range(3):
        v0, v1, vh = (p[day == d].var(axis=0).sum() for p in (p0, p1, ph))
        assert v1 < 0.9 * v0 and v1 < vh < v0
    # Smoothing leaves the design untouched and attenuates the estimand.
    np.testing.assert_array_equal(smooth.params.true_probs, raw.params.true_probs)
    assert (smooth.adata.obsm["guide_assignment"] != raw.adata.obsm["guide_assignment"]).nnz == 0
    parts = smooth.metadata["estimand_parts"]
    for fate, k in smooth.kappa.items():
        assert 0 < k < 1 and parts[fate]["noise"] == 1.0 and parts[fate]["smoothing"] == round(k, 6)
        assert k < half.kappa[fate] < 1


def test_logistic_normal_noise_and_its_attenuation() -> None:
    sd = 1.0
    data = simulate_experiment(
        sim_config(sim_n_cells=3000, sim_noise="logistic_normal", sim_logit_noise_sd=sd)
    )
    probs, p = data.adata.obsm["lineages_fwd"], data.params
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert probs.min() >= PROB_FLOOR * 0.5
    resid = log_ratios(probs) - p.eta
    np.testing.assert_allclose(resid.std(axis=0), sd, rtol=0.08)
    assert abs(np.corrcoef(resid.T)[0, 1]) < 0.1  # independent noise on each logit
    approx = 1 / np.sqrt(1 + np.pi * sd**2 / 8)  # probit approximation, about 0.85
    for k in data.kappa.values():
        assert k < 1 and abs(k - approx) < 0.04
    # Almost no noise: kappa is 1 and p is pi.
    tiny = simulate_experiment(sim_config(sim_noise="logistic_normal", sim_logit_noise_sd=0.01))
    for k in tiny.kappa.values():
        assert abs(k - 1) < 1e-3
    np.testing.assert_allclose(tiny.adata.obsm["lineages_fwd"], tiny.params.true_probs, atol=0.01)
    # The Dirichlet stream is not used: the design and effects match a Dirichlet run.
    dirichlet = simulate_experiment(sim_config(sim_n_cells=3000)).params
    np.testing.assert_array_equal(dirichlet.true_probs, p.true_probs)
    for fate, c in (("MES", 0), ("NEU", 1)):
        est = data.truth_estimand[fate].iloc[:, 1:].to_numpy()
        np.testing.assert_allclose(est, data.kappa[fate] * p.theta[:, c], rtol=0, atol=1e-15)
        assert (est[~p.active[:, c]] == 0).all()


def test_uneven_knockdown_scales_guide_effects_per_replicate() -> None:
    sd = 0.3
    cfg = sim_config(sim_n_guides=200, sim_knockdown_sd=sd)
    data = simulate_experiment(cfg)
    p = data.params
    e = p.knockdown
    assert e is not None and e.shape == (200, 2) and e.min() >= 0 and e.max() <= 2
    assert abs(e.mean() - 1) < 0.05 and abs(e.std() - sd) < 0.05
    assert abs((e[:, 0] - e[:, 1]).std() - np.sqrt(2) * sd) < 0.07  # replicates differ by ~ the SD
    # The model equation with per-replicate guide effects reproduces eta.
    g = data.adata.obsm["guide_assignment"][:, : cfg.sim_n_guides].tocoo()
    per_entry = p.beta_by_rep[g.col, :, p.day[g.row], p.rep[g.row]]
    guide_sum = np.zeros((len(p.day), 2))
    np.add.at(guide_sum, g.row, per_entry)
    plain = simulate_experiment(sim_config(sim_n_guides=200)).params
    assert plain.knockdown is None
    plain_sum = np.zeros((len(p.day), 2))
    np.add.at(plain_sum, g.row, p.beta[g.col, :, p.day[g.row]])
    np.testing.assert_allclose(p.eta - plain.eta, guide_sum - plain_sum, atol=1e-10)
    assert np.abs(guide_sum - plain_sum).max() > 0.05
    assert data.kappa == {"MES": 1.0, "NEU": 1.0}  # knockdown is part of the mean, not noise


def test_batch_offsets_shift_day_by_replicate_means() -> None:
    sd = 0.5
    kw = {"sim_n_cells": 1200, "sim_concentration": 1e6}
    data = simulate_experiment(sim_config(**kw, sim_batch_sd=sd))
    plain = simulate_experiment(sim_config(**kw))
    p, q = data.params, plain.params
    b = p.batch_offset
    assert b is not None and b.shape == (2, 3, 2) and 0.2 < b.std() < 1.0
    np.testing.assert_array_equal(p.day, q.day)
    np.testing.assert_array_equal(p.theta, q.theta)
    np.testing.assert_allclose(p.eta - q.eta, b[:, p.day, p.rep].T, atol=1e-12)
    shift = log_ratios(data.adata.obsm["lineages_fwd"]) - log_ratios(
        plain.adata.obsm["lineages_fwd"]
    )
    group = p.day * 2 + p.rep
    for c in range(2):
        means = np.bincount(group, weights=shift[:, c]) / np.bincount(group)
        np.testing.assert_allclose(means, b[c].ravel(), atol=0.01)
    assert data.kappa == {"MES": 1.0, "NEU": 1.0}


def test_all_realism_settings_write_the_estimand_and_load(tmp_path: Path) -> None:
    cfg = sim_config(
        sim_clone_size_mean=4.0,
        sim_clone_bias_sd=0.5,
        sim_smoothing_k=10,
        sim_smoothing_weight=0.8,
        sim_noise="logistic_normal",
        sim_logit_noise_sd=0.7,
        sim_knockdown_sd=0.2,
        sim_batch_sd=0.3,
    )
    res = simulate(cfg, tmp_path / "sim")
    data = simulate_experiment(cfg)
    meta = yaml.safe_load((tmp_path / "sim" / "sim_metadata.yaml").read_text())
    for fate, suffix, c in (("MES", "", 0), ("NEU", "_NEU", 1)):
        est = pd.read_csv(tmp_path / "sim" / f"truth_estimand_daywise{suffix}.csv")
        assert list(est.columns) == ["gene", "true_d0", "true_d1", "true_d2"]
        assert (
            res.paths[f"truth_estimand_daywise{suffix}"].name
            == f"truth_estimand_daywise{suffix}.csv"
        )
        kappa = data.kappa[fate]
        assert 0 < kappa < 1 and meta["estimand"][fate] == round(kappa, 6)
        parts = meta["estimand_parts"][fate]
        assert parts["noise"] < 1 and parts["smoothing"] < 1
        assert abs(parts["noise"] * parts["smoothing"] - kappa) < 1e-5
        theta = data.params.theta[:, c]
        p = data.params  # each gene's realised mean knockdown efficiency over guides and replicates
        eff = np.array([p.knockdown[p.gene_of_guide == g].mean() for g in range(len(p.gene_names))])
        assert eff.std() > 0.01 and abs(eff.mean() - 1) < 0.1
        np.testing.assert_allclose(
            est.iloc[:, 1:].to_numpy(), kappa * eff[:, None] * theta, rtol=1e-12, atol=1e-15
        )
        latent = pd.read_csv(tmp_path / "sim" / f"truth_daywise{suffix}.csv").iloc[:, 1:].to_numpy()
        np.testing.assert_allclose(latent, theta, rtol=1e-12, atol=1e-15)
        assert (est.iloc[:, 1:].to_numpy()[~data.params.active[:, c]] == 0).all()
    design = meta["design"]
    assert all(design[k] != "off" for k in ("clones", "smoothing", "knockdown", "batch"))
    assert design["noise"].startswith("softmax")
    assert meta["settings"]["sim_noise"] == "logistic_normal"
    assert meta["realised"]["n_clones"] == int(data.params.clone.max()) + 1
    # The loader reads the folder.
    exp = load_experiment(load_config(tmp_path / "sim" / "config.yaml"), verbose=False)
    a = ad.read_h5ad(tmp_path / "sim" / "adata.h5ad")
    assert exp.n_cells == 600 and "clone" in a.obs
    np.testing.assert_allclose(exp.cells.fate_probs, a.obsm["lineages_fwd"], atol=1e-7)
    np.testing.assert_array_equal(exp.cells.burden, data.params.burden)


def test_realism_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="sim_clone_size_mean"):
        simulate_experiment(sim_config(sim_clone_size_mean=0.5))
    with pytest.raises(ConfigError, match="sim_clone_bias_sd"):
        simulate_experiment(sim_config(sim_clone_bias_sd=0.3))
    with pytest.raises(ConfigError, match="sim_noise"):
        sim_config(sim_noise="gaussian")
    with pytest.raises(ConfigError, match="sim_smoothing_weight"):
        sim_config(sim_smoothing_weight=1.5)
    with pytest.raises(ConfigError, match="day x replicate"):
        simulate_experiment(sim_config(sim_n_cells=20, sim_clone_size_mean=20.0))
