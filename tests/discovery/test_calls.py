"""Hit calling and ranking (docs/method.md, "Calls") and the mode comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from fatebias_core.cli import main
from fatebias_core.config import make_config
from fatebias_core.discovery.calls import (
    CALL_COLUMNS,
    PLARGE_MIXTURE,
    PLARGE_NORMAL,
    CallRule,
    call_days,
    compare_modes,
    prob_large,
    rank_and_compare,
    rank_file,
    rank_hits,
)
from fatebias_core.errors import ConfigError, InputDataError

from .helpers import DATA, mash_table, strong

CFG = make_config()


def _by_gene(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("gene")


# --------------------------------------------------------------------------- probability gate
def test_prob_large_matches_the_normal_tails():
    # X ~ N(0, 1), eps = 1: P(|X| >= 1) = 2 Phi(-1)
    assert prob_large(np.array([0.0]), np.array([1.0]), 1.0)[0] == pytest.approx(0.3173105078629141, abs=1e-12)
    m, s, eps = 0.5, 0.1, 0.2
    want = norm.cdf((-eps - m) / s) + 1 - norm.cdf((eps - m) / s)
    assert prob_large(np.array([m]), np.array([s]), eps)[0] == pytest.approx(want, rel=1e-12)
    # symmetric in the sign of the mean; eps = 0 gives probability 1
    assert prob_large(np.array([-m]), np.array([s]), eps)[0] == pytest.approx(want, rel=1e-12)
    assert prob_large(np.array([0.01, -3.0]), np.array([0.5, 2.0]), 0.0).tolist() == [1.0, 1.0]


def test_prob_large_with_zero_sd_is_the_point_mass():
    p = prob_large(np.array([0.2, -0.2, 0.19, 0.0]), np.zeros(4), 0.2)
    assert p.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_tiny_lfsr_with_tiny_effect_is_not_called():
    # lfsr 1e-12 but the effect is 0.05 +- 0.005: P(|effect| >= 0.2) is ~0
    t = mash_table(["small", "big"], [[0.05, 0.0], [0.5, 0.0]], [[0.005, 0.1], [0.02, 0.1]],
                   [[1e-12, 0.9], [1e-12, 0.9]])
    out = _by_gene(rank_hits(t, CFG))
    assert out.loc["small", "plarge_d0"] < 1e-100
    assert out.loc["small", "active_days"] == "" and not out.loc["small", "hit_anyday"]
    assert out.loc["big", "active_days"] == "0" and out.loc["big", "hit_anyday"]


def test_probability_gate_is_inclusive_at_the_boundary():
    t = mash_table(["g"], [[0.3, 0.0]], [[0.08, 0.1]], [[0.001, 0.9]])
    p = prob_large(np.array([0.3]), np.array([0.08]), 0.2)[0]
    at = rank_hits(t, make_config(effect_prob_large_min=float(p)))
    above = rank_hits(t, make_config(effect_prob_large_min=float(np.nextafter(p, 1.0))))
    assert at.loc[0, "active_days"] == "0" and at.loc[0, "hit_anyday"]
    assert above.loc[0, "active_days"] == "" and not above.loc[0, "hit_anyday"]


# --------------------------------------------------------------------------- thresholds
def test_day_threshold_is_strict():
    out = _by_gene(rank_hits(strong(2, [0.05, 0.0499]), make_config(mash_anyday_correction="none")))
    assert out.loc["G0", "active_days"] == "" and not out.loc["G0", "hit_anyday"]
    assert out.loc["G1", "active_days"] == "0" and out.loc["G1", "hit_anyday"]


def test_bonferroni_divides_the_anyday_threshold_by_the_number_of_days():
    # 4 days: any-day threshold 0.05 / 4 = 0.0125 (strict)
    t = strong(4, [0.02, 0.0125, 0.0124])
    bonf = _by_gene(rank_hits(t, CFG))
    assert bonf["active_days"].tolist() == ["0", "0", "0"]  # daywise calls use 0.05
    assert bonf["hit_anyday"].to_dict() == {"G2": True, "G0": False, "G1": False}
    assert bonf["active_days_any"].to_dict() == {"G2": "0", "G0": "", "G1": ""}
    none = _by_gene(rank_hits(t, make_config(mash_anyday_correction="none")))
    assert none["hit_anyday"].all() and none["n_any_active"].tolist() == [1, 1, 1]
    # the rule object carries the corrected threshold
    assert CallRule.from_config(CFG, 4).lfsr_thresh_anyday == 0.0125
    assert CallRule.from_config(make_config(mash_lfsr_thresh_anyday=0.03), 3).lfsr_thresh_anyday == pytest.approx(0.01)


def test_min_active_days_for_hit_anyday():
    t = mash_table(["one", "two"], [[1.0, 1.0, 1.0]] * 2, [[0.01] * 3] * 2,
                   [[0.001, 0.5, 0.5], [0.001, 0.002, 0.5]])
    out = _by_gene(rank_hits(t, make_config(min_active_days_for_hit_anyday=2)))
    assert out["n_any_active"].to_dict() == {"two": 2, "one": 1}
    assert out["hit_anyday"].to_dict() == {"two": True, "one": False}


def test_call_days_applies_an_extra_gate():
    rule = CallRule(0.05, 0.05, 0.2, 0.9, 1)
    m, s, f = np.ones((2, 2)), np.full((2, 2), 0.01), np.full((2, 2), 0.001)
    calls = call_days(m, s, f, rule, gate=np.array([[True, False], [False, False]]))
    assert calls.active.tolist() == [[True, False], [False, False]]
    assert calls.hit_anyday.tolist() == [True, False]


# --------------------------------------------------------------------------- best days
def test_best_day_and_best_day_among_active():
    # day 0 has the smallest lfsr but a tiny effect (gated out); day 2 is the active day
    t = mash_table(["g", "none"], [[0.01, 0.0, 0.8], [0.0, 0.0, 0.0]], [[0.005, 0.1, 0.05], [0.1] * 3],
                   [[1e-6, 0.9, 0.01], [0.7, 0.6, 0.8]])
    out = _by_gene(rank_hits(t, CFG))
    assert out.loc["g", "best_day"] == 0
    assert out.loc["g", "best_day_among_active"] == 2
    assert out.loc["g", "min_lfsr_among_active"] == 0.01
    assert out.loc["g", "max_abs_postmean"] == 0.8
    assert out.loc["none", "best_day"] == 1
    assert pd.isna(out.loc["none", "best_day_among_active"])
    assert np.isnan(out.loc["none", "min_lfsr_among_active"])


def test_days_are_ordered_by_number_not_by_column_order():
    t = mash_table(["g"], [[1.0, 1.0, 1.0]], [[0.01] * 3], [[0.01, 0.001, 0.02]], days=["d10", "d2", "d1"])
    out = rank_hits(t, make_config(mash_anyday_correction="none"))
    assert out.loc[0, "active_days"] == "1,2,10"
    assert out.loc[0, "best_day"] == 2
    assert [c for c in out.columns if c.startswith("plarge_")] == ["plarge_d1", "plarge_d2", "plarge_d10"]


# --------------------------------------------------------------------------- ranking
def test_ranking_order_hits_then_lfsr_then_effect_then_name():
    genes = ["nohit_active", "hit_b", "hit_a", "nothing", "hit_big", "hit_first", "nothing_big"]
    lfsr0 = [0.03, 0.001, 0.001, 0.5, 0.001, 0.0001, 0.5]
    effect = [1.0, 1.0, 1.0, 0.0, 2.0, 0.5, 3.0]
    t = mash_table(genes, [[e, 0.0] for e in effect], [[0.01, 0.1]] * 7, [[f, 0.9] for f in lfsr0])
    out = rank_hits(t, CFG)  # any-day threshold 0.025
    assert out["gene"].tolist() == [
        "hit_first",  # smallest lfsr among active days
        "hit_big",  # ties on lfsr: larger |postmean| first
        "hit_a",  # ties on both: gene name
        "hit_b",
        "nohit_active",  # not a hit (0.03 > 0.025) but active daywise
        "nothing_big",  # no active day: by |postmean|
        "nothing",
    ]
    assert out.index.tolist() == list(range(7))


def test_output_columns_and_idempotence():
    t = mash_table(["a", "b"], [[1.0, 0.0, 0.5]] * 2, [[0.01, 0.1, 0.1]] * 2, [[0.001, 0.9, 0.2]] * 2)
    t["lfsr_min"] = 0.001
    t["best_day"] = 0
    out = rank_hits(t, CFG)
    inputs = [c for c in t.columns if c != "best_day"]
    assert out.columns.tolist() == inputs + ["plarge_d0", "plarge_d1", "plarge_d2", *CALL_COLUMNS]
    assert out["active_days"].tolist() == ["0", "0"]
    again = rank_hits(out, CFG)
    pd.testing.assert_frame_equal(again, out)


def test_real_mash_table_calls_satisfy_the_rules():
    t = pd.read_csv(DATA / "mash_gene_conservative_200x3.csv")
    out = rank_hits(t, CFG)
    lfsr = out[["lfsr_d0", "lfsr_d1", "lfsr_d2"]].to_numpy()
    plarge = out[["plarge_d0", "plarge_d1", "plarge_d2"]].to_numpy()
    any_ok = ((lfsr < 0.05 / 3) & (plarge >= 0.9)).any(axis=1)
    assert (out["hit_anyday"].to_numpy() == any_ok).all()
    assert out["n_active_days"].tolist() == ((lfsr < 0.05) & (plarge >= 0.9)).sum(axis=1).tolist()
    n_hits = int(out["hit_anyday"].sum())
    assert 0 < n_hits < len(out)
    assert out["hit_anyday"].iloc[:n_hits].all() and not out["hit_anyday"].iloc[n_hits:].any()
    assert out["min_lfsr_among_active"].iloc[:n_hits].is_monotonic_increasing


# --------------------------------------------------------------------------- plarge from the mash mixture
def _with_plarge(eps: float = 0.2) -> pd.DataFrame:
    """Two genes whose normal approximation and posterior-mixture P(|effect| >= eps) disagree.

    "a": mean 0.2, SD 0.02, lfsr 1e-6 on day 0: the normal approximation gives 0.5
    (fails the 0.9 gate); its plarge_d0 (as a mixture with a heavy tail would) 0.95.
    "b": mean 0.5, SD 0.05 (normal: ~1) but plarge_d0 0.3 (mass near zero).
    """
    t = mash_table(["a", "b"], [[0.2, 0.0], [0.5, 0.0]], [[0.02, 0.1], [0.05, 0.1]], [[1e-6, 0.9], [1e-6, 0.9]])
    t["lfsr_min"] = 1e-6
    t["best_day"] = 0
    t["plarge_d0"] = [0.95, 0.3]
    t["plarge_d1"] = [0.01, 0.02]
    t["plarge_eps"] = eps
    return t


def test_the_gate_uses_the_mash_tables_mixture_probability():
    t = _with_plarge()
    assert prob_large(np.array([0.2, 0.5]), np.array([0.02, 0.05]), 0.2)[0] == pytest.approx(0.5)
    out = rank_hits(t, CFG)
    assert out.attrs["plarge_source"] == PLARGE_MIXTURE
    by = _by_gene(out)
    assert by.loc["a", "plarge_d0"] == 0.95 and by.loc["a", "hit_anyday"]  # the normal approximation: no
    assert by.loc["b", "plarge_d0"] == 0.3 and not by.loc["b", "hit_anyday"]  # the normal approximation: yes
    # the ranked table keeps the eps of its plarge columns, and ranks again the same
    assert out.columns.tolist()[-len(CALL_COLUMNS) - 3:-len(CALL_COLUMNS)] == ["plarge_d0", "plarge_d1", "plarge_eps"]
    pd.testing.assert_frame_equal(rank_hits(out, CFG), out)


def test_plarge_at_another_eps_falls_back_to_the_normal_approximation(caplog):
    t = _with_plarge(eps=0.3)
    with caplog.at_level("WARNING", logger="fatebias.calls"):
        out = rank_hits(t, CFG, what="old.csv")
    assert out.attrs["plarge_source"] == PLARGE_NORMAL
    assert "old.csv" in caplog.text and "0.3" in caplog.text and "normal approximation" in caplog.text
    by = _by_gene(out)
    assert by.loc["a", "plarge_d0"] == pytest.approx(0.5) and not by.loc["a", "hit_anyday"]
    assert by.loc["b", "hit_anyday"] and "plarge_eps" not in out.columns


def test_tables_without_plarge_eps_use_the_normal_approximation(caplog):
    t = _with_plarge().drop(columns=["plarge_eps"])  # e.g. an external table or an old ranked one
    with caplog.at_level("INFO", logger="fatebias.calls"):
        out = rank_hits(t, CFG, what="ext.csv")
    assert out.attrs["plarge_source"] == PLARGE_NORMAL
    assert "ext.csv: P(|effect| >= 0.2) under the normal approximation" in caplog.text
    assert _by_gene(out).loc["a", "plarge_d0"] == pytest.approx(0.5)


def test_call_days_records_where_plarge_came_from():
    m, s, f = np.array([[0.2, 0.0]]), np.array([[0.02, 0.1]]), np.array([[1e-6, 0.9]])
    rule = CallRule.from_config(CFG, 2)
    assert call_days(m, s, f, rule).plarge_source == PLARGE_NORMAL
    calls = call_days(m, s, f, rule, plarge=np.array([[0.95, 0.0]]))
    assert calls.plarge_source == PLARGE_MIXTURE and calls.active[0].tolist() == [True, False]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.assign(plarge_eps=[0.2, 0.3]), "plarge_eps must hold one number"),
        (lambda t: t.drop(columns=["plarge_d1"]), "plarge_d1"),
        (lambda t: t.assign(plarge_d0=[1.5, 0.2]), "plarge_d0 has values above 1"),
    ],
)
def test_bad_plarge_columns_give_one_line_errors(change, message):
    with pytest.raises(InputDataError, match=message) as err:
        rank_hits(change(_with_plarge()), CFG)
    assert "\n" not in str(err.value)


def test_rank_and_compare_says_where_plarge_came_from(tmp_path):
    mix, old = tmp_path / "c.csv", tmp_path / "e.csv"
    _with_plarge().to_csv(mix, index=False)
    _with_plarge().drop(columns=["plarge_eps"]).to_csv(old, index=False)
    res = rank_and_compare({"conservative": mix, "enriched": old}, tmp_path, CFG)
    assert res.plarge_sources == {"conservative": PLARGE_MIXTURE, "enriched": PLARGE_NORMAL}
    text = res.describe()
    assert "conservative" in text and "posterior mixture" in text and "normal approximation" in text


# --------------------------------------------------------------------------- ash source
def test_ash_summary_uses_lfsr_and_qvalue_without_the_gate():
    t = pd.DataFrame(
        {
            "gene": ["hit", "q_at_thresh", "lfsr_high", "tiny_effect"],
            "betahat": [0.5, 0.5, 0.5, 0.01],
            "sebetahat": [0.1] * 4,
            "postmean": [0.5, 0.5, 0.5, 0.01],
            "postsd": [0.1, 0.1, 0.1, 0.001],
            "lfsr": [0.01, 0.01, 0.05, 0.001],
            "qvalue": [0.05, 0.10, 0.01, 0.01],
        }
    )
    out = _by_gene(rank_hits(t, CFG, source="ash"))
    assert out["hit_anyday"].to_dict() == {"tiny_effect": True, "hit": True, "q_at_thresh": False, "lfsr_high": False}
    assert out.loc["hit", "active_days"] == "sum" and out.loc["hit", "best_day_among_active"] == "sum"
    assert out.loc["q_at_thresh", "best_day"] == "sum" and out.loc["q_at_thresh", "best_day_among_active"] is None
    assert "plarge_sum" in out.columns and out.loc["tiny_effect", "plarge_sum"] < 1e-10


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns=["lfsr_d1"]), "missing column(s) lfsr_d1"),
        (lambda t: t.assign(postsd_d0=[np.nan, 0.1]), "column postsd_d0 has missing"),
        (lambda t: t.assign(postsd_d1=[-0.1, 0.1]), "column postsd_d1 has values below 0"),
        (lambda t: t.assign(lfsr_d0=[1.5, 0.1]), "column lfsr_d0 has values above 1"),
        (lambda t: t.assign(gene=["a", "a"]), "duplicated name"),
        (lambda t: t.iloc[:0], "no rows"),
        (lambda t: t.rename(columns=lambda c: f"gene_{c}" if c != "gene" else c), "use discovery_source: guide_agg"),
    ],
)
def test_bad_tables_give_one_line_errors(change, message):
    t = mash_table(["a", "b"], [[1.0, 0.0]] * 2, [[0.01, 0.1]] * 2, [[0.001, 0.9]] * 2)
    with pytest.raises(InputDataError) as exc:
        rank_hits(change(t), CFG)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_source_is_a_config_error():
    t = mash_table(["a"], [[1.0, 0.0]], [[0.01, 0.1]], [[0.001, 0.9]])
    with pytest.raises(ConfigError):
        rank_hits(t, CFG, source="guides")


# --------------------------------------------------------------------------- mode comparison
def _ranked(genes: list[str], lfsr: list[float]) -> pd.DataFrame:
    return rank_hits(strong(2, lfsr, genes=genes), make_config(mash_anyday_correction="none"))


def test_compare_modes_jaccard_overlap_and_medians():
    cons = _ranked(["A", "B", "C", "X"], [0.01, 0.001, 0.04, 0.5])  # hits A B C
    enr = _ranked(["A", "B", "D", "E", "C"], [1e-4, 0.02, 0.001, 0.03, 0.6])  # hits A B D E
    out = compare_modes({"conservative": cons, "enriched": enr}, top_n=2)
    assert out["mode"].tolist() == ["conservative", "enriched"]
    assert out["other_mode"].tolist() == ["enriched", "conservative"]
    assert out["n_rows"].tolist() == [4, 5] and out["n_hits"].tolist() == [3, 4]
    assert out["n_shared_hits"].tolist() == [2, 2]
    assert out["jaccard_hits"].tolist() == pytest.approx([2 / 5, 2 / 5])
    # top 2: conservative B, A; enriched A, D -> overlap {A}
    assert out["top_n"].tolist() == [2, 2] and out["top_overlap"].tolist() == [1, 1]
    assert out.loc[0, "median_score"] == pytest.approx(2.0)  # -log10 of 0.01 (median of 0.001, 0.01, 0.04)
    assert out.loc[1, "median_score"] == pytest.approx((-np.log10(0.001) - np.log10(0.02)) / 2)
    assert out["median_n_active_days"].tolist() == [1.0, 1.0]
    assert out.columns.tolist() == ["mode", "n_rows", "n_hits", "median_score", "median_n_active_days",
                                    "other_mode", "n_shared_hits", "jaccard_hits", "top_n", "top_overlap"]


def test_compare_modes_edge_cases():
    none_hit = _ranked(["A"], [0.5])
    one = compare_modes({"conservative": none_hit})
    assert one.loc[0, "n_hits"] == 0 and np.isnan(one.loc[0, "median_score"])
    assert one.loc[0, "other_mode"] is None and np.isnan(one.loc[0, "jaccard_hits"])
    both_empty = compare_modes({"conservative": none_hit, "enriched": none_hit})
    assert np.isnan(both_empty["jaccard_hits"]).all()
    zero = _ranked(["A"], [0.0])  # lfsr exactly 0 is floored, not infinite
    assert compare_modes({"c": zero}).loc[0, "median_score"] == pytest.approx(300.0)
    with pytest.raises(InputDataError, match="one or two"):
        compare_modes({"a": zero, "b": zero, "c": zero})


def test_rank_and_compare_writes_both_files(tmp_path):
    inputs = {m: DATA / f"mash_gene_{m}_200x3.csv" for m in ("conservative", "enriched")}
    res = rank_and_compare(inputs, tmp_path, CFG)
    hits = pd.read_csv(tmp_path / "hits_ranked.csv")
    comp = pd.read_csv(tmp_path / "mash_mode_comparison.csv")
    assert hits["gene"].tolist() == res.by_mode["conservative"]["gene"].tolist()
    assert comp["mode"].tolist() == ["conservative", "enriched"]
    assert comp.loc[0, "n_hits"] == int(res.hits["hit_anyday"].sum())
    assert 0 < comp.loc[0, "jaccard_hits"] <= 1
    assert "conservative:" in res.describe()


def test_rank_and_compare_needs_the_default_mode(tmp_path):
    with pytest.raises(InputDataError, match="mash_default_mode 'conservative'"):
        rank_and_compare({"enriched": DATA / "mash_gene_enriched_200x3.csv"}, tmp_path, CFG)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- files and CLI
def test_rank_file_round_trip(tmp_path):
    out = tmp_path / "hits_ranked.csv"
    ranked = rank_file(DATA / "mash_gene_conservative_200x3.csv", out, CFG)
    back = pd.read_csv(out, dtype={"active_days": str, "active_days_any": str}, keep_default_na=False)
    assert back["gene"].tolist() == ranked["gene"].tolist()
    assert back["active_days"].tolist() == ranked["active_days"].tolist()


def test_cli_rank(tmp_path, capsys):
    out = tmp_path / "hits.csv"
    assert main(["rank", str(DATA / "mash_gene_conservative_200x3.csv"), str(out)]) == 0
    assert "hits of 200 rows" in capsys.readouterr().out
    assert pd.read_csv(out)["hit_anyday"].dtype == bool


def test_cli_rank_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    mash_table(["a"], [[1.0, 0.0]], [[np.nan, 0.1]], [[0.001, 0.9]]).to_csv(bad, index=False)
    out = tmp_path / "hits.csv"
    assert main(["rank", str(bad), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fatebias rank: error:") and "postsd_d0" in err and "\n" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


# --------------------------------------------------------------------------- table conventions
def test_day_axis_orders_by_number_and_rejects_clashes():
    from fatebias_core.io.tables import day_axis

    axis = day_axis(["gene", "lfsr_d10", "lfsr_min", "lfsr_d9", "gene_lfsr_d1"], "lfsr")
    assert axis.labels == ("d9", "d10") and axis.numbers == (9, 10) and axis.keys == ("9", "10")
    with pytest.raises(InputDataError, match="columns lfsr_d1 and lfsr_day1 both give day number 1"):
        day_axis(["lfsr_d1", "lfsr_day1"], "lfsr")


def test_parse_day_lists_reads_back_csv_values():
    from fatebias_core.io.tables import parse_day_lists

    long = parse_day_lists(pd.Series(["0,2", np.nan, 1.0, "", " 3 "], index=[7, 7, 8, 9, 9]))
    assert long["row"].tolist() == [0, 0, 2, 4] and long["key"].tolist() == ["0", "2", "1", "3"]
