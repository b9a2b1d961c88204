"""Guides as labs have them (issue 25): Cell Ranger calls, 10x .h5, .h5mu, counts in the AnnData.

One small simulated experiment is written in every form (tests/guide_forms.py); each
source must give the experiment the obsm matrix gives. Bad input must give one line
naming the file and the rows, exit code 2 and no output.
"""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from fatebias_core import cli
from fatebias_core.config import load_config, make_config
from fatebias_core.data import assignment as assignment_module
from fatebias_core.data.barcodes import match_barcodes
from fatebias_core.data.guide_qc import guide_qc, per_guide_table, truncated_poisson_detection
from fatebias_core.data.load import load_experiment
from fatebias_core.data.simulate import simulate_experiment
from fatebias_core.errors import ConfigError, InputDataError
from fatebias_core.io import layout as names
from fatebias_core.io.layout import RunLayout
from fatebias_core.pipeline.steps import load_step
from tests import guide_forms as gf

SIM = dict(sim_n_cells=1200, sim_n_genes=8, sim_n_guides=24, sim_n_ntc_guides=4, sim_kmax=4, sim_seed=5)
UMI1 = {"assign_method": "umi", "assign_params": {"thresholds": [1]}}


class Forms:
    """The experiment's files, and a config maker for each form."""

    def __init__(self, folder: Path) -> None:
        sim = simulate_experiment(make_config(**SIM))
        adata = sim.adata
        self.plain, self.rep = gf.name_cells(adata)
        self.adata = adata
        self.folder = folder
        self.counts, self.guides = gf.counts_of(adata)
        adata.write_h5ad(folder / "adata.h5ad")
        sim.guide_map.to_csv(folder / "guide_map.csv", index=False)
        self.guide_map = sim.guide_map
        self.csvs, self.h5s = [], []
        for r in np.unique(self.rep):
            rows = np.flatnonzero(self.rep == r)
            self.csvs.append(str(gf.write_calls_csv(folder / f"calls_{r}.csv", self.counts[rows], self.guides, self.plain[rows])))
            self.h5s.append(str(gf.write_10x_h5(folder / f"{r}.h5", self.counts[rows], self.guides, self.plain[rows])))
        gf.write_h5mu(folder / "experiment.h5mu", adata)
        gf.with_counts_layer(adata).write_h5ad(folder / "adata_layer.h5ad")

    def config(self, out: str = "out", **settings):
        base = {"adata_path": str(self.folder / "adata.h5ad"), "guide_map_csv": str(self.folder / "guide_map.csv"),
                "out_dir": str(self.folder / out)}
        return make_config({**base, **settings})

    def write_config(self, path: Path, **settings) -> Path:
        path.write_text(yaml.safe_dump({**self.config().model_dump(mode="json"), **settings}))
        return path


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> Forms:
    return Forms(tmp_path_factory.mktemp("forms"))


@pytest.fixture(scope="module")
def reference(forms: Forms):
    return load_experiment(forms.config(), verbose=False)


def assert_same_experiment(a, b) -> None:
    """The same cells, guide lists (targeting and NTC by name), clones and fate probabilities."""
    np.testing.assert_array_equal(a.cells.cell_names, b.cells.cell_names)
    np.testing.assert_array_equal(a.guides.guide_ids, b.guides.guide_ids)
    np.testing.assert_array_equal(a.guides.mask, b.guides.mask)
    assert a.guides.guide_names == b.guides.guide_names and a.guides.gene_names == b.guides.gene_names

    def ntc_sets(e) -> list[frozenset]:
        names_ = np.asarray(("",) + tuple(e.guides.ntc_names), dtype=object)
        return [frozenset(names_[row[row > 0]]) for row in e.guides.ntc_ids]

    assert ntc_sets(a) == ntc_sets(b)
    np.testing.assert_array_equal(a.cells.cluster, b.cells.cluster)
    np.testing.assert_array_equal(a.cells.fate_probs, b.cells.fate_probs)


# --------------------------------------------------------------------------- every source, the same experiment
def test_protospacer_calls_give_the_obsm_experiment(forms: Forms, reference) -> None:
    exp = load_experiment(forms.config(guide_source="cellranger_calls", guide_files=forms.csvs), verbose=False)
    assert_same_experiment(reference, exp)
    info = exp.summary.guide_input
    # cells are named <barcode>-1-<k>: each run's barcodes match with the suffix of its replicate
    assert [f["how"] for f in info["files"]] == [{"suffix '-0' added": 600}, {"suffix '-1' added": 600}]
    assert info["cells_not_in_files"] == 0 and info["qc"]["cells_without_guides"] == 0
    assert exp.guide_files is not None and "assignment" not in info


def test_10x_h5_gives_the_obsm_experiment(forms: Forms, reference) -> None:
    pytest.importorskip("crispat")
    exp = load_experiment(forms.config(guide_source="cellranger_h5", guide_files=forms.h5s, **UMI1), verbose=False)
    assert_same_experiment(reference, exp)
    assert exp.summary.guide_input["assignment"]["library"].startswith("crispat ")


def test_h5mu_gives_the_obsm_experiment_from_file_and_memory(forms: Forms, reference) -> None:
    pytest.importorskip("crispat")
    import mudata as md

    h5mu = str(forms.folder / "experiment.h5mu")
    from_file = load_experiment(forms.config(adata_path=h5mu, guide_source="mudata", **UMI1), verbose=False)
    assert_same_experiment(reference, from_file)
    assert from_file.summary.source.endswith("modality 'rna'")
    beside = load_experiment(forms.config(guide_source="mudata", guide_files=[h5mu], **UMI1), verbose=False)
    assert_same_experiment(reference, beside)
    in_memory = load_experiment(
        forms.config(guide_source="mudata", **UMI1), verbose=False, adata=md.read_h5mu(h5mu), guide_map=forms.guide_map
    )
    assert_same_experiment(reference, in_memory)


def test_counts_in_the_anndata_give_the_obsm_experiment(forms: Forms, reference) -> None:
    pytest.importorskip("crispat")
    obsm = load_experiment(forms.config(guide_source="obsm_counts", **UMI1), verbose=False)
    assert_same_experiment(reference, obsm)
    layer = load_experiment(
        forms.config(adata_path=str(forms.folder / "adata_layer.h5ad"), guide_source="layer", guide_layer="counts", **UMI1),
        verbose=False,
    )
    assert_same_experiment(reference, layer)


def test_default_assignment_keeps_only_true_guides_and_every_guide_above_its_threshold(forms: Forms) -> None:
    """gauss (crispat's per-guide mixture, the default) on counts without background: no false guide, and the
    true guides it leaves out are exactly those whose UMIs are below their guide's threshold."""
    pytest.importorskip("crispat")
    cfg = forms.config(out="gauss", guide_source="mudata", guide_files=[str(forms.folder / "experiment.h5mu")])
    assert cfg.assign_method == "gauss"
    exp = load_experiment(cfg, verbose=False)
    files = exp.guide_files
    truth = forms.counts.copy()
    truth.data[:] = 1.0
    assigned = files.detected.astype(bool).astype(np.float32)
    assert (assigned - assigned.multiply(truth)).nnz == 0  # nothing assigned that the cell does not carry
    recall = assigned.multiply(truth).sum() / truth.sum()
    assert 0.7 < recall <= 1.0
    # per guide and replicate, everything at or above the threshold is assigned
    thresholds = files.per_guide.set_index(["guide", "batch"])["threshold"]
    coo = forms.counts.tocoo()
    thr = thresholds.reindex(pd.MultiIndex.from_arrays([np.asarray(forms.guides)[coo.col], forms.rep[coo.row]])).to_numpy()
    above = coo.data >= thr
    got = np.asarray(files.detected[coo.row, coo.col]).ravel() > 0
    np.testing.assert_array_equal(got, above)


# --------------------------------------------------------------------------- written beside the run, reused
def test_assignment_is_written_beside_the_run_and_reused(forms: Forms, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("crispat")
    cfg = forms.config(out="run", guide_source="cellranger_h5", guide_files=forms.h5s, **UMI1)
    first = load_step(cfg, verbose=False)
    out = Path(cfg.out_dir)
    written = ad.read_h5ad(out / names.GUIDE_ASSIGNMENT)
    assert list(written.var_names) == first.guide_files.guides
    np.testing.assert_array_equal(written.X.toarray(), first.guide_files.detected.toarray())
    np.testing.assert_array_equal(written.layers["counts"].toarray(), first.guide_files.counts.toarray())
    table = pd.read_csv(out / names.GUIDE_THRESHOLDS)
    assert {"guide", "batch", "threshold", "cells_assigned", "detection_estimate"} <= set(table.columns)
    assert len(table) == len(first.guide_files.guides) * 2
    assert all(p.exists() for p in RunLayout.of(cfg).load_files())

    def no_crispat():
        raise AssertionError("crispat was run although the assignment is in the run folder")

    monkeypatch.setattr(assignment_module, "_crispat", no_crispat)
    again = load_experiment(cfg, verbose=False)
    assert again.summary.guide_input["assignment"]["reused"] is True
    assert_same_experiment(first, again)
    with pytest.raises(AssertionError, match="crispat was run"):  # other settings: not the same assignment
        load_experiment(cfg.model_copy(update={"assign_params": {"thresholds": [2]}}), verbose=False)


def test_check_prints_the_assignment_qc_and_writes_nothing(forms: Forms, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = forms.write_config(tmp_path / "c.yaml", guide_source="cellranger_calls", guide_files=forms.csvs,
                             out_dir=str(tmp_path / "out"))
    assert cli.main(["check", "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    for part in ("guides from: cellranger_calls", "guides per cell (MOI)", "cells per guide", "NTC:", "UMIs of detected guides",
                 "thresholds (smallest called count", "detection (truncated Poisson"):
        assert part in text
    assert not (tmp_path / "out").exists()


def test_missing_crispat_names_the_extra(forms: Forms, monkeypatch: pytest.MonkeyPatch) -> None:
    real = assignment_module.importlib.import_module

    def fake(name: str, *args):
        if name == "crispat":
            raise ImportError("No module named 'crispat'")
        return real(name, *args)

    monkeypatch.setattr(assignment_module.importlib, "import_module", fake)
    with pytest.raises(ConfigError, match=r'pip install "fatebias\[assign\]"'):
        load_experiment(forms.config(out="nocrispat", guide_source="obsm_counts", **UMI1), verbose=False)


def test_assign_params_are_checked_against_the_method(forms: Forms) -> None:
    pytest.importorskip("crispat")
    with pytest.raises(ConfigError, match="ga_umi .* has no argument n_iter"):
        load_experiment(forms.config(out="p", guide_source="obsm_counts", assign_method="umi",
                                     assign_params={"thresholds": [1], "n_iter": 3}), verbose=False)
    with pytest.raises(ConfigError, match="takes exactly one threshold"):
        load_experiment(forms.config(out="p", guide_source="obsm_counts", assign_method="umi",
                                     assign_params={"thresholds": [1, 2]}), verbose=False)
    with pytest.raises(ConfigError, match="output_dir are set by fatebias"):
        load_experiment(forms.config(out="p", guide_source="obsm_counts", assign_params={"output_dir": "x"}), verbose=False)


# --------------------------------------------------------------------------- bad input: one line, exit 2, nothing written
def _bad_csv(forms: Forms, folder: Path, edit) -> str:
    table = pd.read_csv(forms.csvs[0], dtype=str, keep_default_na=False)
    table = edit(table)
    path = folder / "protospacer_calls_per_cell.csv"
    table.to_csv(path, index=False)
    return str(path)


def _set(row: int, col: str, value: str):
    def edit(t: pd.DataFrame) -> pd.DataFrame:
        t.loc[row, col] = value
        return t

    return edit


def _append(row: int, col: str, text: str):
    def edit(t: pd.DataFrame) -> pd.DataFrame:
        t.loc[row, col] = t.loc[row, col] + text
        return t

    return edit


def _whole(row: int):
    def edit(t: pd.DataFrame) -> pd.DataFrame:
        umis = t.loc[row, "num_umis"].split("|")
        t.loc[row, "num_umis"] = "|".join(["2.5", *umis[1:]])
        return t

    return edit


BAD_CSVS = [
    ("missing column", lambda t: t.drop(columns="num_umis"), "missing column 'num_umis'"),
    ("more UMIs than calls", _append(3, "num_umis", "|5"), "do not list the same number of guides (lines 5)"),
    ("num_features off", _set(4, "num_features", "9"), "(lines 6)"),
    ("UMIs not whole", _whole(2), "UMIs that are not whole numbers (e.g. '2.5'; lines 4)"),
    ("empty barcode", _set(7, "cell_barcode", ""), "without a barcode or a guide call (lines 9)"),
    ("barcode twice", lambda t: pd.concat([t, t.iloc[[5]]], ignore_index=True), "cell barcodes repeat"),
    ("guide called twice", lambda t: _twice(t, 6), "call the same guide twice (duplicate guide names; lines 8)"),
]


def _twice(t: pd.DataFrame, row: int) -> pd.DataFrame:
    first = t.loc[row, "feature_call"].split("|")[0]
    t.loc[row, "feature_call"] = f"{first}|{first}"
    t.loc[row, "num_umis"] = "3|4"
    t.loc[row, "num_features"] = "2"
    return t


@pytest.mark.parametrize(("edit", "message"), [b[1:] for b in BAD_CSVS], ids=[b[0] for b in BAD_CSVS])
def test_malformed_calls_csv_is_one_line_naming_file_and_rows(
    forms: Forms, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, message: str
) -> None:
    path = _bad_csv(forms, tmp_path, edit)
    cfg = forms.write_config(tmp_path / "c.yaml", guide_source="cellranger_calls", guide_files=[path], out_dir=str(tmp_path / "out"))
    assert cli.main(["assign", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fatebias assign: error: ")
    assert path in err[0] and message in err[0]
    assert not (tmp_path / "out").exists()


def test_unmatched_barcodes_stop_with_examples(forms: Forms, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad_csv(forms, tmp_path, lambda t: t.assign(cell_barcode="cell_" + t["cell_barcode"].str.lower()))
    cfg = forms.write_config(tmp_path / "c.yaml", guide_source="cellranger_calls", guide_files=[path], out_dir=str(tmp_path / "out"))
    assert cli.main(["check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "only 0 of 1200 cells" in err[0] and "guide_min_matched=0.5" in err[0] and "unmatched barcodes e.g. cell_" in err[0]


def test_half_the_cells_in_one_file_is_reported_not_dropped(forms: Forms) -> None:
    exp = load_experiment(forms.config(guide_source="cellranger_calls", guide_files=forms.csvs[:1]), verbose=False)
    info = exp.summary.guide_input
    assert info["cells_in_files"] == 600 and info["cells_not_in_files"] == 600
    assert exp.n_cells == 1200  # the others are kept, without guides
    assert info["qc"]["cells_without_guides"] == 600
    assert "600 cells of the AnnData are in no guide file" in exp.summary.format()


def test_duplicate_guide_names_in_a_10x_h5_name_the_features(forms: Forms, tmp_path: Path) -> None:
    path = tmp_path / "dup.h5"
    guides = list(forms.guides)
    guides[3] = guides[1]
    rows = np.flatnonzero(forms.rep == "rep1")
    gf.write_10x_h5(path, forms.counts[rows], guides, forms.plain[rows])
    with pytest.raises(InputDataError, match=rf"{re.escape(str(path))}.*duplicate guide names: '{guides[1]}' at features 6, 8 of matrix/features"):
        load_experiment(forms.config(guide_source="cellranger_h5", guide_files=[str(path)], **UMI1), verbose=False)


@pytest.mark.filterwarnings("ignore:.*names are not unique")
def test_duplicate_guide_names_in_an_h5mu_name_the_rows(forms: Forms, tmp_path: Path) -> None:
    import mudata as md

    guides = list(forms.guides)
    guides[2] = guides[0]
    mod = gf.guide_modality(forms.counts, guides, np.asarray(forms.adata.obs_names))
    mod.var_names = pd.Index(guides)  # anndata would make them unique on construction from a DataFrame
    path = tmp_path / "dup.h5mu"
    md.MuData({"rna": gf.rna_only(forms.adata), "crispr": mod}).write(path)
    with pytest.raises(InputDataError, match=rf"modality 'crispr' X: guide names repeat .*'{guides[0]}' at var rows 1, 3"):
        load_experiment(forms.config(adata_path=str(path), guide_source="mudata", **UMI1), verbose=False)


def test_guides_without_counts_are_an_error_or_dropped_when_asked(forms: Forms, tmp_path: Path) -> None:
    counts = forms.counts.tolil()
    counts[:, 5] = 0
    path = tmp_path / "empty.h5mu"
    import mudata as md

    mdata = md.MuData({"rna": gf.rna_only(forms.adata),
                       "gdo": gf.guide_modality(sp.csr_matrix(counts), forms.guides, np.asarray(forms.adata.obs_names))})
    mdata.write(path)
    cfg = forms.config(out="empty", adata_path=str(path), guide_source="mudata", **UMI1)
    with pytest.raises(InputDataError, match=rf"{re.escape(str(path))} modality 'gdo' X: 1 guides have no UMI .*{forms.guides[5]}; guide columns 6"):
        load_experiment(cfg, verbose=False)
    pytest.importorskip("crispat")
    exp = load_experiment(cfg.model_copy(update={"drop_empty_guides": True}), verbose=False)
    assert exp.summary.guide_input["empty_guides_dropped"] == [forms.guides[5]]
    assert forms.guides[5] in exp.summary.map_guides_absent


def test_no_guide_modality_lists_the_modalities(forms: Forms, tmp_path: Path) -> None:
    import mudata as md

    path = tmp_path / "nogdo.h5mu"
    md.MuData({"rna": gf.rna_only(forms.adata), "adt": gf.guide_modality(forms.counts, forms.guides, np.asarray(forms.adata.obs_names))}).write(path)
    with pytest.raises(InputDataError, match="none of the modalities adt, rna is a guide modality .* name it with guide_modality"):
        load_experiment(forms.config(adata_path=str(path), guide_source="mudata"), verbose=False)
    with pytest.raises(InputDataError, match="no modality 'gdo' \\(guide_modality\\)"):
        load_experiment(forms.config(adata_path=str(path), guide_source="mudata", guide_modality="gdo"), verbose=False)


def test_10x_h5_without_guide_features_lists_the_types(forms: Forms, tmp_path: Path) -> None:
    path = Path(forms.h5s[0])
    with pytest.raises(InputDataError, match="no feature of type 'Antibody Capture' .* Gene Expression, CRISPR Guide Capture"):
        load_experiment(forms.config(guide_source="cellranger_h5", guide_files=[str(path)], guide_feature_type="Antibody Capture"),
                        verbose=False)
    other = tmp_path / "not10x.h5"
    with h5py.File(other, "w") as h5:
        h5["x"] = [1]
    with pytest.raises(InputDataError, match="no matrix/features group"):
        load_experiment(forms.config(guide_source="cellranger_h5", guide_files=[str(other)]), verbose=False)


# --------------------------------------------------------------------------- settings
def test_guide_files_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("guide_source: cellranger_calls\nguide_files: crispr/calls.csv\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.guide_files == [str((tmp_path / "crispr" / "calls.csv").resolve())]
    assert cfg.input_paths() == cfg.guide_files
    with pytest.raises(ConfigError, match="guide_source cellranger_h5 needs guide_files"):
        make_config(guide_source="cellranger_h5")
    with pytest.raises(ConfigError, match="guide_files is set but guide_source is 'obsm'"):
        make_config(guide_files=["a.csv"])


# --------------------------------------------------------------------------- barcode matching
def test_barcodes_match_exactly_then_by_prefix_and_suffix_rules() -> None:
    core = gf.barcodes(6, seed=1, shared=0.0)
    cells = np.concatenate([["rep1_" + c + "-1" for c in core[:3]], ["rep2_" + c + "-1" for c in core[3:]]])
    files = np.asarray([c + "-1" for c in core[:3]], dtype=object)
    m = match_barcodes(files, cells, "f")
    assert m.rows.tolist() == [0, 1, 2] and m.how == {"prefix 'rep1_' added": 3}
    back = match_barcodes(np.asarray(["x_" + c for c in core[:2]], dtype=object), np.asarray(core), "f")
    assert back.rows.tolist() == [0, 1] and back.how == {"prefix 'x_' removed": 2}


def test_a_barcode_shared_by_two_samples_is_not_matched_by_chance() -> None:
    """Sample 2's file against an AnnData of both samples: its one barcode shared with sample 1 goes to sample 2."""
    core = gf.barcodes(40, seed=2, shared=0.0)
    s1, s2 = core[:20], core[20:].copy()
    s2[0] = s1[0]  # the same barcode in both runs
    cells = np.concatenate([s1 + "-1-0", s2[:15] + "-1-1"])  # five of sample 2's cells were filtered out
    m = match_barcodes(s2 + "-1", cells, "f")
    assert m.how == {"suffix '-1' added": 15}
    assert m.rows[:15].tolist() == list(range(20, 35)) and (m.rows[15:] == -1).all()


def test_a_cell_in_two_guide_files_is_an_error(forms: Forms) -> None:
    with pytest.raises(InputDataError, match="match cells already matched by another guide file; one file per sample"):
        load_experiment(forms.config(guide_source="cellranger_calls", guide_files=[forms.csvs[0], forms.csvs[0]]), verbose=False)


# --------------------------------------------------------------------------- QC numbers
def test_truncated_poisson_detection_recovers_the_share_above_the_threshold() -> None:
    from scipy.stats import poisson

    rng = np.random.default_rng(0)
    for lam, t in ((3.0, 1), (3.0, 2), (6.0, 4), (1.5, 1)):
        x = rng.poisson(lam, 400_000)
        above = x[x >= t]
        est = truncated_poisson_detection(np.array([above.mean()]), np.array([float(t)]))[0]
        assert abs(est - poisson.sf(t - 1, lam)) < 0.01
    assert np.isnan(truncated_poisson_detection(np.array([np.nan, 2.0]), np.array([1.0, 0.0]))).all()


def test_per_guide_table_and_qc_match_a_plain_computation() -> None:
    rng = np.random.default_rng(3)
    n, j = 300, 7
    counts = sp.random(n, j, density=0.4, format="csr", random_state=rng, data_rvs=lambda k: rng.integers(1, 12, k)).astype(np.float32)
    detected = counts.copy()
    detected.data = (counts.data >= 3).astype(np.float32)
    detected.eliminate_zeros()
    batches = np.where(np.arange(n) < 120, "b1", "b2")
    guides = [f"g{k}" for k in range(j)]
    is_ntc = np.arange(j) >= 5
    table = per_guide_table(detected, counts, guides, batches, is_ntc).set_index(["guide", "batch"])
    coo = counts.tocoo()
    long = pd.DataFrame({"guide": np.asarray(guides)[coo.col], "batch": batches[coo.row], "umi": coo.data, "assigned": coo.data >= 3})
    ref = long[long.assigned].groupby(["guide", "batch"])["umi"]
    pd.testing.assert_series_equal(table["threshold"], ref.min().rename("threshold").astype(float), check_names=False)
    pd.testing.assert_series_equal(table["umi_median_assigned"], ref.median().rename("umi_median_assigned").astype(float), check_names=False)
    pd.testing.assert_series_equal(table["cells_assigned"], ref.size().rename("cells_assigned"), check_names=False, check_dtype=False)
    unassigned = long[~long.assigned].groupby(["guide", "batch"])["umi"].median()
    np.testing.assert_allclose(table["umi_median_unassigned"].reindex(unassigned.index), unassigned)
    qc = guide_qc(detected, counts, table.reset_index(), is_ntc, "smallest assigned count")
    moi = np.asarray((detected > 0).sum(axis=1)).ravel()
    assert qc["guides_per_cell"]["mean"] == round(moi.mean(), 3) and qc["cells_without_guides"] == int((moi == 0).sum())
    ntc = np.asarray((detected[:, 5:] > 0).sum(axis=1)).ravel()
    assert qc["ntc"]["share_of_detected"] == round(ntc.sum() / detected.nnz, 4)
    assert qc["ntc"]["share_of_cells"] == round((ntc > 0).mean(), 4)
    assert qc["thresholds"]["min"] == 3 and qc["umis"]["unassigned_median"] == float(np.median(coo.data[coo.data < 3]))


def test_the_report_shows_the_guide_input(forms: Forms) -> None:
    from fatebias_core.report.context import guide_input_rows

    exp = load_experiment(forms.config(guide_source="cellranger_calls", guide_files=forms.csvs), verbose=False)
    rows = dict(guide_input_rows(exp.summary.guide_input))
    assert rows["guides from"] == "cellranger_calls"
    assert rows["guide file"].endswith("600 of 600 barcodes matched (suffix '-1' added 600)")
    assert rows["guides per cell (MOI)"].startswith("mean ") and "NTC" in rows
    assert rows["thresholds (smallest called count, per guide and batch)"].startswith("median 1")
