"""Simulation (MODEL.md 11): layout, truth, the model equation, determinism, round trip."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from fatebias_core import cli
from fatebias_core.config import load_config, make_config
from fatebias_core.data import load_experiment
from fatebias_core.errors import ConfigError
from fatebias_core.simulate import PROB_FLOOR, simulate, simulate_experiment

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
    """Recompute pi from the true parameters and the *loaded* embedding (MODEL.md 4)."""
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
