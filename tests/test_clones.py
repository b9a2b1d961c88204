"""Clones: found from lineage labels or from overlapping guide sets; guides shared within a clone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fatebias_core.config import make_config
from fatebias_core.data.clones import (
    adjusted_rand_index,
    clones_from_guides,
    clones_from_labels,
    detection_rate,
    impute_clone_guides,
)
from fatebias_core.data.load import load_experiment
from fatebias_core.data.simulate import simulate_experiment
from fatebias_core.studies.calibration import pair_agreement


def _sets(rows: list[list[int]], width: int = 6) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def test_identical_sets_link_and_replicates_never_do():
    sets = _sets([[1, 2], [2, 1], [1, 2], [1, 3], [], []])
    rep = np.array([0, 0, 1, 0, 0, 0])
    c = clones_from_guides(sets, rep).cluster
    assert c[0] == c[1]  # the same set in another order
    assert c[2] != c[0]  # the same set in the other replicate
    assert len({c[3], c[4], c[5]}) == 3 and c[4] != c[0]  # cells without guides stand alone


def test_a_rare_shared_pair_links_where_a_common_one_does_not():
    """Sharing two guides that few cells show is beyond chance; sharing two that half the cells show is not."""
    rng = np.random.default_rng(0)
    n = 400
    background = [list(rng.choice(np.arange(100, 160), 3, replace=False)) for _ in range(n)]
    rows = background + [[1, 2, 7], [1, 2, 8]]  # guides 1 and 2 only in these two cells
    c = clones_from_guides(_sets(rows), np.zeros(len(rows), dtype=np.int64), chance_links=0.3).cluster
    assert c[-1] == c[-2]
    common = [[1, 2] + r[:1] if i % 2 else r for i, r in enumerate(background)]  # half the cells show 1 and 2
    rows = common + [[1, 2, 7], [1, 2, 8]]
    c = clones_from_guides(_sets(rows), np.zeros(len(rows), dtype=np.int64), chance_links=0.3).cluster
    assert c[-1] != c[-2]


def test_clones_survive_dropout_and_do_not_percolate_without_clones():
    """Sister cells that show different subsets of their clone's guides are found; independent cells stay apart."""
    cfg = make_config(dict(sim_n_cells=3000, sim_n_genes=40, sim_n_guides=240, sim_kmax=9, sim_clone_size_mean=8.0,
                           sim_clone_bias_sd=0.5, sim_guide_detection=0.7, sim_write_clone_labels=False, sim_seed=2))
    sim = simulate_experiment(cfg)
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    kept = pd.Index(sim.adata.obs_names).get_indexer(exp.cells.cell_names)
    precision, recall = pair_agreement(sim.params.clone[kept], exp.cells.clusters())
    assert precision > 0.9 and recall > 0.8
    # Identical sets alone would find a small share of the sister pairs.
    g = exp.guides
    assert exp.summary.clones["guide_detection"] < 0.9
    independent = make_config(dict(sim_n_cells=3000, sim_n_genes=40, sim_n_guides=240, sim_kmax=9, sim_seed=2))
    sim2 = simulate_experiment(independent)
    exp2 = load_experiment(independent, verbose=False, adata=sim2.adata, guide_map=sim2.guide_map)
    assert np.bincount(exp2.cells.clusters()).max() <= 5  # no giant cluster of unrelated cells
    assert g.guide_ids.shape[0] == exp.n_cells


def test_cells_that_cannot_be_placed_are_dropped_and_listed():
    cfg = make_config(dict(sim_n_cells=2000, sim_n_genes=40, sim_n_guides=240, sim_kmax=9, sim_clone_size_mean=6.0,
                           sim_guide_detection=0.6, sim_write_clone_labels=False, sim_seed=3))
    sim = simulate_experiment(cfg)
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    detected = (sim.adata.obsm["guide_assignment"] > 0).sum(axis=1).A1
    dropped = exp.dropped_cells
    unplaced = dropped[dropped["reason"].str.contains("clone unknown")]
    assert len(unplaced) == int((detected < 2).sum()) > 0
    assert set(unplaced["cell"]) == set(sim.adata.obs_names[detected < 2])
    kept = make_config(dict(cfg.model_dump(), drop_unplaced_cells=False))
    assert load_experiment(kept, verbose=False, adata=sim.adata, guide_map=sim.guide_map).n_cells == 2000


def test_clone_labels_are_the_clones():
    c = clones_from_labels(np.array(["b", "a", "b", "c"]), "obs['clone']")
    assert c.cluster.tolist() == [0, 1, 0, 2] and c.source == "labels"


def test_a_clone_shares_its_detected_guides():
    # Two cells of one clone (cluster 0) that missed different guides, one NTC each; a
    # third cell in a clone of its own.
    guide_ids = np.array([[1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]])
    mask = np.array([[True, True, False, False], [True, False, False, False], [True, False, False, False]])
    ntc = np.array([[4], [0], [0]])
    cluster = np.array([0, 0, 1])
    ids, m, nt, burden, changed = impute_clone_guides(guide_ids, mask, ntc, cluster, kmax=4)
    assert changed == 2
    assert sorted(ids[0][m[0]].tolist()) == [0, 1, 2] and sorted(ids[1][m[1]].tolist()) == [0, 1, 2]  # 0: the NTC slot
    assert nt[0].tolist() == [4] and nt[1].tolist() == [4]
    assert burden.tolist() == [3, 3, 1]
    assert ids[2].tolist() == [3, 0, 0, 0]
    # A union wider than kmax is more likely two clones than one: left as it is.
    ids2, _, _, _, changed2 = impute_clone_guides(guide_ids, mask, ntc, cluster, kmax=2)
    assert changed2 == 0 and (ids2 == guide_ids).all()


def test_detection_rate_of_sister_cells():
    rng = np.random.default_rng(1)
    clone_sets = rng.choice(np.arange(1, 5000), size=(300, 6), replace=False)
    clone = np.repeat(np.arange(300), rng.integers(2, 9, size=300))
    shown = np.where(rng.random((clone.size, 6)) < 0.7, clone_sets[clone], 0)
    assert detection_rate(shown, clone) == pytest.approx(0.7, abs=0.03)
    assert detection_rate(clone_sets[clone], clone) == 1.0  # every sister shows every guide
    assert np.isnan(detection_rate(shown, np.arange(clone.size)))


def test_no_dropout_no_clones_drops_no_cell():
    cfg = make_config(dict(sim_n_cells=600, sim_n_genes=10, sim_n_guides=40, sim_kmax=5, sim_seed=0))
    sim = simulate_experiment(cfg)
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    assert exp.n_cells == 600


def test_adjusted_rand_index_known_values():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, a) == pytest.approx(1.0)
    assert adjusted_rand_index(a, np.array([5, 5, 7, 7, 9, 9])) == pytest.approx(1.0)
    # sklearn's value for this pair: 0.2424...
    assert adjusted_rand_index(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 2])) == pytest.approx(0.24242424, abs=1e-6)
