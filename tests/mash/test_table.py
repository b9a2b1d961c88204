"""Tables in and out: layout of the outputs, bad inputs, the CLI commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fatebias_core.cli import main
from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import InputDataError
from fatebias_core.io import write_csv
from fatebias_core.mash import ash_file, ash_table, mash_file, mash_table
from fatebias_core.mash.table import day_numbers

DATA = Path(__file__).resolve().parents[1] / "data" / "mash"


@pytest.fixture
def small() -> pd.DataFrame:
    return pd.read_csv(DATA / "gene_40x4_small" / "input.csv")


def test_output_layout_matches_the_seed(small) -> None:
    res = mash_table(small, "conservative", FatebiasConfig())
    r_cols = list(pd.read_csv(DATA / "gene_40x4_small" / "r_conservative.csv", nrows=1).columns)
    plarge = [f"plarge_d{d}" for d in range(4)] + ["plarge_eps"]
    assert list(res.table.columns) == r_cols + ["lfsr_min", "best_day"] + plarge
    assert (res.table["plarge_eps"] == 0.2).all()
    lfsr = res.table[[f"lfsr_d{d}" for d in range(4)]].to_numpy()
    np.testing.assert_array_equal(res.table["lfsr_min"], lfsr.min(axis=1))
    np.testing.assert_array_equal(res.table["best_day"], lfsr.argmin(axis=1))
    assert res.table["best_day"].dtype.kind == "i"
    assert (res.table["gene"] == small["gene"]).all()


def test_guide_table_keeps_both_id_columns_and_three_days() -> None:
    df = pd.read_csv(DATA / "guide_1800x4" / "input.csv").iloc[:120]
    df = df.drop(columns=["betahat_d3", "se_d3"])
    res = mash_table(df, "conservative", FatebiasConfig())
    assert list(res.table.columns[:2]) == ["guide", "gene"]
    assert [c for c in res.table.columns if c.startswith("postmean_")] == ["postmean_d0", "postmean_d1", "postmean_d2"]


def test_best_day_numbers() -> None:
    assert day_numbers(["d0", "d2", "d5"]) == (0, 2, 5)
    assert day_numbers(["day1", "day2"]) == (1, 2)
    assert day_numbers(["early", "late"]) == (0, 1)


def test_best_day_ties_go_to_the_earliest_day(small) -> None:
    df = small.copy()
    df[["betahat_d0", "betahat_d1", "betahat_d2", "betahat_d3"]] = 0.0  # every lfsr equal
    res = mash_table(df, "conservative", FatebiasConfig())
    lfsr = res.table[[f"lfsr_d{d}" for d in range(4)]].to_numpy()
    first_min = (lfsr == lfsr.min(axis=1, keepdims=True)).argmax(axis=1)
    np.testing.assert_array_equal(res.table["best_day"], first_min)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.assign(betahat_d1=d["betahat_d1"].where(d.index != 4, np.nan)), r"betahat_d1 NaN or infinite in 1 row\(s\): 5 \(gene=Gene5\)"),
        (lambda d: d.assign(betahat_d2=d["betahat_d2"].where(d.index != 0, np.inf)), "betahat_d2 NaN or infinite"),
        (lambda d: d.assign(se_d0=d["se_d0"].where(d.index != 2, 0.0)), r"se_d0 not a positive finite number in 1 row\(s\): 3"),
        (lambda d: d.assign(se_d3=d["se_d3"].where(d.index != 2, -1.0)), "se_d3 not a positive"),
        (lambda d: d.assign(se_d3=d["se_d3"].where(d.index != 2, np.nan)), "se_d3 not a positive"),
        (lambda d: d.drop(columns=["se_d2"]), "mismatched day columns: no se_ column for betahat_d2"),
        (lambda d: d.drop(columns=["betahat_d0"]), "no betahat_ column for se_d0"),
        (lambda d: d.iloc[:1], "1 row; mash needs at least 2"),
        (lambda d: d[["gene", "betahat_d0", "se_d0"]], "1 day"),
        (lambda d: d[["gene"]], "no betahat_<day> columns"),
        (lambda d: d.assign(betahat_d1=d["betahat_d1"].astype(object).where(d.index != 3, "abc")), "betahat_d1 is not numeric"),
    ],
)
def test_bad_inputs_are_named_and_nothing_is_written(small, tmp_path, edit, match) -> None:
    bad = tmp_path / "in.csv"
    edit(small).to_csv(bad, index=False)
    out = tmp_path / "out.csv"
    with pytest.raises(InputDataError, match=match):
        mash_file(bad, out, mode="conservative", config=FatebiasConfig())
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad]  # no temporary file left behind either


def test_empty_file_is_an_error(tmp_path) -> None:
    (tmp_path / "in.csv").write_text("")
    with pytest.raises(InputDataError, match="empty"):
        mash_file(tmp_path / "in.csv", tmp_path / "out.csv")
    (tmp_path / "h.csv").write_text("gene,betahat_d0,betahat_d1,se_d0,se_d1\n")
    with pytest.raises(InputDataError, match="empty"):
        mash_file(tmp_path / "h.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_cli_mash_and_ash(tmp_path, capsys) -> None:
    out = tmp_path / "mash.csv"
    rc = main(["mash", str(DATA / "gene_40x4_small" / "input.csv"), str(out), "--mode", "enriched"])
    assert rc == 0 and out.exists()
    text = capsys.readouterr().out
    assert "mash enriched (native): 40 rows x 4 days" in text and "lfsr_min < 0.05" in text
    bad = tmp_path / "bad.csv"
    pd.read_csv(DATA / "gene_40x4_small" / "input.csv").drop(columns=["se_d1"]).to_csv(bad, index=False)
    rc = main(["mash", str(bad), str(tmp_path / "x.csv")])
    assert rc == 2 and not (tmp_path / "x.csv").exists()
    assert "se_" in capsys.readouterr().err

    summary = pd.DataFrame({"gene": ["a", "b", "c", "d"], "betahat": [2.0, -0.1, 0.05, 1.5], "sebetahat": [0.3, 0.3, 0.2, 0.4], "w_d0": 0.5})
    summary.to_csv(tmp_path / "sum.csv", index=False)
    rc = main(["ash", str(tmp_path / "sum.csv"), str(tmp_path / "ash.csv")])
    assert rc == 0
    got = pd.read_csv(tmp_path / "ash.csv")
    assert list(got.columns) == ["gene", "betahat", "sebetahat", "w_d0", "postmean", "postsd", "lfsr", "qvalue"]


def test_ash_table_values_and_errors(tmp_path) -> None:
    rng = np.random.default_rng(2)
    b = np.concatenate([rng.normal(0, 0.1, 150), rng.normal(0, 2, 50)])
    df = pd.DataFrame({"gene": [f"g{i}" for i in range(200)], "betahat": b, "sebetahat": 0.1})
    res = ash_table(df)
    assert res.fit.pi[0] > 0.3
    np.testing.assert_allclose(res.table["lfsr"], res.fit.lfsr)
    # ashr's q-value is the running mean of the sorted local false discovery rates
    order = np.argsort(res.fit.lfdr, kind="stable")
    q = np.cumsum(res.fit.lfdr[order]) / np.arange(1, 201)
    np.testing.assert_allclose(res.table["qvalue"].to_numpy()[order], q)
    assert "lfsr < 0.05" in res.describe()
    bad = df.assign(sebetahat=df["sebetahat"].where(df.index != 7, 0.0))
    bad.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(InputDataError, match=r"sebetahat not a positive finite number in 1 row\(s\): 8 \(gene=g7\)"):
        ash_file(tmp_path / "b.csv", tmp_path / "o.csv")
    with pytest.raises(InputDataError, match="lacks column"):
        ash_table(df.drop(columns=["sebetahat"]))


def test_mash_file_writes_what_write_csv_writes(small, tmp_path) -> None:
    """An input written by write_csv: the output file has write_csv's bytes (input lines kept as they are)."""
    src = tmp_path / "in.csv"
    write_csv(small.assign(n_cells=np.arange(len(small)), note="x y"), src)
    res = mash_file(src, tmp_path / "out.csv", mode="conservative", config=FatebiasConfig())
    write_csv(res.table, tmp_path / "ref.csv")
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()


def test_mash_file_keeps_the_inputs_own_spelling_or_falls_back(small, tmp_path) -> None:
    plain = tmp_path / "plain.csv"
    head, *rows = small.to_csv(index=False).splitlines()
    # a code column whose values pandas reads as the number 1
    plain.write_text("\n".join([head + ",code", *(r + ",001" for r in rows)]) + "\n")
    res = mash_file(plain, tmp_path / "out.csv")
    lines = (tmp_path / "out.csv").read_text().splitlines()
    body = plain.read_text().splitlines()
    assert [line[: len(b)] for line, b in zip(lines, body, strict=True)] == body  # the input lines, verbatim
    assert lines[0].endswith(",plarge_eps") and lines[1].split(",")[9] == "001"
    back = pd.read_csv(tmp_path / "out.csv", float_precision="round_trip")
    new = [c for c in res.table.columns if c not in small.columns and c != "code"]
    pd.testing.assert_frame_equal(back[new], res.table[new])
    # quoted fields: written by write_csv from the parsed table
    quoted = tmp_path / "quoted.csv"
    small.assign(gene='"' + small["gene"] + ', a"').to_csv(quoted, index=False)
    res = mash_file(quoted, tmp_path / "q_out.csv")
    write_csv(res.table, tmp_path / "q_ref.csv")
    assert (tmp_path / "q_out.csv").read_bytes() == (tmp_path / "q_ref.csv").read_bytes()


def test_mash_file_splits_rows_between_processes_without_changing_a_byte(small, tmp_path, monkeypatch) -> None:
    from fatebias_core.mash import csv_out

    src = tmp_path / "in.csv"
    write_csv(pd.concat([small] * 5, ignore_index=True).assign(gene=lambda d: [f"G{i}" for i in range(len(d))]), src)
    serial = mash_file(src, tmp_path / "serial.csv")
    monkeypatch.setattr(csv_out, "PARALLEL_MIN_CELLS", 0)
    monkeypatch.setattr(csv_out, "CHUNK_ROWS", 7)
    monkeypatch.setattr(csv_out, "available_cores", lambda: 3)
    mash_file(src, tmp_path / "forked.csv")
    write_csv(serial.table, tmp_path / "ref.csv")
    assert (tmp_path / "forked.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert (tmp_path / "serial.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forked.csv", "in.csv", "ref.csv", "serial.csv"]


def test_output_columns_that_repeat_another_reuse_its_text_exactly(tmp_path) -> None:
    from fatebias_core.mash.csv_out import write_output

    df = pd.DataFrame({"gene": ["a", "b", "c"], "x": [1, 2, 3]})
    out = df.assign(u=[0.1, -0.0, 2.5], v=[0.3, 0.0, 7.0], w=[0.3, -0.0, 2.5], z=[0.0, 0.0, 0.0])
    write_csv(df, tmp_path / "in.csv")
    write_output(out, df, tmp_path / "in.csv", tmp_path / "out.csv")
    write_csv(out, tmp_path / "ref.csv")
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert "-0.0,0.0,-0.0,0.0" in (tmp_path / "out.csv").read_text()
