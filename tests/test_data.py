"""Loading: input layouts, validation errors, the guide embedding, filtering (docs/method.md, "Inputs" and "Data")."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fatebias_core import cli
from fatebias_core.config import load_config, make_config
from fatebias_core.data.load import embed_guides, load_experiment, order_labels
from fatebias_core.errors import ConfigError, InputDataError

from .conftest import FATES, GUIDE_MAP, MATRIX_GUIDES, SmallInputs, make_inputs

CFG = make_config()


def load(inputs: SmallInputs, **settings) -> object:
    return load_experiment(
        make_config(**settings), verbose=False, adata=inputs.adata, guide_map=inputs.guide_map
    )


def loop_embedding(detect: np.ndarray, names: tuple[str, ...], gmap: pd.DataFrame, kmax: int):
    """The embedding written the slow, obvious way, for comparison."""
    targeting = gmap[gmap.is_ntc == 0].sort_values(["gene_name", "guide_name"])
    ids = {g: i + 1 for i, g in enumerate(targeting.guide_name)}
    ids.update({g: 0 for g in gmap.guide_name[gmap.is_ntc == 1]})
    rows, kept = [], []
    for i in range(detect.shape[0]):
        cell = sorted(
            ids[names[j]] for j in range(detect.shape[1]) if detect[i, j] and names[j] in ids
        )
        if len(cell) <= kmax:
            rows.append(cell)
            kept.append(i)
    width = max(max((len(r) for r in rows), default=0), 1)
    guide_ids = np.zeros((len(rows), width), dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for r, cell in enumerate(rows):
        guide_ids[r, : len(cell)] = cell
        mask[r, : len(cell)] = True
    return guide_ids, mask, np.asarray(kept)


# --------------------------------------------------------------------------- layouts
@pytest.mark.parametrize(
    ("layout", "origin"),
    [
        ("dataframe", "DataFrame columns"),
        ("uns", "uns['lineages_fwd_names']"),
        ("cellrank2", "obs['term_states_fwd'] categories"),
        ("lineage", "Lineage names"),
    ],
)
def test_fate_names_resolved_and_matched_by_name(layout: str, origin: str) -> None:
    inputs = make_inputs(fate_layout=layout)
    exp = load(inputs)
    assert exp.cells.fates == FATES
    assert exp.cells.fate_probs.dtype == np.float32
    np.testing.assert_allclose(exp.cells.fate_probs, inputs.probs, atol=1e-6)
    assert origin in exp.summary.fate_names_source


def test_cellrank2_layout_from_disk(tmp_path: Path) -> None:
    inputs = make_inputs(fate_layout="cellrank2")
    exp = load_experiment(load_config(inputs.write(tmp_path)), verbose=False)
    np.testing.assert_allclose(exp.cells.fate_probs, inputs.probs, atol=1e-6)
    assert "CellRank 2" in exp.summary.fate_names_source


def test_cellrank2_direction_generalises() -> None:
    inputs = make_inputs(fate_layout="cellrank2")
    a = inputs.adata
    a.obsm["lineages_bwd"] = a.obsm.pop("lineages_fwd")
    a.obs["term_states_bwd"] = a.obs.pop("term_states_fwd")
    exp = load(inputs, fate_prob_key="lineages_bwd")
    np.testing.assert_allclose(exp.cells.fate_probs, inputs.probs, atol=1e-6)


def test_no_fate_names_falls_back_to_configured_order_with_warning() -> None:
    inputs = make_inputs(fate_layout="none")
    with pytest.warns(UserWarning, match="assuming the configured order EC, MES, NEU"):
        exp = load(inputs)
    np.testing.assert_allclose(exp.cells.fate_probs, inputs.probs, atol=1e-6)
    assert exp.summary.fate_names_source.startswith("configured order")


@pytest.mark.parametrize("layout", ["dense", "dataframe"])
def test_guide_matrix_layouts_agree(layout: str) -> None:
    ref = load(make_inputs(guide_layout="sparse"))
    exp = load(make_inputs(guide_layout=layout))
    np.testing.assert_array_equal(exp.guides.guide_ids, ref.guides.guide_ids)
    np.testing.assert_array_equal(exp.guides.mask, ref.guides.mask)
    assert exp.guides.guide_names == ref.guides.guide_names


def test_sparse_dataframe_guide_matrix() -> None:
    inputs = make_inputs()
    dense = load(inputs)
    frame = pd.DataFrame(
        inputs.detect.astype(float), columns=list(MATRIX_GUIDES), index=inputs.adata.obs_names
    )
    inputs.adata.obsm["guide_assignment"] = frame.astype(pd.SparseDtype(float, 0.0))
    exp = load(inputs)
    np.testing.assert_array_equal(exp.guides.guide_ids, dense.guides.guide_ids)


def test_replicate_in_obsm_or_obs() -> None:
    a = load(make_inputs(rep_in="obsm"))
    b = load(make_inputs(rep_in="obs"))
    np.testing.assert_array_equal(a.cells.rep, b.cells.rep)
    assert a.cells.rep_labels == b.cells.rep_labels == ("rep1", "rep2")


def test_disk_and_memory_give_the_same_experiment(tmp_path: Path) -> None:
    inputs = make_inputs(fate_layout="uns", guide_layout="dense")
    mem = load(inputs)
    disk = load_experiment(load_config(inputs.write(tmp_path)), verbose=False)
    for field in ("fate_probs", "day", "rep", "burden", "burden_centered", "cell_names"):
        np.testing.assert_array_equal(getattr(mem.cells, field), getattr(disk.cells, field))
    np.testing.assert_array_equal(mem.guides.guide_ids, disk.guides.guide_ids)
    assert disk.summary.source.endswith("adata.h5ad")


# --------------------------------------------------------------------------- embedding
def test_embedding_matches_a_plain_loop() -> None:
    inputs = make_inputs(n_cells=80, detect_prob=0.5)
    exp = load(inputs, Kmax=4)
    ids, mask, kept = loop_embedding(inputs.detect, MATRIX_GUIDES, GUIDE_MAP, kmax=4)
    np.testing.assert_array_equal(exp.guides.guide_ids, ids)
    np.testing.assert_array_equal(exp.guides.mask, mask)
    np.testing.assert_array_equal(exp.cells.cell_names, np.asarray([f"c{i}" for i in kept]))
    assert exp.guides.guide_names == ("A_1", "A_2", "B_1", "B_2", "C_1")
    assert exp.guides.gene_names == ("A", "B", "C")
    np.testing.assert_array_equal(exp.guides.gene_of_guide, [0, 1, 1, 2, 2, 3])
    # NTCs are real entries with id 0; padding is id 0 with mask 0.
    assert (exp.guides.guide_ids[~exp.guides.mask] == 0).all()
    n_ntc = inputs.detect[kept][
        :, [MATRIX_GUIDES.index("NTC_1"), MATRIX_GUIDES.index("NTC_2")]
    ].sum()
    assert ((exp.guides.guide_ids == 0) & exp.guides.mask).sum() == n_ntc


def test_embed_guides_random_csr_against_loop() -> None:
    rng = np.random.default_rng(3)
    detect = rng.random((300, 25)) < 0.2
    column_ids = rng.integers(-1, 12, size=25)
    ids, mask, keep, burden = embed_guides(
        sp.csr_matrix(detect.astype(np.int8)), column_ids, kmax=5
    )
    for i_new, i in enumerate(np.flatnonzero(keep)):
        cell = sorted(column_ids[j] for j in np.flatnonzero(detect[i]) if column_ids[j] >= 0)
        assert list(ids[i_new, mask[i_new]]) == cell
        assert burden[i] == len(cell)
    assert ((burden > 5) == ~keep).all()
    assert ids.shape[1] == burden[keep].max()


def test_kmax_filter_counts_and_centred_burden() -> None:
    inputs = make_inputs(n_cells=90, detect_prob=0.5)
    burden_all = inputs.detect.sum(axis=1)  # every matrix guide is mapped
    exp = load(inputs, Kmax=3)
    n_drop = int((burden_all > 3).sum())
    assert exp.summary.dropped == {"cells with more than Kmax=3 guides": n_drop}
    assert exp.summary.n_cells_in == 90 and exp.n_cells == 90 - n_drop
    np.testing.assert_array_equal(exp.cells.burden, burden_all[burden_all <= 3])
    assert exp.cells.burden.max() <= 3 and exp.guides.kmax == exp.cells.burden.max()
    np.testing.assert_array_equal(exp.guides.mask.sum(axis=1), exp.cells.burden)
    day = exp.cells.day
    expected = exp.cells.burden - np.array([exp.cells.burden[day == d].mean() for d in day])
    np.testing.assert_allclose(exp.cells.burden_centered, expected, atol=1e-6)
    assert exp.cells.burden_centered.dtype == np.float32


def test_cells_without_guides_are_kept() -> None:
    inputs = make_inputs(n_cells=60, detect_prob=0.1)
    exp = load(inputs)
    assert exp.n_cells == 60
    assert (exp.cells.burden == 0).sum() == (inputs.detect.sum(axis=1) == 0).sum() > 0


def test_unmapped_guides_and_absent_map_rows_are_reported_and_ignored() -> None:
    inputs = make_inputs(n_cells=60, detect_prob=0.5)
    gmap = GUIDE_MAP[GUIDE_MAP.guide_name != "C_1"]
    gmap = pd.concat(
        [gmap, pd.DataFrame({"guide_name": ["D_1"], "gene_name": ["D"], "is_ntc": [0]})]
    )
    inputs.guide_map = gmap
    exp = load(inputs)
    assert exp.summary.unmapped_guides == ("C_1",)
    assert exp.summary.map_guides_absent == ("D_1",)
    assert "C_1" not in exp.guides.guide_names and exp.guides.gene_names == ("A", "B")
    expected = inputs.detect[:, [j for j, g in enumerate(MATRIX_GUIDES) if g != "C_1"]].sum(axis=1)
    np.testing.assert_array_equal(exp.cells.burden, expected)
    text = exp.summary.format()
    assert "1 guides in the matrix but not in the map (ignored): C_1" in text
    assert "1 map guides absent from the matrix: D_1" in text


def test_is_ntc_accepts_true_false() -> None:
    inputs = make_inputs()
    ref = load(inputs)
    inputs.guide_map = GUIDE_MAP.assign(is_ntc=GUIDE_MAP.is_ntc.map({0: "false", 1: "TRUE"}))
    exp = load(inputs)
    np.testing.assert_array_equal(exp.guides.guide_ids, ref.guides.guide_ids)
    assert exp.summary.n_ntc_guides == 2


def test_summary_is_complete_and_printed(capsys: pytest.CaptureFixture[str]) -> None:
    inputs = make_inputs(n_cells=60)
    exp = load_experiment(CFG, adata=inputs.adata, guide_map=inputs.guide_map)
    s = exp.summary
    assert s.n_guides_matrix == 7 and s.n_guides_mapped == 5 and s.n_ntc_guides == 2
    assert s.guides_per_gene == {"min": 1.0, "median": 2.0, "max": 2.0}
    burden = inputs.detect.sum(axis=1)
    assert s.guides_per_cell == pytest.approx(
        {"mean": burden.mean(), "median": np.median(burden), "max": burden.max()}, abs=1e-4
    )
    assert s.cells_per_day == {"d0": 20, "d1": 20, "d2": 20}
    out = capsys.readouterr().out
    assert out.strip() == s.format()
    assert "guides per cell: mean" in out
    load_experiment(CFG, verbose=False, adata=inputs.adata, guide_map=inputs.guide_map)
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- fate drift
def test_small_drift_is_renormalised() -> None:
    inputs = make_inputs(fate_layout="none", n_cells=30)
    probs = inputs.probs.copy()
    probs[:5] *= 1.00002  # drift beyond float32 rounding: counted as renormalised
    probs[5:8, 1] += probs[5:8, 0] + 1e-9  # a tiny negative entry: clipped, counted
    probs[5:8, 0] = -1e-9
    probs[8:10, 1] += 1e-9  # drift below float32 rounding: not counted
    inputs.adata.obsm["lineages_fwd"] = probs
    inputs.adata.uns["lineages_fwd_names"] = np.asarray(FATES, dtype=object)
    exp = load(inputs)
    assert exp.summary.n_renormalised == 8
    assert (exp.cells.fate_probs >= 0).all()
    np.testing.assert_allclose(exp.cells.fate_probs.sum(axis=1, dtype=np.float64), 1.0, atol=1e-6)


# --------------------------------------------------------------------------- labels
def test_days_ordered_by_the_number_in_the_label() -> None:
    inputs = make_inputs(days=("day10", "day2", "day0", "day1"), n_cells=40)
    exp = load(inputs)
    assert exp.cells.day_labels == ("day0", "day1", "day2", "day10")
    labels = np.asarray(exp.cells.day_labels)[exp.cells.day]
    np.testing.assert_array_equal(labels, inputs.day_labels)


def test_replicates_ordered_naturally() -> None:
    codes, labels = order_labels(
        pd.Series(["rep10", "rep2", "B", "rep1", "A"]), "reps", require_number=False
    )
    assert labels == ("rep1", "rep2", "rep10", "A", "B")
    np.testing.assert_array_equal(codes, [2, 1, 4, 0, 3])


# --------------------------------------------------------------------------- bad input
def _set(key: str, value):
    def mutate(inputs: SmallInputs) -> None:
        inputs.adata.obsm[key] = value(inputs) if callable(value) else value

    return mutate


def _probs(edit):
    def mutate(inputs: SmallInputs) -> None:
        p = inputs.adata.obsm["lineages_fwd"].to_numpy().copy()
        edit(p)
        inputs.adata.obsm["lineages_fwd"] = pd.DataFrame(
            p, columns=["NEU", "EC", "MES"], index=inputs.adata.obs_names
        )

    return mutate


def _gmap(edit):
    def mutate(inputs: SmallInputs) -> None:
        inputs.guide_map = edit(inputs.guide_map.copy())

    return mutate


def _obs(col: str, edit):
    def mutate(inputs: SmallInputs) -> None:
        edit(inputs.adata.obs, col)

    return mutate


def _nan(p: np.ndarray) -> None:
    p[[1, 4], 0] = np.nan


def _negative(p: np.ndarray) -> None:
    p[2, 0] = -0.2
    p[2, 1] += 0.2


def _far(p: np.ndarray) -> None:
    p[:3] *= 1.2


def _rename_day(obs: pd.DataFrame, col: str) -> None:
    obs[col] = obs[col].cat.rename_categories({"d1": "late"})


def _drop_names(inputs: SmallInputs) -> None:
    del inputs.adata.uns["guide_assignment_names"]


def _short_names(inputs: SmallInputs) -> None:
    inputs.adata.uns["guide_assignment_names"] = np.asarray(MATRIX_GUIDES[:-1], dtype=object)


def _rep_missing(inputs: SmallInputs) -> None:
    del inputs.adata.obsm["covariates"]


def _two_genes(g: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([g, pd.DataFrame({"guide_name": ["A_1"], "gene_name": ["Z"], "is_ntc": [0]})])


def _no_overlap(g: pd.DataFrame) -> pd.DataFrame:
    return g.assign(guide_name="x" + g.guide_name)


BAD_INPUTS = [
    # (id, mutation of the inputs, config settings, text the one-line error must contain)
    ("nan-rows", _probs(_nan), {}, "'lineages_fwd']: 2 of 48 rows contain NaN"),
    ("negative-rows", _probs(_negative), {}, "'lineages_fwd']: 1 of 48 rows have entries below"),
    ("rows-far-from-1", _probs(_far), {}, "'lineages_fwd']: 3 of 48 rows do not sum to 1"),
    (
        "missing-fate-key",
        lambda i: i.adata.obsm.pop("lineages_fwd"),
        {},
        "obsm key 'lineages_fwd' (fate_prob_key) not found; available obsm keys: covariates, guide_assignment",
    ),
    (
        "missing-guide-key",
        lambda i: i.adata.obsm.pop("guide_assignment"),
        {},
        "obsm key 'guide_assignment' (guide_key) not found",
    ),
    (
        "missing-day-key",
        lambda i: None,
        {"day_key": "timepoint"},
        "obs column 'timepoint' (day_key) not found; available obs columns: day",
    ),
    ("missing-replicate", _rep_missing, {}, "replicate column 'replicate' (rep_key) not found"),
    (
        "fate-absent",
        lambda i: None,
        {"fates": ["EC", "MES", "HEP"]},
        "configured fates HEP not in obsm['lineages_fwd']",
    ),
    (
        "extra-fate",
        lambda i: None,
        {"fates": ["EC", "MES"]},
        "has fates NEU that are not configured",
    ),
    (
        "map-missing-column",
        _gmap(lambda g: g.drop(columns="is_ntc")),
        {},
        "missing column 'is_ntc'",
    ),
    ("guide-two-genes", _gmap(_two_genes), {}, "guide 'A_1' is mapped to 2 genes (A, Z)"),
    ("no-overlap", _gmap(_no_overlap), {}, "no guide of the guide map is in"),
    (
        "map-bad-is-ntc",
        _gmap(lambda g: g.assign(is_ntc="maybe")),
        {},
        "column 'is_ntc' must be 0/1 or true/false",
    ),
    ("day-without-number", _obs("day", _rename_day), {}, "obs['day']: label 'late' has no number"),
    (
        "fewer-days",
        lambda i: None,
        {"D": 4},
        "obs['day'] has 3 levels (d0, d1, d2) but D = 4 is configured",
    ),
    (
        "fewer-replicates",
        lambda i: None,
        {"R": 3},
        "has 2 levels (rep1, rep2) but R = 3 is configured",
    ),
    (
        "guide-names-count",
        _short_names,
        {},
        "obsm['guide_assignment'] has 7 columns but 6 guide names",
    ),
    ("guide-names-missing", _drop_names, {}, "expected them in uns['guide_assignment_names']"),
    (
        "fate-shape",
        _set("lineages_fwd", lambda i: np.ones((48, 3, 2))),
        {},
        "obsm['lineages_fwd'] has shape (48, 3, 2), expected (48, n_fates)",
    ),
    (
        "guide-shape",
        _set("guide_assignment", lambda i: np.ones((48, 7, 2))),
        {},
        "obsm['guide_assignment'] has shape (48, 7, 2)",
    ),
]


def _bad(tmp_path: Path, mutate, settings: dict) -> Path:
    inputs = make_inputs(guide_layout="dense")
    mutate(inputs)
    return inputs.write(tmp_path / "in", **settings)


@pytest.mark.parametrize(
    ("mutate", "settings", "message"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_raises_one_line_error(
    tmp_path: Path, mutate, settings: dict, message: str
) -> None:
    config = load_config(_bad(tmp_path, mutate, settings))
    with pytest.raises(InputDataError) as err:
        load_experiment(config, verbose=False)
    text = str(err.value)
    assert "\n" not in text
    assert message in text


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [
        ("lineages_fwd", (10, 3), "obsm['lineages_fwd'] has shape (10, 3), expected (48, n_fates)"),
        (
            "guide_assignment",
            (47, 7),
            "obsm['guide_assignment'] has 47 rows but the AnnData has 48 cells",
        ),
    ],
)
def test_row_count_mismatch_in_file(
    tmp_path: Path, key: str, shape: tuple[int, int], message: str
) -> None:
    # AnnData refuses such objects in memory; a hand-edited file can still hold one.
    import h5py

    cfg_path = make_inputs(fate_layout="uns", guide_layout="dense").write(tmp_path)
    with h5py.File(tmp_path / "adata.h5ad", "r+") as f:
        attrs = dict(f["obsm"][key].attrs)
        del f["obsm"][key]
        f["obsm"].create_dataset(key, data=np.full(shape, 1.0 / 3))
        f["obsm"][key].attrs.update(attrs)
    with pytest.raises(InputDataError) as err:
        load_experiment(load_config(cfg_path), verbose=False)
    assert message in str(err.value)


def test_missing_files_are_named(tmp_path: Path) -> None:
    cfg_path = make_inputs().write(tmp_path)
    (tmp_path / "adata.h5ad").unlink()
    with pytest.raises(
        InputDataError, match=r"^adata_path: file not found: .*adata.h5ad$"
    ):
        load_experiment(load_config(cfg_path), verbose=False)
    cfg_path = make_inputs().write(tmp_path)
    (tmp_path / "guide_map.csv").unlink()
    with pytest.raises(
        InputDataError, match=r"^guide_map_csv: file not found: .*guide_map.csv$"
    ):
        load_experiment(load_config(cfg_path), verbose=False)
    (tmp_path / "adata.h5ad").write_text("not hdf5")
    with pytest.raises(InputDataError, match="not an HDF5"):
        load_experiment(load_config(cfg_path), verbose=False, guide_map=GUIDE_MAP)
    with pytest.raises(ConfigError, match="adata_path is not set"):
        load_experiment(make_config(), verbose=False, guide_map=GUIDE_MAP)


@pytest.fixture
def fit_loads_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fatebias fit`` with a pipeline that only loads: isolates the loader's errors."""

    def fit_and_export(cfg):
        load_experiment(cfg, verbose=False)
        raise AssertionError("bad input was accepted")

    module = types.ModuleType("fatebias_core.pipeline.chain")
    module.fit_and_export = fit_and_export
    monkeypatch.setitem(sys.modules, "fatebias_core.pipeline.chain", module)


@pytest.mark.parametrize(
    ("mutate", "settings", "message"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_cli_exits_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fit_loads_only: None,
    mutate,
    settings: dict,
    message: str,
) -> None:
    cfg_path = _bad(tmp_path, mutate, settings)
    out = tmp_path / "results"
    assert cli.main(["fit", "--config", str(cfg_path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fatebias fit: error: ")
    assert message in lines[0]
    assert not out.exists()


def test_unnamed_fate_columns_must_match_the_configured_count() -> None:
    inputs = make_inputs(fate_layout="none")
    with pytest.raises(InputDataError, match="has 3 unnamed columns but 2 fates are configured"):
        load(inputs, fates=["EC", "MES"])


def test_real_fit_command_rejects_bad_input_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("fatebias_core.pipeline.chain", reason="fatebias_core.pipeline.chain not present")
    cfg_path = _bad(tmp_path, _probs(_nan), {})
    out = tmp_path / "results"
    assert cli.main(["fit", "--config", str(cfg_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rows contain NaN" in err[0]
    assert not out.exists() or not any(out.iterdir())
