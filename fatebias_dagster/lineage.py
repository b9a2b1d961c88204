"""The lineage store: one DuckDB file per deployment, one row per asset materialization.

Every materialization appends a row to ``materializations`` (asset, partition, run,
times, code version, configuration hash, the step's settings, data version, the data
versions of its upstream assets and of everything further up, the input files and
their content hash, output paths, row counts and headline metrics). Tabular results
(hits, mash tables, recovery scores) are appended to tables of their own, each row
keyed by the run and data version that made it.

DuckDB lets one process write a database file at a time. Writers here therefore take
an exclusive OS lock on a sidecar ``<db>.lock`` file (``fcntl.flock``) and hold a
connection only for the few milliseconds of one append. When the file stays locked by
some other program for longer than ``timeout_s`` (someone holding the database open
read-write in the DuckDB shell, say), the row goes to a spool folder ``<db>.spool/``
and is written by the next append or query: no row is lost and no run fails because
somebody is reading the lineage. The lock is advisory and local: on a cluster, keep the
database on a file system with working ``flock`` (local disk, or NFSv4 / Lustre with
locking enabled).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from fatebias_core.io import write_text

MATERIALIZATIONS_DDL = """
CREATE TABLE IF NOT EXISTS materializations (
    recorded_at       TIMESTAMPTZ DEFAULT current_timestamp,
    asset_key         VARCHAR NOT NULL,
    partition_key     VARCHAR,
    run_id            VARCHAR NOT NULL,
    step              VARCHAR,
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    reused            BOOLEAN,
    code_version      VARCHAR,
    data_version      VARCHAR,
    config_hash       VARCHAR,
    settings          JSON,
    upstream_versions JSON,
    lineage           JSON,
    input_files       VARCHAR[],
    input_version     VARCHAR,
    out_dir           VARCHAR,
    output_paths      VARCHAR[],
    row_counts        JSON,
    metrics           JSON,
    config            JSON
)
"""

#: Key columns put in front of every results table.
RESULT_KEYS = ("run_id", "asset_key", "partition_key", "data_version", "recorded_at")

#: The README's example: which input files and settings produced the latest hit list.
#: ``lineage`` maps every asset a row was built from (itself included) to its data
#: version; each is joined to the row that made that version (a computed one before a reuse).
PROVENANCE_SQL = """
WITH hit AS (                                   -- the latest hit list
    SELECT * FROM materializations
    WHERE asset_key = 'ranked_hits' ORDER BY finished_at DESC LIMIT 1
)
SELECT m.asset_key, m.data_version, m.finished_at AS made_at, m.run_id,
       m.input_files, m.input_version, m.settings
FROM hit JOIN materializations m
  ON m.out_dir = hit.out_dir
 AND m.data_version = hit.lineage ->> m.asset_key  -- every asset the hit list was built from
QUALIFY row_number() OVER (PARTITION BY m.asset_key ORDER BY m.reused, m.finished_at DESC) = 1
ORDER BY made_at, m.asset_key
"""

#: The README's example: what changed between the latest hit list and the one current a week ago.
CHANGES_SQL = """
WITH hits AS (SELECT * FROM materializations WHERE asset_key = 'ranked_hits'),
now AS (SELECT * FROM hits ORDER BY finished_at DESC LIMIT 1),
before AS (SELECT * FROM hits WHERE finished_at <= now() - INTERVAL 7 DAY
           ORDER BY finished_at DESC LIMIT 1)
SELECT 'input files' AS what, before.input_version AS last_week, now.input_version AS now
FROM now, before WHERE before.input_version IS DISTINCT FROM now.input_version
UNION ALL
SELECT key, before.config ->> key, now.config ->> key
FROM now, before, unnest(json_keys(now.config)) AS k(key)
WHERE (before.config ->> key) IS DISTINCT FROM (now.config ->> key)
"""


@dataclass(frozen=True)
class LineageRow:
    """One materialization of one asset (a row of ``materializations``).

    Attributes
    ----------
    asset_key
        The asset's key as a ``/``-joined string (``ranked_hits``, ``study/ranked_hits``).
    run_id
        The Dagster run that materialized it.
    step
        The fatebias_core step behind the asset (``fit``, ``rank``, ...).
    started_at, finished_at
        UTC times of the step.
    data_version
        The step version (fatebias_core.pipeline.graph) reported to Dagster as the data version.
    code_version
        The step's code version.
    config_hash
        Hash of the whole configuration in effect.
    settings
        The settings this step reads (name -> value).
    upstream_versions
        Data version of each direct upstream asset (settings and experiment sources included).
    lineage
        Data version of every chain asset upstream of this one, transitively (asset -> version).
    input_files, input_version
        The experiment's files the chain was built from, and their content hash.
    out_dir
        The run folder.
    output_paths
        Files the step wrote.
    row_counts
        Rows per written table (file name -> rows).
    metrics
        Headline numbers (number of hits, final ELBO, ...).
    config
        The whole configuration (name -> value).
    partition_key
        The partition (``scenario|seed`` for simulations), None for the main chain.
    reused
        True when the step's files were current and reused rather than recomputed.
    """

    asset_key: str
    run_id: str
    step: str
    started_at: datetime
    finished_at: datetime
    data_version: str
    code_version: str
    config_hash: str
    settings: dict[str, Any]
    upstream_versions: dict[str, str]
    lineage: dict[str, str]
    input_files: list[str]
    input_version: str
    out_dir: str
    output_paths: list[str]
    row_counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    partition_key: str | None = None
    reused: bool = False

    def to_record(self) -> dict[str, Any]:
        """The row as column -> value, JSON columns serialised."""
        rec = asdict(self)
        for key in ("settings", "upstream_versions", "lineage", "row_counts", "metrics", "config"):
            rec[key] = json.dumps(_json_safe(rec[key]), sort_keys=True)
        for key in ("started_at", "finished_at"):
            rec[key] = rec[key].isoformat()
        return rec

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> LineageRow:
        """Inverse of :meth:`to_record` (spooled rows)."""
        data = dict(rec)
        for key in ("settings", "upstream_versions", "lineage", "row_counts", "metrics", "config"):
            data[key] = json.loads(data[key])
        for key in ("started_at", "finished_at"):
            data[key] = datetime.fromisoformat(data[key])
        return cls(**data)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


class LineageLockTimeout(RuntimeError):
    """The database stayed locked by another program past the timeout."""


class LineageDB:
    """Append-only lineage and results tables in one DuckDB file, safe for many writers.

    Parameters
    ----------
    path
        The DuckDB file (created with its folder on the first append).
    timeout_s
        How long an append waits for a database held open by another program before it
        spools the row instead.
    """

    def __init__(self, path: str | Path, timeout_s: float = 30.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.spool_dir = self.path.with_name(self.path.name + ".spool")

    # ------------------------------------------------------------------ writing
    def append(self, row: LineageRow, tables: Mapping[str, pd.DataFrame] | None = None) -> bool:
        """Append ``row`` and its results ``tables`` (table name -> rows) in one transaction.

        Returns True when written to the database, False when spooled (the database was
        held by another program; the next append or query writes it).
        """
        tables = dict(tables or {})
        try:
            with self._connect(write=True) as con:
                self._drain_spool(con)
                self._insert(con, row, tables)
            return True
        except LineageLockTimeout:
            self._spool(row, tables)
            return False

    def flush(self) -> int:
        """Write spooled rows into the database; return how many were written."""
        if not self._spooled():
            return 0
        with self._connect(write=True) as con:
            return self._drain_spool(con)

    # ------------------------------------------------------------------ reading
    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        """Run ``sql`` (read-only) and return the result; spooled rows are written first."""
        if not self.path.exists():
            raise FileNotFoundError(f"no lineage database at {self.path}")
        with contextlib.suppress(LineageLockTimeout):
            self.flush()
        with self._connect(write=False) as con:
            return con.execute(sql, params or []).df()

    def tables(self) -> list[str]:
        """Names of the tables in the database."""
        return list(self.query("SELECT table_name FROM information_schema.tables ORDER BY 1")["table_name"])

    # ------------------------------------------------------------------ internals
    @contextlib.contextmanager
    def _connect(self, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection under the sidecar file lock (exclusive for writers)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout_s
        with open(self.lock_path, "a+") as lock:
            self._flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH, deadline)
            try:
                con = self._open(write, deadline)
                try:
                    if write:
                        con.execute(MATERIALIZATIONS_DDL)
                    yield con
                finally:
                    con.close()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _flock(self, lock, mode: int, deadline: float) -> None:
        delay = 0.01
        while True:
            try:
                fcntl.flock(lock, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LineageLockTimeout(f"{self.lock_path} stayed locked for {self.timeout_s:g} s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _open(self, write: bool, deadline: float) -> duckdb.DuckDBPyConnection:
        # Our own writers are serialised by the flock; this retry covers other programs
        # (a DuckDB shell) holding the file itself.
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=not write)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    if "lock" in str(exc).lower():
                        raise LineageLockTimeout(str(exc)) from None
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _insert(self, con: duckdb.DuckDBPyConnection, row: LineageRow, tables: Mapping[str, pd.DataFrame]) -> None:
        rec = row.to_record()
        cols = list(rec)
        con.execute("BEGIN TRANSACTION")
        try:
            # One row per materialization: a step that ran again in the same run with the same
            # result (its Dask worker was lost after the row was written) adds no second row.
            seen = con.execute(
                "SELECT count(*) FROM materializations WHERE run_id = ? AND asset_key = ? "
                "AND partition_key IS NOT DISTINCT FROM ? AND data_version IS NOT DISTINCT FROM ?",
                [row.run_id, row.asset_key, row.partition_key, row.data_version],
            ).fetchone()[0]
            if seen:
                con.execute("COMMIT")
                return
            con.execute(
                f"INSERT INTO materializations ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                [rec[c] for c in cols],
            )
            for name, df in tables.items():
                self._insert_table(con, name, self._keyed(df, row))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @staticmethod
    def _keyed(df: pd.DataFrame, row: LineageRow) -> pd.DataFrame:
        keys = pd.DataFrame(
            {
                "run_id": row.run_id,
                "asset_key": row.asset_key,
                "partition_key": row.partition_key,
                "data_version": row.data_version,
                "recorded_at": pd.Timestamp(row.finished_at),
            },
            index=df.index,
        )
        return pd.concat([keys, df.drop(columns=[c for c in RESULT_KEYS if c in df.columns])], axis=1)

    @staticmethod
    def _insert_table(con: duckdb.DuckDBPyConnection, name: str, df: pd.DataFrame) -> None:
        """Append ``df`` to table ``name``, creating it or adding new columns as needed."""
        ident = '"' + name.replace('"', '""') + '"'
        con.register("_incoming", df)
        try:
            exists = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
            ).fetchone()[0]
            if not exists:
                con.execute(f"CREATE TABLE {ident} AS SELECT * FROM _incoming")
                return
            have = {r[0]: r[1] for r in con.execute(f"DESCRIBE {ident}").fetchall()}
            for col, typ, *_ in con.execute("DESCRIBE _incoming").fetchall():
                if col not in have:
                    con.execute(f'ALTER TABLE {ident} ADD COLUMN "{col}" {typ}')
                elif have[col] != typ and have[col] != "VARCHAR" and typ == "VARCHAR":
                    # A column that was all-missing (read as numbers) now holds text.
                    con.execute(f'ALTER TABLE {ident} ALTER "{col}" TYPE VARCHAR')
            con.execute(f"INSERT INTO {ident} BY NAME SELECT * FROM _incoming")
        finally:
            con.unregister("_incoming")

    # ------------------------------------------------------------------ spool
    def _spooled(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.json")) if self.spool_dir.exists() else []

    def _spool(self, row: LineageRow, tables: Mapping[str, pd.DataFrame]) -> Path:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        payload = {
            "row": row.to_record(),
            "tables": {k: json.loads(v.to_json(orient="split", date_format="iso")) for k, v in tables.items()},
        }
        return write_text(json.dumps(payload), self.spool_dir / name)

    def _drain_spool(self, con: duckdb.DuckDBPyConnection) -> int:
        written = 0
        for path in self._spooled():
            payload = json.loads(path.read_text())
            tables = {k: pd.DataFrame(**v) for k, v in payload["tables"].items()}
            self._insert(con, LineageRow.from_record(payload["row"]), tables)
            path.unlink()
            written += 1
        return written


#: What made the latest hit list of a run folder: every asset upstream of the newest
#: ``ranked_hits`` row, at the data version that hit list was made from (the README's query).
HIT_LINEAGE_SQL = """
WITH hit AS (SELECT * FROM materializations WHERE asset_key = 'ranked_hits' AND (? IS NULL OR out_dir = ?)
             ORDER BY finished_at DESC LIMIT 1)
SELECT m.asset_key, m.data_version, m.finished_at AS made_at, m.run_id, m.reused,
       m.input_files, m.input_version, m.settings, m.out_dir
FROM hit JOIN materializations m
  ON m.out_dir = hit.out_dir AND m.data_version = hit.lineage ->> m.asset_key
QUALIFY row_number() OVER (PARTITION BY m.asset_key ORDER BY m.reused, m.finished_at DESC) = 1
ORDER BY made_at, m.asset_key
"""


def hit_list_lineage(db: LineageDB, out_dir: str | Path | None = None) -> pd.DataFrame:
    """The materializations that made the latest hit list (of ``out_dir``, else of any folder).

    Returns
    -------
    pandas.DataFrame
        One row per asset, oldest first: ``asset_key, data_version, made_at, run_id,
        reused, input_files, input_version, settings`` (JSON text), ``out_dir``; empty
        when no hit list was recorded.
    """
    folder = None if out_dir is None else str(Path(out_dir).resolve())
    return db.query(HIT_LINEAGE_SQL, [folder, folder])


def format_hit_lineage(table: pd.DataFrame, db_path: Path, all_settings: bool = False) -> str:
    """A console answer to "what made this hit list": inputs, each asset's version and run, settings."""
    if table.empty:
        return f"{db_path}: no hit list (ranked_hits) recorded for this run folder"
    hit = table[table["asset_key"] == "ranked_hits"]
    hit = hit.iloc[0] if len(hit) else table.iloc[-1]
    files = list(hit["input_files"]) if hit["input_files"] is not None else []
    lines = [
        f"latest hit list of {hit['out_dir']}: ranked_hits version {hit['data_version']}, "
        f"made {_when(hit['made_at'])} in Dagster run {hit['run_id']}",
        f"input files (content hash {hit['input_version']}):",
        *[f"  {f}" for f in files],
        "made from (asset, data version, made at, run):",
    ]
    width = max(len(str(a)) for a in table["asset_key"])
    for row in table.itertuples():
        lines.append(f"  {row.asset_key:<{width}}  {row.data_version}  {_when(row.made_at)}  {row.run_id}")
    shown = table if all_settings else table[table["asset_key"] == "ranked_hits"]
    for row in shown.itertuples():
        settings = json.loads(row.settings) if isinstance(row.settings, str) else (row.settings or {})
        text = ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items()) or "(none)"
        lines.append(f"settings of {row.asset_key}: {text}")
    if not all_settings:
        lines.append("  (--settings: the settings of every asset)")
    lines.append(
        f"lineage database: {db_path}; to go further, query it with the README's SQL from Python: "
        f"duckdb.connect('{db_path}', read_only=True).sql(...)"
    )
    return "\n".join(lines)


def _when(value: Any) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    try:
        return pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError):
        try:
            return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M:%S")
        except (TypeError, ValueError):
            return str(value)
