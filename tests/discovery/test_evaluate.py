"""Scoring calls against the truth (docs/method.md, "Simulation")."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from fatebias_core.cli import main
from fatebias_core.config import make_config
from fatebias_core.discovery.evaluate import (
    CONFUSION_COLUMNS,
    evaluate_files,
    score_calls,
    score_table,
)
from fatebias_core.errors import InputDataError

from .helpers import DATA

CFG = make_config()


def _hits(genes, active, hit, days=("d0", "d1")) -> pd.DataFrame:
    out = pd.DataFrame({"gene": genes, "active_days": active, "hit_anyday": hit})
    for d in days:
        out[f"plarge_{d}"] = 1.0
    return out


def _truth() -> pd.DataFrame:
    # truly active (|true| > 0.2): g1 d0, d1; g2 d1; g3 none (0.2 is not above); g4 none
    return pd.DataFrame(
        {"gene": ["g1", "g2", "g3", "g4"], "true_d0": [0.5, 0.0, 0.2, 0.0], "true_d1": [-0.3, 0.25, -0.2, 0.1]}
    )


def test_confusion_counts_by_hand():
    hits = _hits(["g1", "g2", "g3", "g4"], ["0", "0", "1", ""], [True, False, True, False])
    ev = score_calls(hits, _truth())
    c = ev.confusion.set_index("level")
    assert c.index.tolist() == ["d0", "d1", "overall", "anyday"]
    assert ev.confusion.columns.tolist() == list(CONFUSION_COLUMNS)
    # d0: called g1 g2, true g1 -> tp1 fp1 fn0 tn2
    assert c.loc["d0", ["tp", "fp", "fn", "tn"]].tolist() == [1, 1, 0, 2]
    # d1: called g3, true g1 g2 -> tp0 fp1 fn2 tn1
    assert c.loc["d1", ["tp", "fp", "fn", "tn"]].tolist() == [0, 1, 2, 1]
    assert c.loc["overall", ["tp", "fp", "fn", "tn"]].tolist() == [1, 2, 2, 3]
    # any day: hits g1 g3, true g1 g2 -> tp1 fp1 fn1 tn1
    assert c.loc["anyday", ["tp", "fp", "fn", "tn"]].tolist() == [1, 1, 1, 1]
    assert c.loc["d0", ["precision", "recall", "f1", "fpr"]].tolist() == pytest.approx([0.5, 1.0, 2 / 3, 1 / 3])
    assert c.loc["d1", "precision"] == 0 and c.loc["d1", "recall"] == 0 and c.loc["d1", "f1"] == 0
    assert c.loc["overall", ["precision", "recall", "fpr"]].tolist() == pytest.approx([1 / 3, 1 / 3, 0.4])
    s = ev.summary
    assert s["n_hits"] == 2 and s["hit_genes"] == ["g1", "g3"]
    assert s["anyday_precision"] == 0.5 and s["daywise_recall"] == pytest.approx(1 / 3)
    assert s["counts"]["n_true_active_gene_days"] == 3 and s["counts"]["n_called_gene_days"] == 3
    assert s["scores"]["d0"]["tp"] == 1 and isinstance(s["scores"]["d0"]["tp"], int)
    assert "any-day: precision 0.500" in ev.describe()


def test_truth_threshold_is_strict_and_configurable():
    hits = _hits(["g3"], ["0"], [True])
    truth = _truth().iloc[[2]]
    assert score_calls(hits, truth, 0.2).confusion.set_index("level").loc["d0", "fp"] == 1
    assert score_calls(hits, truth, 0.19).confusion.set_index("level").loc["d0", "tp"] == 1


def test_undefined_rates_are_nan_and_null_in_json(tmp_path):
    hits = _hits(["g1", "g2", "g3", "g4"], ["", "", "", ""], [False] * 4)
    ev = score_calls(hits, _truth().assign(true_d1=0.0))
    c = ev.confusion.set_index("level")
    assert np.isnan(c.loc["d0", "precision"])  # no calls
    assert np.isnan(c.loc["d1", "recall"]) and np.isnan(c.loc["d1", "precision"])  # nothing true, no calls
    assert np.isnan(c.loc["d1", "f1"]) and c.loc["d1", "fpr"] == 0
    assert ev.summary["anyday_precision"] is None and ev.summary["scores"]["d1"]["f1"] is None


def test_genes_missing_from_hits_count_as_not_called():
    hits = _hits(["g1", "other"], ["0,1", "0"], [True, True])
    ev = score_calls(hits, _truth())
    c = ev.confusion.set_index("level")
    # g2 is truly active on d1 but absent from the hits: a false negative
    assert c.loc["d1", ["tp", "fp", "fn", "tn"]].tolist() == [1, 0, 1, 2]
    assert c.loc["anyday", ["tp", "fp", "fn", "tn"]].tolist() == [1, 0, 1, 2]
    counts = ev.summary["counts"]
    assert counts["n_truth_genes_missing_from_hits"] == 3 and counts["n_hits_table_genes_not_in_truth"] == 1
    assert counts["n_genes_scored"] == 4 and counts["n_genes_shared"] == 1
    assert ev.summary["hit_genes"] == ["g1", "other"]


@pytest.mark.parametrize(
    ("hits", "message"),
    [
        (_hits(["x", "y"], ["0", ""], [True, False]), "(2 genes) and truth table (4 genes) share no gene"),
        (_hits(["g1"], ["0"], [True], days=("d0", "d1", "d2")), "has days [0, 1, 2] but truth table has days [0, 1]"),
        (_hits(["g1"], ["0,5"], [True]), "active_days names day '5'"),
        (_hits(["g1"], ["0"], ["maybe"]), "hit_anyday must be True/False"),
        (_hits(["g1", "g1"], ["0", "0"], [True, True]), "duplicated name"),
        (_hits(["g1"], ["0"], [True]).drop(columns=["plarge_d0", "plarge_d1"]), "no plarge_<day> columns"),
        (_hits(["g1"], ["0"], [True]).drop(columns=["active_days"]), "missing column(s) active_days"),
    ],
)
def test_bad_hits(hits, message):
    with pytest.raises(InputDataError) as exc:
        score_calls(hits, _truth())
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_bad_truth():
    hits = _hits(["g1"], ["0"], [True])
    with pytest.raises(InputDataError, match="true_<day>"):
        score_calls(hits, _truth().rename(columns={"true_d0": "d0", "true_d1": "d1"}))
    with pytest.raises(InputDataError, match="column true_d1 has missing"):
        score_calls(hits, _truth().assign(true_d1=[0.1, np.nan, 0.0, 0.0]))


def test_ash_hits_score_anyday_only():
    ash = pd.DataFrame(
        {"gene": ["g1", "g2", "g3"], "postmean": [0.5, 0.0, 0.4], "postsd": [0.1] * 3,
         "lfsr": [0.001, 0.5, 0.001], "qvalue": [0.01, 0.6, 0.01]}
    )
    ev = score_table(ash, _truth(), CFG, source="ash")
    assert ev.confusion["level"].tolist() == ["anyday"]
    # hits g1 g3; truly active g1 g2; g4 absent from the hits
    assert ev.confusion.loc[0, ["tp", "fp", "fn", "tn"]].tolist() == [1, 1, 1, 1]
    assert ev.summary["daywise_scored"] is False and ev.summary["daywise_precision"] is None
    assert ev.summary["call_settings"]["discovery_source"] == "gene"


def test_score_table_on_real_mash_output():
    table = pd.read_csv(DATA / "mash_gene_conservative_200x3.csv")
    truth = pd.read_csv(DATA / "truth_200x3.csv")
    ev = score_table(table, truth, CFG)
    c = ev.confusion.set_index("level")
    assert (c[["tp", "fp", "fn", "tn"]].sum(axis=1) == [200, 200, 200, 600, 200]).all()
    assert c.loc["overall", "tp"] == c.loc[["d0", "d1", "d2"], "tp"].sum()
    # independent count of true positives straight from the R table: a gene/day is called
    # when lfsr < 0.05 and P(|effect| >= 0.2) >= 0.9 under Normal(postmean, postsd)
    m = table[["postmean_d0", "postmean_d1", "postmean_d2"]].to_numpy()
    s = table[["postsd_d0", "postsd_d1", "postsd_d2"]].to_numpy()
    plarge = norm.sf((0.2 - m) / s) + norm.cdf((-0.2 - m) / s)
    called = (table[["lfsr_d0", "lfsr_d1", "lfsr_d2"]].to_numpy() < 0.05) & (plarge >= 0.9)
    true = truth.set_index("gene").loc[table["gene"]].abs().to_numpy() > 0.2
    assert c.loc["overall", "tp"] == int((called & true).sum())
    assert c.loc["overall", "fp"] == int((called & ~true).sum())
    assert c.loc["anyday", "recall"] > 0.5


def test_evaluate_files_and_cli(tmp_path, capsys):
    hits = tmp_path / "hits_ranked.csv"
    assert main(["rank", str(DATA / "mash_gene_conservative_200x3.csv"), str(hits)]) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", "--hits", str(hits), "--truth", str(DATA / "truth_200x3.csv"),
                 "--out", str(out), "--truth-thresh", "0.3"]) == 0
    assert "any-day: precision" in capsys.readouterr().out
    conf = pd.read_csv(out / "daywise_confusion.csv")
    assert conf.columns.tolist() == list(CONFUSION_COLUMNS)
    assert conf["level"].tolist() == ["d0", "d1", "d2", "overall", "anyday"]

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    summary = json.loads((out / "pred_call_summary.json").read_text(), parse_constant=no_nan)
    assert summary["truth_thresh"] == 0.3 and summary["hits_file"] == str(hits)
    assert summary["n_hits"] == len(summary["hit_genes"]) == int(pd.read_csv(hits)["hit_anyday"].sum())
    assert summary["anyday_recall"] == pytest.approx(conf.set_index("level").loc["anyday", "recall"])

    direct = evaluate_files(hits, DATA / "truth_200x3.csv", tmp_path / "direct", truth_thresh=0.3, config=CFG)
    pd.testing.assert_frame_equal(direct.confusion, conf)
    assert direct.summary["call_settings"]["mash_lfsr_thresh_day"] == 0.05


def test_cli_evaluate_bad_input_writes_nothing(tmp_path, capsys):
    hits = tmp_path / "hits.csv"
    _hits(["x"], ["0"], [True], days=("d0", "d1", "d2")).to_csv(hits, index=False)
    out = tmp_path / "eval"
    code = main(["evaluate", "--hits", str(hits), "--truth", str(DATA / "truth_200x3.csv"), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fatebias evaluate: error:") and "share no gene" in err and "\n" not in err
    assert not out.exists()
