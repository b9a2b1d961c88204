"""Guide-to-gene aggregation (docs/method.md, "Guide-to-gene aggregation")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from fatebias_core.cli import main
from fatebias_core.config import make_config
from fatebias_core.discovery.aggregate import (
    AGG_SUMMARY_COLUMNS,
    aggregate_file,
    aggregate_guides,
    normal_lfsr,
)
from fatebias_core.discovery.calls import rank_hits
from fatebias_core.errors import InputDataError

from .helpers import DATA, mash_table

CFG = make_config()


def _guides() -> pd.DataFrame:
    """Gene A: guides a1, a2 (rows 0 and 2); gene B: b1, b2, b3; gene C: one guide."""
    return mash_table(
        genes=["A", "B", "A", "B", "B", "C"],
        guides=["a1", "b1", "a2", "b2", "b3", "c1"],
        postmean=[[0.5, 0.0], [0.1, -0.4], [0.3, 0.02], [0.2, -0.6], [0.3, -0.2], [0.7, 0.0]],
        postsd=[[0.1, 0.05], [0.1, 0.2], [0.2, 0.05], [0.2, 0.1], [0.1, 0.1], [0.3, 0.01]],
        lfsr=[[0.001, 0.9], [0.2, 0.04], [0.03, 0.8], [0.3, 0.001], [0.1, 0.05], [0.05, 0.7]],
    )


def test_inverse_variance_arithmetic_by_hand():
    out = aggregate_guides(_guides(), CFG).set_index("gene")
    assert out.index.tolist() == ["A", "B", "C"]  # order of first appearance
    assert out["n_guides"].to_dict() == {"A": 2, "B": 3, "C": 1}
    # gene A, day 0: w = 100, 25 -> mean (50 + 7.5) / 125 = 0.46, sd = sqrt(1 / 125)
    assert out.loc["A", "gene_postmean_d0"] == pytest.approx(0.46, abs=1e-12)
    assert out.loc["A", "gene_postsd_d0"] == pytest.approx(np.sqrt(1 / 125), abs=1e-12)
    assert out.loc["A", "gene_lfsr_d0"] == pytest.approx(norm.cdf(-0.46 / np.sqrt(1 / 125)), rel=1e-9)
    # gene A, day 1: equal weights -> plain mean 0.01, sd 0.05 / sqrt(2)
    assert out.loc["A", "gene_postmean_d1"] == pytest.approx(0.01, abs=1e-12)
    assert out.loc["A", "gene_postsd_d1"] == pytest.approx(0.05 / np.sqrt(2), abs=1e-12)
    # gene B, day 1: w = 25, 100, 100 -> (-10 - 60 - 20) / 225 = -0.4, sd = 1/15
    assert out.loc["B", "gene_postmean_d1"] == pytest.approx(-0.4, abs=1e-12)
    assert out.loc["B", "gene_postsd_d1"] == pytest.approx(1 / 15, abs=1e-12)
    assert out.loc["B", "gene_lfsr_d1"] == pytest.approx(norm.cdf(-6.0), rel=1e-9)
    # a single guide passes through (its lfsr recomputed from the normal)
    assert out.loc["C", "gene_postmean_d0"] == 0.7 and out.loc["C", "gene_postsd_d0"] == 0.3
    assert out.loc["C", "gene_lfsr_d0"] == pytest.approx(norm.cdf(-0.7 / 0.3), rel=1e-9)
    # guides' own lfsr_min: A {0.001, 0.03}, B {0.04, 0.001, 0.05}, C {0.05}
    assert out["guide_min_lfsr_min"].to_dict() == {"A": 0.001, "B": 0.001, "C": 0.05}
    assert out["median_guide_lfsr_min"].to_dict() == pytest.approx({"A": 0.0155, "B": 0.04, "C": 0.05})


def test_summary_columns_and_calls():
    out = aggregate_guides(_guides(), CFG)
    days = [f"gene_{q}_d{j}" for j in range(2) for q in ("postmean", "postsd", "lfsr")]
    assert out.columns.tolist() == [*AGG_SUMMARY_COLUMNS, *days]
    out = out.set_index("gene")
    # A: day 0 lfsr Phi(-5.14) ~ 1e-7 with mean 0.46 (active); day 1 mean 0.01 (not)
    assert out.loc["A", "active_days"] == "0" and out.loc["A", "hit_anyday"]
    assert out.loc["A", "best_day"] == 0 and out.loc["A", "best_day_among_active"] == 0
    # B: day 1 mean -0.4, sd 1/15: lfsr ~1e-9, P(|x| >= 0.2) ~ 0.9987 -> active
    assert out.loc["B", "active_days"] == "1" and out.loc["B", "best_day_among_active"] == 1
    assert out.loc["B", "min_lfsr_among_active"] == pytest.approx(norm.cdf(-6.0), rel=1e-9)
    assert out.loc["B", "max_abs_postmean"] == pytest.approx(0.4)
    # C: lfsr Phi(-2.33) = 0.0098, below the Bonferroni threshold 0.05 / 2, and
    # P(|x| >= 0.2) = 0.95: a hit
    assert out.loc["C", "min_lfsr"] == pytest.approx(norm.cdf(-0.7 / 0.3), rel=1e-9)
    assert out.loc["C", "hit_anyday"]
    assert out["min_lfsr"].to_numpy() == pytest.approx(out[[f"gene_lfsr_d{j}" for j in range(2)]].min(axis=1))


def test_calls_are_those_of_hit_calling():
    agg = aggregate_guides(pd.read_csv(DATA / "mash_guide_conservative_90x4.csv"), CFG)
    ranked = rank_hits(agg, CFG, source="guide_agg").set_index("gene").loc[agg["gene"]]
    for col in ("active_days", "hit_anyday", "best_day", "best_day_among_active", "min_lfsr_among_active"):
        pd.testing.assert_series_equal(
            agg[col].reset_index(drop=True), ranked[col].reset_index(drop=True), check_names=False
        )


def test_real_guide_table_matches_a_per_gene_reference():
    guides = pd.read_csv(DATA / "mash_guide_conservative_90x4.csv")
    out = aggregate_guides(guides, CFG).set_index("gene")
    assert len(out) == 15 and (out["n_guides"] == 6).all()
    for gene, rows in guides.groupby("gene"):  # reference: a plain loop, test only
        for d in range(4):
            w = 1 / rows[f"postsd_d{d}"] ** 2
            mean = (w * rows[f"postmean_d{d}"]).sum() / w.sum()
            assert out.loc[gene, f"gene_postmean_d{d}"] == pytest.approx(mean, rel=1e-10, abs=1e-15)
            assert out.loc[gene, f"gene_postsd_d{d}"] == pytest.approx(np.sqrt(1 / w.sum()), rel=1e-10)
        assert out.loc[gene, "guide_min_lfsr_min"] == rows["lfsr_min"].min()
        assert out.loc[gene, "median_guide_lfsr_min"] == pytest.approx(rows["lfsr_min"].median())
    # The hits follow from the simulated truth: every gene whose guides' mean true effect
    # is large on some day is called, and no gene without an effect is.
    truth = pd.read_csv(DATA / "truth_guide_90x4.csv").groupby("gene")[[f"true_d{d}" for d in range(4)]].mean()
    strong = set(truth.index[truth.abs().max(axis=1) > 0.5])
    null = set(truth.index[(truth == 0).all(axis=1)])
    hits = set(out.index[out["hit_anyday"]])
    assert strong and strong <= hits
    assert not hits & null


def test_zero_and_tiny_sds():
    t = mash_table(
        genes=["Z", "Z", "ZZ", "ZZ", "null", "null", "tiny", "tiny"],
        guides=list("abcdefgh"),
        postmean=[[0.2], [1.0], [0.2], [0.4], [0.0], [0.5], [1.0], [4.0]],
        postsd=[[0.0], [0.1], [0.0], [0.0], [0.0], [0.1], [1e-200], [2e-200]],
        lfsr=[[0.0], [0.01], [0.0], [0.0], [1.0], [0.01], [0.0], [0.0]],
    )
    out = aggregate_guides(t, CFG).set_index("gene")
    # one SD-0 guide takes all the weight
    assert out.loc["Z", ["gene_postmean_d0", "gene_postsd_d0", "gene_lfsr_d0"]].tolist() == [0.2, 0.0, 0.0]
    # two SD-0 guides share it equally
    assert out.loc["ZZ", "gene_postmean_d0"] == pytest.approx(0.3) and out.loc["ZZ", "gene_postsd_d0"] == 0
    # a point at exactly zero has lfsr 1
    assert out.loc["null", ["gene_postmean_d0", "gene_postsd_d0", "gene_lfsr_d0"]].tolist() == [0.0, 0.0, 1.0]
    assert not out.loc["null", "hit_anyday"]
    # SDs near the float limit do not overflow: weights 1, 1/4 -> mean (1 + 1) / 1.25
    assert out.loc["tiny", "gene_postmean_d0"] == pytest.approx(1.6)
    assert out.loc["tiny", "gene_postsd_d0"] == pytest.approx(1e-200 / np.sqrt(1.25))
    assert np.isfinite(out.filter(like="gene_").to_numpy(dtype=float)).all()


def test_normal_lfsr():
    got = normal_lfsr(np.array([1.0, -1.0, 0.0, 0.3, 0.0]), np.array([1.0, 1.0, 1.0, 0.0, 0.0]))
    assert got.tolist() == pytest.approx([norm.cdf(-1), norm.cdf(-1), 0.5, 0.0, 1.0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns=["guide"]), "missing column(s) guide"),
        (lambda t: t.assign(guide=["a1"] * len(t)), "column guide has 1 duplicated name"),
        (lambda t: t.assign(gene=[None, *t["gene"][1:]]), "column gene is empty in 1 of 6 rows"),
        (lambda t: t.assign(postsd_d1=[0.1, np.nan, 0.1, 0.1, np.nan, 0.1]), "column postsd_d1 has missing"),
        (lambda t: t.drop(columns=["postsd_d0"]), "missing column(s) postsd_d0"),
        (lambda t: t.iloc[:0], "no rows"),
    ],
)
def test_bad_guide_tables(change, message):
    with pytest.raises(InputDataError) as exc:
        aggregate_guides(change(_guides()), CFG)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_aggregate_file_and_cli(tmp_path, capsys):
    src = DATA / "mash_guide_conservative_90x4.csv"
    out = tmp_path / "gene_from_guide_mash_conservative.csv"
    assert main(["aggregate", str(src), str(out)]) == 0
    assert "15 genes" in capsys.readouterr().out
    back = pd.read_csv(out)
    direct = aggregate_file(src, tmp_path / "again.csv", CFG)
    assert back.columns.tolist() == direct.columns.tolist()
    assert back["gene_postmean_d2"].to_numpy() == pytest.approx(direct["gene_postmean_d2"].to_numpy(), rel=1e-12)


def test_cli_aggregate_bad_input(tmp_path, capsys):
    bad = tmp_path / "gene_table.csv"
    mash_table(["A"], [[0.1, 0.2]], [[0.1, 0.1]], [[0.5, 0.5]]).to_csv(bad, index=False)  # no guide column
    out = tmp_path / "out.csv"
    assert main(["aggregate", str(bad), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fatebias aggregate: error:") and "guide" in err and "\n" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gene_table.csv"]
