"""The DuckDB lineage store: rows, results tables, many writers, a database held open elsewhere."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from fatebias_dagster.lineage import CHANGES_SQL, PROVENANCE_SQL, LineageDB, LineageRow, utcnow


def make_row(asset: str = "ranked_hits", version: str = "v1", run: str = "r1", **kw) -> LineageRow:
    now = utcnow()
    data = dict(
        asset_key=asset, run_id=run, step="rank", started_at=now, finished_at=now, data_version=version,
        code_version="1", config_hash="c1", settings={"mash_lfsr_thresh_day": 0.05},
        upstream_versions={"mash_outputs": "m1"}, lineage={asset: version}, input_files=["/d/adata.h5ad"],
        input_version="i1", out_dir="/out", output_paths=["/out/hits_ranked.csv"], row_counts={"hits_ranked.csv": 3},
        metrics={"n_hits": 2, "nan": float("nan")}, config={"seed": 0},
    )
    data.update(kw)
    return LineageRow(**data)


def test_append_row_and_results_table(tmp_path: Path) -> None:
    db = LineageDB(tmp_path / "lineage.duckdb")
    hits = pd.DataFrame({"gene": ["A", "B"], "hit_anyday": [True, False], "active_days": ["d0", None]})
    assert db.append(make_row(), {"hits": hits})
    rows = db.query("SELECT asset_key, run_id, data_version, metrics ->> 'n_hits' AS n, metrics ->> 'nan' AS nan, "
                    "input_files[1] AS f FROM materializations")
    assert rows.to_dict("records") == [{"asset_key": "ranked_hits", "run_id": "r1", "data_version": "v1", "n": "2",
                                        "nan": None, "f": "/d/adata.h5ad"}]
    got = db.query("SELECT run_id, data_version, gene, hit_anyday FROM hits ORDER BY gene")
    assert got["gene"].tolist() == ["A", "B"] and set(got["run_id"]) == {"r1"} and got["hit_anyday"].tolist() == [True, False]


def test_results_table_gains_columns_and_text(tmp_path: Path) -> None:
    """A later run's table with a new column, or text where there were only missing values, is appended."""
    db = LineageDB(tmp_path / "lineage.duckdb")
    db.append(make_row(run="r1"), {"hits": pd.DataFrame({"gene": ["A"], "active_days": [float("nan")]})})
    db.append(make_row(run="r2"), {"hits": pd.DataFrame({"gene": ["B"], "active_days": ["d1"], "extra": [1.5]})})
    got = db.query("SELECT run_id, gene, active_days, extra FROM hits ORDER BY run_id")
    assert got["active_days"].tolist()[1] == "d1" and got["extra"].isna().tolist() == [True, False]


def test_a_step_run_again_in_the_same_run_adds_no_row(tmp_path: Path) -> None:
    """A step re-executed in its run (a lost Dask worker) writes its row and results once; other runs,
    partitions and versions still add theirs."""
    db = LineageDB(tmp_path / "lineage.duckdb")
    hits = {"hits": pd.DataFrame({"gene": ["A", "B"]})}
    assert db.append(make_row(run="r1"), hits)
    assert db.append(make_row(run="r1"), hits)
    db.append(make_row(run="r1", partition_key="p|0"), hits)
    db.append(make_row(run="r1", partition_key="p|0"), hits)
    db.append(make_row(run="r1", version="v2"), hits)
    db.append(make_row(run="r2"), hits)
    rows = db.query("SELECT run_id, partition_key, data_version FROM materializations "
                    "ORDER BY run_id, partition_key NULLS FIRST, data_version")
    assert rows.fillna("-").values.tolist() == [["r1", "-", "v1"], ["r1", "-", "v2"], ["r1", "p|0", "v1"], ["r2", "-", "v1"]]
    assert db.query("SELECT count(*) AS n FROM hits")["n"][0] == 8


WRITER = textwrap.dedent(
    """
    import sys
    from tests.dagster.test_lineage import make_row
    from fatebias_dagster.lineage import LineageDB
    import pandas as pd
    db = LineageDB(sys.argv[1])
    for i in range(int(sys.argv[3])):
        db.append(make_row(run=f"{sys.argv[2]}-{i}"), {"hits": pd.DataFrame({"gene": ["A", "B"]})})
    """
)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Two processes appending at the same time: every row and every results row arrives."""
    path = tmp_path / "lineage.duckdb"
    n = 25
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(n)], cwd=Path(__file__).parents[2])
        for name in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    db = LineageDB(path)
    counts = db.query("SELECT split_part(run_id, '-', 1) AS w, count(*) AS n FROM materializations GROUP BY 1 ORDER BY 1")
    assert counts["n"].tolist() == [n, n]
    assert db.query("SELECT count(DISTINCT run_id) AS n FROM materializations")["n"][0] == 2 * n
    assert db.query("SELECT count(*) AS n FROM hits")["n"][0] == 4 * n


HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("holding", flush=True)
    sys.stdin.readline()
    con.close()
    """
)


def test_database_held_by_another_program_spools_then_flushes(tmp_path: Path) -> None:
    """A DuckDB shell holding the file: the row is spooled, not lost, and written on the next access."""
    path = tmp_path / "lineage.duckdb"
    db = LineageDB(path, timeout_s=0.5)
    db.append(make_row(run="before"))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert db.append(make_row(run="while-held"), {"hits": pd.DataFrame({"gene": ["A"]})}) is False
        assert len(list(db.spool_dir.glob("*.json"))) == 1
    finally:
        holder.communicate("\n", timeout=30)
    runs = db.query("SELECT run_id FROM materializations ORDER BY recorded_at")["run_id"].tolist()
    assert runs == ["before", "while-held"]
    assert db.query("SELECT count(*) AS n FROM hits")["n"][0] == 1
    assert not list(db.spool_dir.glob("*.json"))


def test_readme_queries(tmp_path: Path) -> None:
    """The provenance query follows the hit list's lineage; the changes query compares with a week ago."""
    db = LineageDB(tmp_path / "lineage.duckdb")
    week_ago = utcnow() - timedelta(days=8)
    lineage = {"filtered_cells": "L", "fitted_posterior": "F", "ranked_hits": "R2"}
    db.append(make_row("filtered_cells", "L", step="load", lineage={"filtered_cells": "L"}, input_files=["/d/a.h5ad", "/d/map.csv"]))
    db.append(make_row("fitted_posterior", "F", step="fit", lineage={"filtered_cells": "L", "fitted_posterior": "F"},
                       settings={"num_steps": 150}))
    db.append(make_row("fitted_posterior", "OTHER", step="fit", lineage={"fitted_posterior": "OTHER"}))
    db.append(make_row("ranked_hits", "R1", config={"seed": 0, "mash_lfsr_thresh_day": 0.05}, input_version="i0",
                       started_at=week_ago, finished_at=week_ago))
    db.append(make_row("ranked_hits", "R2", lineage=lineage, config={"seed": 0, "mash_lfsr_thresh_day": 0.01}))
    prov = db.query(PROVENANCE_SQL)
    assert prov["asset_key"].tolist() == ["filtered_cells", "fitted_posterior", "ranked_hits"]
    assert prov["data_version"].tolist() == ["L", "F", "R2"]
    assert list(prov["input_files"][0]) == ["/d/a.h5ad", "/d/map.csv"]
    changes = db.query(CHANGES_SQL)
    assert dict(zip(changes["what"], zip(changes["last_week"], changes["now"], strict=True), strict=True)) == {
        "input files": ("i0", "i1"),
        "mash_lfsr_thresh_day": ("0.05", "0.01"),
    }


def test_query_without_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no lineage database"):
        LineageDB(tmp_path / "none.duckdb").query("SELECT 1")


def test_fatebias_lineage_prints_what_made_the_hit_list(tmp_path: Path, capsys, monkeypatch) -> None:
    """``fatebias lineage``: the latest hit list of the folder, its inputs and every asset it was built from."""
    from fatebias_core.cli import main

    monkeypatch.delenv("FATEBIAS_LINEAGE_DB", raising=False)
    out = (tmp_path / "results").resolve()
    other = str(tmp_path / "other")
    db = LineageDB(out / "lineage.duckdb")
    lineage = {"filtered_cells": "L", "fitted_posterior": "F", "ranked_hits": "R2"}
    common = dict(out_dir=str(out), input_files=["/d/adata.h5ad", "/d/guide_map.csv"], input_version="i1")
    db.append(make_row("filtered_cells", "L", step="load", lineage={"filtered_cells": "L"}, **common))
    db.append(make_row("fitted_posterior", "F", step="fit", lineage={"filtered_cells": "L", "fitted_posterior": "F"},
                       settings={"num_steps": 150}, **common))
    db.append(make_row("ranked_hits", "R1", run="r0", **common))
    db.append(make_row("ranked_hits", "R2", run="r2", lineage=lineage, settings={"mash_lfsr_thresh_day": 0.01}, **common))
    db.append(make_row("ranked_hits", "X", run="rx", out_dir=other, lineage={"ranked_hits": "X"}))  # another folder, later

    assert main(["lineage", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"latest hit list of {out}: ranked_hits version R2" in text and "Dagster run r2" in text
    assert "/d/adata.h5ad" in text and "/d/guide_map.csv" in text and "content hash i1" in text
    made = text[text.index("made from"):text.index("settings of")]
    assert [ln.split()[0] for ln in made.splitlines()[1:]] == ["filtered_cells", "fitted_posterior", "ranked_hits"]
    assert "settings of ranked_hits: mash_lfsr_thresh_day=0.01" in text and "num_steps" not in text
    assert main(["lineage", "--out", str(out), "--settings"]) == 0
    assert "settings of fitted_posterior: num_steps=150" in capsys.readouterr().out

    # A folder run with the local engine has no lineage database: one line says so.
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "fatebias_manifest.json").write_text("{}")
    assert main(["lineage", "--out", str(tmp_path / "local")]) == 2
    err = capsys.readouterr().err
    assert "no lineage database at" in err and "only runs with the dagster engine record lineage" in err and "fatebias_manifest.json lists" in err


def test_manifest_lock_leaves_no_file(tmp_path: Path) -> None:
    """The run folder's manifest lock is on the folder itself: nothing is left behind, even when the step fails."""
    from fatebias_dagster.runner import manifest_lock

    with pytest.raises(RuntimeError), manifest_lock(tmp_path / "out") as manifest:
        manifest.record("fit", "v1", [])
        raise RuntimeError("the step failed")
    with manifest_lock(tmp_path / "out") as manifest:
        assert manifest.steps["fit"]["version"] == "v1"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fatebias_manifest.json"]
