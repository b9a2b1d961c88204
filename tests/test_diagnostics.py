"""Diagnostics (docs/method.md, "Diagnostics"): held-out split and cross-entropy, permutation control, sanity checks."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from fatebias_core import cli
from fatebias_core.checks.diagnostics import (
    GenePosterior,
    burden_bins,
    check_regulators,
    clone_holdout,
    gene_posterior,
    permutation_units,
    permute_guide_sets,
    run_diagnostics,
    score_heldout,
    soft_cross_entropy,
    split_experiment,
    stratified_holdout,
)
from fatebias_core.checks.permutation import _reset_if_changed
from fatebias_core.config import load_config, make_config
from fatebias_core.data.simulate import simulate
from fatebias_core.errors import ConfigError
from fatebias_core.io.layout import PERMUTATION_FINGERPRINT
from fatebias_core.io.tables import DayAxis, DaywisePosterior
from fatebias_core.types import (
    Experiment,
    FilteredCells,
    GuideEmbedding,
    LoadSummary,
    center_by_group,
)

from .conftest import TINY_CHAIN as TINY


def toy_experiment(n: int = 400, n_days: int = 3, n_reps: int = 2, kmax: int = 5, seed: int = 0) -> Experiment:
    """Random cells with distinct guide sets of 1..kmax guides (ids 0 = NTC count as guides)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(1, kmax + 1, n)
    mask = np.arange(kmax) < k[:, None]
    ids = np.where(mask, rng.integers(0, 30, (n, kmax)), 0).astype(np.int32)
    day, rep = rng.integers(0, n_days, n), rng.integers(0, n_reps, n)
    cells = FilteredCells(
        fate_probs=rng.dirichlet(np.ones(3), n).astype(np.float32),
        fates=("EC", "MES", "NEU"),
        day=day,
        day_labels=tuple(f"d{d}" for d in range(n_days)),
        rep=rep,
        rep_labels=tuple(f"r{r}" for r in range(n_reps)),
        burden=k,
        burden_centered=center_by_group(k, day, n_days),
        cell_names=np.asarray([f"c{i}" for i in range(n)], dtype=object),
    )
    gog = np.r_[0, np.arange(29) // 3 + 1]
    guides = GuideEmbedding(ids, mask, gog, tuple(f"g{g}" for g in range(1, 30)), tuple(f"L{i}" for i in range(1, 11)))
    return Experiment(cells, guides, LoadSummary("toy", n, n))


# --------------------------------------------------------------------------- held-out
def test_stratified_holdout_counts_and_seed() -> None:
    strata = np.repeat([0, 1, 2, 3], [10, 55, 1, 2])
    held = stratified_holdout(strata, 0.2, seed=3)
    assert np.bincount(strata[held], minlength=4).tolist() == [2, 11, 0, 1]  # round(0.2 n), 1 <= . <= n-1
    assert np.array_equal(held, stratified_holdout(strata, 0.2, seed=3))
    assert not np.array_equal(held, stratified_holdout(strata, 0.2, seed=4))


def test_clone_holdout_holds_out_whole_clones() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 8, size=300)
    cluster = np.repeat(np.arange(300), sizes)
    rep = np.repeat(rng.integers(0, 2, size=300), sizes)  # a clone lies in one replicate
    day = rng.integers(0, 3, size=cluster.size)  # and its cells on any day
    strata = day * 2 + rep
    held = clone_holdout(strata, cluster, 0.2, seed=1)
    per_clone = np.bincount(cluster, weights=held) / sizes
    assert set(np.unique(per_clone)) == {0.0, 1.0}  # every clone wholly on one side
    assert abs(held[np.r_[0, np.cumsum(sizes)[:-1]]].mean() - 0.2) < 0.03  # a fifth of the clones
    assert (np.bincount(strata[~held], minlength=6) > 0).all()
    assert np.array_equal(held, clone_holdout(strata, cluster, 0.2, seed=1))
    # every cell its own clone: the cell-level stratified split
    singletons = np.arange(cluster.size)
    assert np.array_equal(clone_holdout(strata, singletons, 0.2, seed=1), stratified_holdout(strata, 0.2, seed=1))


def test_clone_holdout_gives_a_starved_stratum_its_clones_back() -> None:
    # stratum 1 holds only cells of clone 0, which lies mostly in stratum 0
    strata = np.array([0, 0, 0, 1, 0, 0, 0, 0])
    cluster = np.array([0, 0, 0, 0, 1, 2, 3, 4])
    for seed in range(20):
        held = clone_holdout(strata, cluster, 0.4, seed)
        assert not held[cluster == 0].any() and held.any()


def test_heldout_se_treats_clones_as_independent() -> None:
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(3), size=400)
    full, nuis = rng.dirichlet(np.ones(3), size=400), np.full((400, 3), 1 / 3)
    day = rng.integers(0, 2, size=400)
    cells = score_heldout(p, full, nuis, day, ["d0", "d1"])
    singletons = score_heldout(p, full, nuis, day, ["d0", "d1"], cluster=np.arange(400) * 7)
    assert singletons.difference_se == pytest.approx(cells.difference_se, rel=1e-12)
    # 40 clones of 10 identical cells: the information of 40 cells, not 400
    rows = np.repeat(np.arange(40), 10)
    clones = score_heldout(p[rows], full[rows], nuis[rows], day[rows], ["d0", "d1"], cluster=rows)
    forty = score_heldout(p[:40], full[:40], nuis[:40], day[:40], ["d0", "d1"])
    assert clones.difference == pytest.approx(forty.difference)
    assert clones.difference_se == pytest.approx(forty.difference_se, rel=1e-9)


def test_cross_entropy_by_hand() -> None:
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    full = np.array([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [0.8, 0.1, 0.1]])
    nuis = np.full((3, 3), 1 / 3)
    ce_full = [
        -(0.5 * math.log(0.5) + 0.5 * math.log(0.25)),
        -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5)),
        -math.log(0.8),
    ]
    assert soft_cross_entropy(p, full) == pytest.approx(ce_full)
    s = score_heldout(p, full, nuis, day=np.array([0, 1, 1]), day_labels=["d0", "d1"])
    assert s.ce_full == pytest.approx(np.mean(ce_full))
    assert s.ce_nuisance == pytest.approx(math.log(3))
    diffs = math.log(3) - np.array(ce_full)
    assert s.difference == pytest.approx(diffs.mean())
    assert s.difference_se == pytest.approx(diffs.std(ddof=1) / math.sqrt(3))
    assert s.full_better and s.z > 0
    entropy = np.mean([math.log(2), ce_full[1], 0.0])  # row 2 predicted exactly
    assert s.entropy == pytest.approx(entropy)
    assert s.explained_fraction == pytest.approx(diffs.mean() / (math.log(3) - entropy))
    assert s.per_day["n_cells"].tolist() == [1, 2]
    assert s.per_day["ce_full"].tolist() == pytest.approx([ce_full[0], np.mean(ce_full[1:])])
    assert s.per_day["difference"].tolist() == pytest.approx([diffs[0], diffs[1:].mean()])
    # A zero prediction where p > 0 is floored, not -inf.
    assert np.isfinite(soft_cross_entropy(p, np.array([[0.0, 1.0, 0.0]] * 3))).all()


def test_split_centres_heldout_burden_on_training_means() -> None:
    exp = toy_experiment()
    held = stratified_holdout(exp.cells.day * 2 + exp.cells.rep, 0.25, seed=0)
    train, test = split_experiment(exp, held)
    assert train.n_cells + test.n_cells == exp.n_cells and test.n_cells == held.sum()
    for d in range(3):
        train_mean = exp.cells.burden[~held & (exp.cells.day == d)].mean()
        sel = test.cells.day == d
        assert np.allclose(test.cells.burden_centered[sel], test.cells.burden[sel] - train_mean, atol=1e-5)
        assert abs(train.cells.burden_centered[train.cells.day == d].mean()) < 1e-5


# --------------------------------------------------------------------------- permutation
def _sets(exp: Experiment, rows: np.ndarray) -> list[tuple]:
    g = exp.guides
    return sorted(tuple(g.guide_ids[i][g.mask[i]].tolist()) for i in rows)


def _sets(exp: Experiment, rows: np.ndarray) -> list[tuple]:
    g = exp.guides
    return sorted(tuple(g.guide_ids[i][g.mask[i]].tolist()) for i in rows)


def test_burden_bins() -> None:
    b = np.array([1, 1, 2, 2, 3, 3, 4, 9])
    bins, edges = burden_bins(b, 4)
    assert edges.tolist() == [1.75, 2.5, 3.25]
    assert bins.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert burden_bins(b, 1)[0].tolist() == [0] * 8
    assert burden_bins(np.full(5, 3), 4)[1].size == 0  # ties collapse to one bin


def test_permutation_moves_whole_units_within_strata() -> None:
    exp = toy_experiment()
    n = exp.n_cells
    units = np.arange(n) // 4  # units of 4 cells; give each one guide set and one replicate
    first = units * 4
    g = exp.guides
    guides = replace(g, guide_ids=g.guide_ids[first], mask=g.mask[first])
    cells = replace(exp.cells, rep=exp.cells.rep[first], burden=exp.cells.burden[first], cluster=np.arange(n) // 2)
    exp = Experiment(cells, guides, exp.summary)
    perm = permute_guide_sets(exp, units, seed=3)
    new = perm.experiment
    # Fates, days, replicates and clones stay with their cells; burden travels with the guide set.
    assert np.array_equal(new.cells.fate_probs, cells.fate_probs) and np.array_equal(new.cells.cluster, cells.cluster)
    assert np.array_equal(new.cells.burden, new.guides.mask.sum(1))
    for u in range(units.max() + 1):
        rows = np.flatnonzero(units == u)
        assert (new.guides.guide_ids[rows] == new.guides.guide_ids[rows[0]]).all()  # the unit shares one set
        assert len(set(perm.source[rows] // 4)) == 1  # from one donor unit
        assert cells.rep[perm.source[rows[0]]] == cells.rep[rows[0]]  # of the same replicate
    for s in np.unique(perm.strata):  # the units' sets are permuted within each stratum
        rows = np.flatnonzero(perm.strata == s)
        assert _sets(new, rows) == _sets(exp, rows)
    assert perm.n_moved > 0.5 * n


def test_permutation_units_hold_whole_clones_and_are_coarser() -> None:
    cfg = make_config(dict(sim_n_cells=3000, sim_n_genes=40, sim_n_guides=240, sim_kmax=9, sim_clone_size_mean=8.0,
                           sim_guide_detection=0.7, sim_write_clone_labels=False, sim_seed=2))
    from fatebias_core.data.load import load_experiment
    from fatebias_core.data.simulate import simulate_experiment

    sim = simulate_experiment(cfg)
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    units = permutation_units(exp, 3.0)
    clones = exp.cells.clusters()
    pairs = set(zip(clones.tolist(), units.tolist(), strict=True))
    assert len(pairs) == clones.max() + 1  # every clone within one unit
    assert units.max() < clones.max()


def test_permutation_seeded() -> None:
    exp = toy_experiment()
    units = np.arange(exp.n_cells)
    a, b = permute_guide_sets(exp, units, 1), permute_guide_sets(exp, units, 1)
    assert np.array_equal(a.source, b.source) and a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != permute_guide_sets(exp, units, 2).fingerprint()


def test_reset_if_changed(tmp_path: Path) -> None:
    (tmp_path / "fit").mkdir()
    (tmp_path / "fit" / "checkpoint.pt").write_text("x")
    (tmp_path / "fatebias_manifest.json").write_text("{}")
    (tmp_path / PERMUTATION_FINGERPRINT).write_text(json.dumps({"fingerprint": "abc"}))
    _reset_if_changed(tmp_path, "abc")  # same data: keep
    assert (tmp_path / "fatebias_manifest.json").exists() and (tmp_path / "fit").exists()
    _reset_if_changed(tmp_path, "def")  # other data: forget
    assert not (tmp_path / "fatebias_manifest.json").exists() and not (tmp_path / "fit").exists()


# --------------------------------------------------------------------------- sanity checks
def _posterior() -> GenePosterior:
    axis = DayAxis(("d0", "d1", "d2"), (0, 1, 2))
    mean = np.array([[0.8, 0.9, 0.1], [-0.5, 0.6, 0.0], [0.3, 0.2, 0.1], [-1.0, -1.2, -0.9]])
    sd = np.full_like(mean, 0.2)
    lfsr = np.array([[0.001, 0.0, 0.4], [0.01, 0.2, 0.5], [0.3, 0.2, 0.6], [0.0, 0.0, 0.04]])
    genes = pd.Series(["UP", "FLIP", "WEAK", "DOWN"])
    return GenePosterior(genes, DaywisePosterior(axis, mean, sd, lfsr), np.array([0.5, 0.1, 0.2, -1.0]), np.array([0.0, 0.3, 0.2, 0.0]), "hand", "mash")


def test_check_regulators_by_hand() -> None:
    known = {"UP": 1, "FLIP": 1, "WEAK": 1, "DOWN": -1, "GONE": -1, "DOWN2": 1}
    res = check_regulators(known, _posterior(), lfsr_thresh=0.05)
    by = {c.gene: c for c in res.checks}
    assert by["UP"].status == "pass" and by["UP"].significant_days == ["d0", "d1"]
    assert by["UP"].best_day == "d1" and by["UP"].min_lfsr == 0.0 and by["UP"].summary_sign_ok
    assert by["FLIP"].status == "wrong_sign" and by["FLIP"].significant_days == ["d0"]
    assert by["WEAK"].status == "not_detected" and by["WEAK"].significant_days == []
    assert by["DOWN"].status == "pass" and by["DOWN"].significant_days == ["d0", "d1", "d2"]
    assert by["GONE"].status == "missing" and by["DOWN2"].status == "missing"
    assert res.missing == ["GONE", "DOWN2"]
    assert res.all_passed is False
    d = res.to_dict()
    assert (d["n_passed"], d["n_wrong_sign"], d["n_not_detected"], d["n_missing"]) == (2, 1, 1, 2)
    assert check_regulators({"DOWN": -1}, _posterior(), 0.05).all_passed is True
    # A stricter threshold leaves DOWN's d2 (lfsr 0.04) out; a flipped expectation fails.
    assert check_regulators({"DOWN": -1}, _posterior(), 0.01).checks[0].significant_days == ["d0", "d1"]
    assert check_regulators({"DOWN": 1}, _posterior(), 0.05).checks[0].status == "wrong_sign"


def test_gene_posterior_prefers_mash_then_exports(tmp_path: Path) -> None:
    cfg = make_config(out_dir=str(tmp_path), known_regulators={"A": 1})
    assert gene_posterior(cfg, tmp_path) is None
    pd.DataFrame({"gene": ["A", "B"], "betahat_d0": [0.5, -0.1], "betahat_d1": [0.4, 0.0], "se_d0": [0.1, 0.1], "se_d1": [0.2, 0.1]}).to_csv(
        tmp_path / "gene_daywise_for_mash.csv", index=False
    )
    post = gene_posterior(cfg, tmp_path)
    assert post.lfsr_from == "posterior z" and post.summary_mean is None
    assert post.daywise.lfsr[0].tolist() == pytest.approx([norm.cdf(-5.0), norm.cdf(-2.0)], rel=1e-12)  # A: 0.5/0.1, 0.4/0.2
    table = {"gene": ["B", "A"]}
    for d, (m, lf) in enumerate([((-0.1, 0.3), (0.5, 0.01)), ((0.0, 0.2), (0.9, 0.2))]):
        table |= {f"postmean_d{d}": m, f"postsd_d{d}": [0.1, 0.1], f"lfsr_d{d}": lf}
    pd.DataFrame(table).to_csv(tmp_path / "mash_gene_conservative.csv", index=False)
    pd.DataFrame({"gene": ["A", "B"], "postmean": [0.25, 0.0], "postsd": [0.1, 0.1], "lfsr": [0.03, 0.9], "qvalue": [0.05, 0.9]}).to_csv(
        tmp_path / "ash_gene_summary.csv", index=False
    )
    post = gene_posterior(cfg, tmp_path)
    assert post.lfsr_from == "mash" and post.source.startswith("mash_gene_conservative.csv")
    res = check_regulators({"A": 1}, post, 0.05)
    c = res.checks[0]
    assert c.status == "pass" and c.lfsr == {"d0": 0.01, "d1": 0.2} and c.summary_lfsr == 0.03


def test_unknown_part_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown diagnostics part"):
        run_diagnostics(toy_experiment(), make_config(), tmp_path, parts=("heldout", "bogus"))
    assert not (tmp_path / "diagnostics.json").exists()


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_diagnose_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = simulate(make_config(**TINY, known_regulators={"G04": 1, "G07": -1, "G12": 1, "NOPE": 1}), tmp_path)
    cfg_path = sim.paths["config"]
    assert cli.main(["diagnose", "--config", str(cfg_path)]) == 0
    out = load_config(cfg_path).out_dir
    text = capsys.readouterr().out
    assert "held-out cross-entropy" in text and "permutation control" in text
    d = json.loads((Path(out) / "diagnostics.json").read_text())
    h = d["heldout"]
    n_cells = h["n_heldout"] + h["n_train"]
    assert n_cells == 1500 and abs(h["n_heldout"] - 0.1 * n_cells) < 0.03 * n_cells  # heldout_frac of the cells, in whole clones
    assert 0 < h["n_heldout_clones"] <= h["n_heldout"] and h["steps"] == 150
    assert h["full_better"] and h["ce_full"] < h["ce_nuisance"] and h["difference_z"] > 2
    assert [r["day"] for r in h["per_day"]] == ["d0", "d1", "d2", "d3"]
    p = d["permutation"]
    assert p["n_cells_moved"] > 1000 and p["n_hits"] <= 1 and p["passed"]
    assert set(p["hits_by_mode"]) == {"conservative", "enriched"}
    assert (Path(out) / "permutation" / "hits_ranked.csv").exists()
    s = d["sanity"]  # no run in the folder: the held-out fit's posterior
    assert s["source"].startswith("held-out full fit") and s["missing"] == ["NOPE"]
    by = {c["gene"]: c for c in s["checks"]}
    assert by["G04"]["status"] == "pass" and by["G07"]["status"] == "pass"  # true effects +1.15, -1.2
    assert by["G12"]["status"] in {"wrong_sign", "not_detected"}  # true effect is negative, d0 only
