"""The DuckDB lineage store: a normalised schema written from Dagster's records, many writers, a held database."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from fatebias_dagster.lineage import (
    CHANGES_SQL,
    PROVENANCE_SQL,
    LineageDB,
    Materialization,
    Upstream,
    record_lineage,
    utcnow,
)

#: The run folder of the rows below (set per test where it matters).
OUT = "/out"


def mat(asset: str = "ranked_hits", version: str = "v1", run: str = "r1", up: tuple = (), **kw) -> Materialization:
    """A materialization of ``asset`` that read the (asset, run) pairs in ``up``."""
    now = kw.pop("finished_at", utcnow())
    out = kw.pop("out_dir", OUT)
    data = dict(
        run_id=run, asset_key=asset, partition_key="", event_id=None, step="rank", started_at=now, finished_at=now,
        code_version="c1", data_version=version, settings={"mash_lfsr_thresh_day": 0.05}, input_files=None,
        input_version=None, out_dir=out, output_paths=["/out/hits_ranked.csv"], row_counts={"hits_ranked.csv": 3},
        metrics={"n_hits": 2, "nan": float("nan")},
        upstream=[Upstream(a, r, "", None) for a, r in up],
    )
    data.update(kw)
    return Materialization(**data)


def test_settings_and_input_files_stored_once_per_distinct_value(tmp_path: Path) -> None:
    db = LineageDB(tmp_path / "lineage.duckdb")
    files = dict(input_files=["/d/a.h5ad", "/d/map.csv"], input_version="i1")
    assert db.record([mat("filtered_cells", run="r1", **files), mat("filtered_cells", run="r2", **files),
                      mat("ranked_hits", run="r1"), mat("ranked_hits", run="r2", settings={"mash_lfsr_thresh_day": 0.01})])
    assert db.query("SELECT count(*) AS n FROM input_files")["n"][0] == 1
    assert sorted(db.query("""SELECT "values" ->> 'mash_lfsr_thresh_day' AS t FROM settings""")["t"]) == ["0.01", "0.05"]
    rows = db.query("SELECT metrics ->> 'n_hits' AS n, metrics ->> 'nan' AS nan FROM materializations WHERE run_id = 'r1' "
                    "AND asset_key = 'ranked_hits'")
    assert rows.to_dict("records") == [{"n": "2", "nan": None}]
    assert "config" not in db.query("SELECT * FROM materializations LIMIT 0").columns  # no whole-config copies


def test_one_row_per_run_asset_partition(tmp_path: Path) -> None:
    """Recording a run twice (the hook, then ``fatebias run`` at the end) adds nothing; other runs
    and partitions add theirs."""
    db = LineageDB(tmp_path / "lineage.duckdb")
    for _ in range(2):
        db.record([mat(run="r1", up=[("mash_outputs", "r0")]), mat(run="r1", partition_key="p|0"), mat(run="r2")])
    rows = db.query("SELECT run_id, partition_key FROM materializations ORDER BY 1, 2")
    assert rows.values.tolist() == [["r1", ""], ["r1", "p|0"], ["r2", ""]]
    assert db.query("SELECT count(*) AS n FROM edges")["n"][0] == 1


def test_results_tables_keyed_by_materialization(tmp_path: Path) -> None:
    """A step retried within its run replaces its rows; a later run's table may gain columns."""
    db = LineageDB(tmp_path / "lineage.duckdb")
    keys = {"run_id": "r1", "asset_key": "ranked_hits", "partition_key": ""}
    db.append_results(keys, {"hits": pd.DataFrame({"gene": ["A", "B"], "active_days": [float("nan"), float("nan")]})})
    db.append_results(keys, {"hits": pd.DataFrame({"gene": ["A", "B"], "active_days": [float("nan"), float("nan")]})})
    db.append_results({**keys, "run_id": "r2"}, {"hits": pd.DataFrame({"gene": ["C"], "active_days": ["d1"], "extra": [1.5]})})
    got = db.query("SELECT run_id, gene, active_days, extra FROM hits ORDER BY run_id, gene")
    assert got["run_id"].tolist() == ["r1", "r1", "r2"] and got["active_days"].tolist()[-1] == "d1"
    assert got["extra"].isna().tolist() == [True, True, False]


WRITER = textwrap.dedent(
    """
    import sys
    import pandas as pd
    from tests.dagster.test_lineage import mat
    from fatebias_dagster.lineage import LineageDB
    db = LineageDB(sys.argv[1])
    for i in range(int(sys.argv[3])):
        run = f"{sys.argv[2]}-{i}"
        db.record([mat(run=run)])
        db.append_results({"run_id": run, "asset_key": "ranked_hits", "partition_key": ""}, {"hits": pd.DataFrame({"gene": ["A", "B"]})})
    """
)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Two processes writing at the same time: every row and every results row arrives."""
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
    """A DuckDB shell holding the file: the write is spooled, not lost, and applied on the next access."""
    path = tmp_path / "lineage.duckdb"
    db = LineageDB(path, timeout_s=0.5)
    db.record([mat(run="before")])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert db.record([mat(run="while-held")]) is False
        assert db.append_results({"run_id": "while-held", "asset_key": "ranked_hits", "partition_key": ""},
                                 {"hits": pd.DataFrame({"gene": ["A"]})}) is False
        assert len(list(db.spool_dir.glob("*.json"))) == 2
    finally:
        holder.communicate("\n", timeout=30)
    assert db.query("SELECT run_id FROM materializations ORDER BY finished_at")["run_id"].tolist() == ["before", "while-held"]
    assert db.query("SELECT count(*) AS n FROM hits")["n"][0] == 1
    assert not list(db.spool_dir.glob("*.json"))


def chain_lineage(db: LineageDB, run: str, hits_version: str, threshold: float, input_version: str, when=None) -> None:
    """A run of load -> fit -> rank, each reading the previous one."""
    when = when or utcnow()
    files = dict(input_files=["/d/a.h5ad", "/d/map.csv"], input_version=input_version)
    db.record([
        mat("filtered_cells", f"L{input_version}", run, step="load", settings={"Kmax": 9}, finished_at=when, **files),
        mat("fitted_posterior", f"F{input_version}", run, up=[("filtered_cells", run)], step="fit",
            settings={"num_steps": 150}, finished_at=when + timedelta(seconds=1)),
        mat("ranked_hits", hits_version, run, up=[("fitted_posterior", run)], settings={"mash_lfsr_thresh_day": threshold},
            finished_at=when + timedelta(seconds=2)),
    ])


def test_readme_queries(tmp_path: Path) -> None:
    """The provenance query walks the edges back from the latest hit list (across runs: a hit list
    re-ranked from last week's fit); the changes query compares with the hit list of a week ago."""
    db = LineageDB(tmp_path / "lineage.duckdb")
    chain_lineage(db, "old", "R1", 0.05, "i0", when=utcnow() - timedelta(days=8))
    chain_lineage(db, "mid", "R2", 0.05, "i1", when=utcnow() - timedelta(days=1))
    # today only ranking reran, reading yesterday's fit
    db.record([mat("ranked_hits", "R3", "new", up=[("fitted_posterior", "mid")], settings={"mash_lfsr_thresh_day": 0.01})])
    prov = db.query(PROVENANCE_SQL)
    assert prov["asset_key"].tolist() == ["filtered_cells", "fitted_posterior", "ranked_hits"]
    assert prov["run_id"].tolist() == ["mid", "mid", "new"] and prov["data_version"].tolist() == ["Li1", "Fi1", "R3"]
    assert list(prov["input_files"][0]) == ["/d/a.h5ad", "/d/map.csv"] and prov["input_version"][0] == "i1"
    assert '"mash_lfsr_thresh_day":0.01' in prov["settings"][2].replace(" ", "")
    changes = db.query(CHANGES_SQL)
    assert dict(zip(changes["what"], zip(changes["last_week"], changes["now"], strict=True), strict=True)) == {
        "input files": ("i0", "i1"),
        "mash_lfsr_thresh_day": ("0.05", "0.01"),
    }


def test_record_run_from_dagster_event_log(tmp_path: Path) -> None:
    """Rows and edges come from Dagster's records: the input event pointers of each materialization."""
    from fatebias_dagster.runner import lineage_metadata

    db = LineageDB(tmp_path / "lineage.duckdb")

    def md(step: str, **kw) -> dict:
        return lineage_metadata(step=step, db=db, out_dir=tmp_path, started_at=utcnow(), settings={"s": step}, **kw)

    @dg.asset(hooks={record_lineage})
    def up() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion("U"), metadata=md("up", version="U", input_files=["/f"], input_version="i"))

    @dg.asset(deps=[up], hooks={record_lineage})
    def down() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion("D"), metadata=md("down", version="D", metrics={"n": 1}))

    with dg.DagsterInstance.ephemeral() as instance:
        first = dg.materialize([up, down], instance=instance)
        second = dg.materialize([up, down], instance=instance, selection=[down])
    rows = db.query("SELECT run_id, asset_key, data_version, code_version IS NOT NULL AS c, step FROM materializations ORDER BY event_id")
    assert rows.values.tolist() == [[first.run_id, "up", "U", True, "up"], [first.run_id, "down", "D", True, "down"],
                                    [second.run_id, "down", "D", True, "down"]]
    edges = db.query("SELECT run_id, upstream_asset_key, upstream_run_id, upstream_data_version FROM edges ORDER BY run_id = ?",
                     [second.run_id])
    assert edges.values.tolist() == [[first.run_id, "up", first.run_id, "U"], [second.run_id, "up", first.run_id, "U"]]
    assert db.query("SELECT files FROM input_files")["files"].map(list).tolist() == [["/f"]]


def test_query_without_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no lineage database"):
        LineageDB(tmp_path / "none.duckdb").query("SELECT 1")


def test_fatebias_lineage_prints_what_made_the_hit_list(tmp_path: Path, capsys, monkeypatch) -> None:
    """``fatebias lineage``: the latest hit list of the folder, its inputs and every asset it was built from."""
    from fatebias_core.cli import main

    monkeypatch.delenv("FATEBIAS_LINEAGE_DB", raising=False)
    out = (tmp_path / "results").resolve()
    monkeypatch.setattr(sys.modules[__name__], "OUT", str(out))
    db = LineageDB(out / "lineage.duckdb")
    chain_lineage(db, "r0", "R1", 0.05, "i0", when=utcnow() - timedelta(days=1))
    db.record([mat("ranked_hits", "R2", "r2", up=[("fitted_posterior", "r0")], settings={"mash_lfsr_thresh_day": 0.01})])
    db.record([mat("ranked_hits", "X", "rx", out_dir=str(tmp_path / "other"))])  # another folder, later

    assert main(["lineage", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"latest hit list of {out}: ranked_hits version R2" in text and "Dagster run r2" in text
    assert "/d/a.h5ad" in text and "/d/map.csv" in text and "content hash i0" in text
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
    """The folder's manifest lock is on the folder itself: nothing is left behind, even when the step fails."""
    from fatebias_dagster.runner import manifest_lock

    with pytest.raises(RuntimeError), manifest_lock(tmp_path / "out") as manifest:
        manifest.record("fit", "v1", [])
        raise RuntimeError("the step failed")
    with manifest_lock(tmp_path / "out") as manifest:
        assert manifest.steps["fit"]["version"] == "v1"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fatebias_manifest.json"]


def test_readme_lineage_query_is_the_one_behind_fatebias_lineage(tmp_path: Path) -> None:
    """The README's SQL answers "which inputs and settings made this hit list" as PROVENANCE_SQL does."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme[readme.index("```sql", readme.index("## The platform (Dagster)")) + len("```sql"):]
    sql = block[: block.index("```")].strip()
    db = LineageDB(tmp_path / "lineage.duckdb")
    chain_lineage(db, "mid", "R2", 0.05, "i1", when=utcnow() - timedelta(days=1))
    db.record([mat("ranked_hits", "R3", "new", up=[("fitted_posterior", "mid")], settings={"mash_lfsr_thresh_day": 0.01})])
    got, expected = db.query(sql.rstrip(";")), db.query(PROVENANCE_SQL)
    pd.testing.assert_frame_equal(got, expected)
    assert got["asset_key"].tolist() == ["filtered_cells", "fitted_posterior", "ranked_hits"]
    assert list(got["input_files"][0]) == ["/d/a.h5ad", "/d/map.csv"]
