"""The lineage store: one DuckDB file per deployment, written from what Dagster records.

Schema (normalised):

``materializations``
    One row per asset materialization, keyed by ``(run_id, asset_key, partition_key)``
    (``partition_key`` is ``''`` for an unpartitioned asset): Dagster's event id, the
    step, start and end time, code version, data version, the settings and input files
    it was made from (ids into the next two tables), the run folder, output paths, row
    counts and headline metrics.
``settings``
    Each distinct set of settings a step read, once: ``settings_id`` (hash) -> ``values`` (JSON).
``input_files``
    Each distinct set of experiment files, once: ``input_id`` (their content hash) -> ``files``.
``edges``
    One row per upstream materialization (or source observation) a materialization read:
    ``(run_id, asset_key, partition_key)`` -> ``(upstream_run_id, upstream_asset_key,
    upstream_partition_key, upstream_data_version)``, from each materialization's data
    provenance (``dagster.DataProvenance``: the input events Dagster recorded with it).

:func:`record_run` fills these from the Dagster instance's event log (every chain asset
runs it as a success hook, and ``fatebias run`` once more at the end). Tabular results
(hits, mash tables, recovery scores) are appended by the assets to tables of their own,
keyed by the same ``(run_id, asset_key, partition_key)``.

DuckDB lets one process write a database file at a time. Writers here therefore take an
exclusive OS lock on a sidecar ``<db>.lock`` file (``fcntl.flock``) and hold a
connection only for the few milliseconds of one write. When the file stays locked by
some other program for longer than ``timeout_s`` (someone holding the database open
read-write in the DuckDB shell, say), the write goes to a spool folder ``<db>.spool/``
and is applied by the next write or query: nothing is lost and no run fails because
somebody is reading the lineage. The lock is advisory and local: on a cluster, keep the
database on a file system with working ``flock`` (local disk, or NFSv4 / Lustre with
locking enabled).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pandas as pd

from fatebias_core.hashing import json_hash
from fatebias_core.io import json_ready, write_text

SCHEMA = (
    'CREATE TABLE IF NOT EXISTS settings (settings_id VARCHAR PRIMARY KEY, "values" JSON NOT NULL)',
    "CREATE TABLE IF NOT EXISTS input_files (input_id VARCHAR PRIMARY KEY, files VARCHAR[] NOT NULL)",
    """CREATE TABLE IF NOT EXISTS materializations (
    run_id         VARCHAR NOT NULL,
    asset_key      VARCHAR NOT NULL,
    partition_key  VARCHAR NOT NULL,
    event_id       BIGINT,
    step           VARCHAR,
    started_at     TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ,
    code_version   VARCHAR,
    data_version   VARCHAR,
    settings_id    VARCHAR,
    input_id       VARCHAR,
    out_dir        VARCHAR,
    output_paths   VARCHAR[],
    row_counts     JSON,
    metrics        JSON,
    PRIMARY KEY (run_id, asset_key, partition_key)
)""",
    """CREATE TABLE IF NOT EXISTS edges (
    run_id                  VARCHAR NOT NULL,
    asset_key               VARCHAR NOT NULL,
    partition_key           VARCHAR NOT NULL,
    upstream_asset_key      VARCHAR NOT NULL,
    upstream_run_id         VARCHAR,
    upstream_partition_key  VARCHAR,
    upstream_data_version   VARCHAR,
    PRIMARY KEY (run_id, asset_key, partition_key, upstream_asset_key)
)""",
)

#: Key columns put in front of every results table.
RESULTS_KEYS = ("run_id", "asset_key", "partition_key")

#: Metadata keys of a materialization that lineage is read from (written by the assets).
MD_STEP = "step"
MD_STARTED = "started at"
MD_SETTINGS = "settings"
MD_METRICS = "metrics"
MD_OUTPUTS = "outputs"
MD_ROW_COUNTS = "row counts"
MD_RUN_FOLDER = "run folder"
MD_INPUT_FILES = "input files"
MD_INPUT_VERSION = "input version"
MD_LINEAGE_DB = "lineage database"
#: The materialization's data version, as the asset gave it (the lineage reads it from here,
#: not from Dagster's system tags).
MD_VERSION = "data version"

def _provenance_sql(which_hits: str) -> str:
    """The provenance query of the newest ``ranked_hits`` materialization matching ``which_hits`` (a SQL condition)."""
    return f"""
WITH RECURSIVE made_from(run_id, asset_key, partition_key) AS (
    (SELECT run_id, asset_key, partition_key FROM materializations   -- the latest hit list
     WHERE asset_key = 'ranked_hits' AND {which_hits} ORDER BY finished_at DESC LIMIT 1)
    UNION                                                           -- and all it was made from
    SELECT e.upstream_run_id, e.upstream_asset_key, e.upstream_partition_key
    FROM edges e JOIN made_from m USING (run_id, asset_key, partition_key)
)
SELECT m.asset_key, m.data_version, m.finished_at AS made_at, m.run_id,
       f.files AS input_files, m.input_id AS input_version, s."values" AS settings, m.out_dir
FROM made_from JOIN materializations m USING (run_id, asset_key, partition_key)
LEFT JOIN settings s USING (settings_id)
LEFT JOIN input_files f USING (input_id)
ORDER BY made_at, m.asset_key
"""


#: The README's example: which input files and settings produced the latest hit list.
#: It walks the edges back from the newest ``ranked_hits`` materialization.
PROVENANCE_SQL = _provenance_sql("TRUE")

#: The README's example: what changed between the latest hit list and the one current a week ago.
CHANGES_SQL = """
WITH RECURSIVE hits AS (SELECT * FROM materializations WHERE asset_key = 'ranked_hits'),
ends AS (
    (SELECT 'now' AS which, run_id, asset_key, partition_key FROM hits ORDER BY finished_at DESC LIMIT 1)
    UNION ALL
    (SELECT 'last_week', run_id, asset_key, partition_key FROM hits
     WHERE finished_at <= now() - INTERVAL 7 DAY ORDER BY finished_at DESC LIMIT 1)
),
made_from(which, run_id, asset_key, partition_key) AS (
    SELECT * FROM ends
    UNION
    SELECT m.which, e.upstream_run_id, e.upstream_asset_key, e.upstream_partition_key
    FROM edges e JOIN made_from m USING (run_id, asset_key, partition_key)
),
used AS (      -- every setting and the input files each hit list was made from
    SELECT which, 'input files' AS what, m.input_id AS value
    FROM made_from JOIN materializations m USING (run_id, asset_key, partition_key)
    WHERE m.input_id IS NOT NULL
    UNION
    SELECT which, k.key, s."values" ->> k.key
    FROM made_from JOIN materializations m USING (run_id, asset_key, partition_key)
    JOIN settings s USING (settings_id), unnest(json_keys(s."values")) AS k(key)
)
SELECT what, max(value) FILTER (which = 'last_week') AS last_week, max(value) FILTER (which = 'now') AS now
FROM used GROUP BY what
HAVING count(DISTINCT which) = 2 AND last_week IS DISTINCT FROM now
ORDER BY what = 'input files' DESC, what
"""

#: What made the latest hit list of a run folder (``fatebias lineage``): :data:`PROVENANCE_SQL`
#: for the newest ``ranked_hits`` made in that folder (any folder when the parameter is NULL).
HIT_LINEAGE_SQL = _provenance_sql("($1 IS NULL OR out_dir = $1)")


@dataclass(frozen=True)
class Upstream:
    """A materialization (or source observation) that another one read."""

    asset_key: str
    run_id: str | None
    partition_key: str | None
    data_version: str | None


@dataclass(frozen=True)
class Materialization:
    """One asset materialization as the lineage database stores it."""

    run_id: str
    asset_key: str
    partition_key: str
    event_id: int | None
    step: str | None
    started_at: datetime | None
    finished_at: datetime
    code_version: str | None
    data_version: str | None
    settings: dict[str, Any] | None
    input_files: list[str] | None
    input_version: str | None
    out_dir: str | None
    output_paths: list[str] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    upstream: list[Upstream] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-safe data (spooled writes)."""
        data = json_ready(asdict(self))
        for key in ("started_at", "finished_at"):
            value = getattr(self, key)
            data[key] = None if value is None else value.isoformat()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Materialization:
        """Inverse of :meth:`to_json`."""
        d = dict(data)
        for key in ("started_at", "finished_at"):
            d[key] = None if d[key] is None else datetime.fromisoformat(d[key])
        d["upstream"] = [Upstream(**u) for u in d["upstream"]]
        return cls(**d)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def settings_id(values: Mapping[str, Any]) -> str:
    """The id of a set of settings: a hash of their values."""
    return json_hash(json_ready(dict(values)))


class LineageLockTimeout(RuntimeError):
    """The database stayed locked by another program past the timeout."""


class LineageDB:
    """The lineage and results tables in one DuckDB file, safe for many writers.

    Parameters
    ----------
    path
        The DuckDB file (created with its folder on the first write).
    timeout_s
        How long a write waits for a database held open by another program before it
        spools the write instead.
    """

    def __init__(self, path: str | Path, timeout_s: float = 30.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.spool_dir = self.path.with_name(self.path.name + ".spool")

    # ------------------------------------------------------------------ writing
    def record(self, mats: Sequence[Materialization]) -> bool:
        """Write materializations (a row already there is kept). False when spooled."""
        return self._write({"materializations": [m.to_json() for m in mats]})

    def append_results(self, keys: Mapping[str, str], tables: Mapping[str, pd.DataFrame]) -> bool:
        """Replace the rows of ``keys`` (run, asset, partition) in each results table. False when spooled."""
        payload = {k: json.loads(v.to_json(orient="split", date_format="iso")) for k, v in tables.items()}
        return self._write({"results": {"keys": dict(keys), "tables": payload}})

    def flush(self) -> int:
        """Apply spooled writes; return how many were applied."""
        if not self._spooled():
            return 0
        with self._connect(write=True) as con:
            return self._drain_spool(con)

    def _write(self, payload: dict[str, Any]) -> bool:
        try:
            with self._connect(write=True) as con:
                self._drain_spool(con)
                self._apply(con, payload)
            return True
        except LineageLockTimeout:
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
            write_text(json.dumps(payload), self.spool_dir / name)
            return False

    # ------------------------------------------------------------------ reading
    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        """Run ``sql`` (read-only) and return the result; spooled writes are applied first."""
        if not self.path.exists():
            raise FileNotFoundError(f"no lineage database at {self.path}")
        with contextlib.suppress(LineageLockTimeout):
            self.flush()
        with self._connect(write=False) as con:
            return con.execute(sql, params or []).df()

    def tables(self) -> list[str]:
        """Names of the tables in the database."""
        return list(self.query("SELECT table_name FROM information_schema.tables ORDER BY 1")["table_name"])

    # ------------------------------------------------------------------ connections
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
                        for ddl in SCHEMA:
                            con.execute(ddl)
                    yield con
                finally:
                    con.close()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _flock(self, lock: Any, mode: int, deadline: float) -> None:
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
                locked = "lock" in str(exc).lower()
                if locked and time.monotonic() > deadline:
                    raise LineageLockTimeout(str(exc)) from None
                if not locked:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    # ------------------------------------------------------------------ applying writes
    def _apply(self, con: duckdb.DuckDBPyConnection, payload: Mapping[str, Any]) -> None:
        con.execute("BEGIN TRANSACTION")
        try:
            for data in payload.get("materializations", []):
                _insert_materialization(con, Materialization.from_json(data))
            if "results" in payload:
                res = payload["results"]
                for name, split in res["tables"].items():
                    _replace_results(con, name, res["keys"], pd.DataFrame(**split))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _spooled(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.json")) if self.spool_dir.exists() else []

    def _drain_spool(self, con: duckdb.DuckDBPyConnection) -> int:
        written = 0
        for path in self._spooled():
            self._apply(con, json.loads(path.read_text()))
            path.unlink()
            written += 1
        return written


def _insert_materialization(con: duckdb.DuckDBPyConnection, m: Materialization) -> None:
    """Insert one materialization, its settings and input files (once each) and its edges."""
    sid = None
    if m.settings is not None:
        sid = settings_id(m.settings)
        con.execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT DO NOTHING", [sid, json.dumps(json_ready(m.settings), sort_keys=True)])
    if m.input_version and m.input_files is not None:
        con.execute("INSERT INTO input_files VALUES (?, ?) ON CONFLICT DO NOTHING", [m.input_version, m.input_files])
    key = [m.run_id, m.asset_key, m.partition_key]
    con.execute(
        "INSERT INTO materializations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [*key, m.event_id, m.step, m.started_at, m.finished_at, m.code_version, m.data_version, sid,
         m.input_version if m.input_files is not None else None, m.out_dir, m.output_paths,
         json.dumps(json_ready(m.row_counts)), json.dumps(json_ready(m.metrics))],
    )
    for up in m.upstream:
        con.execute(
            "INSERT INTO edges VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [*key, up.asset_key, up.run_id, up.partition_key, up.data_version],
        )


def _replace_results(con: duckdb.DuckDBPyConnection, name: str, keys: Mapping[str, str], df: pd.DataFrame) -> None:
    """Replace the rows of ``keys`` in results table ``name`` by ``df`` (a retried step writes once)."""
    ident = '"' + name.replace('"', '""') + '"'
    keyed = pd.concat(
        [pd.DataFrame({k: keys[k] for k in RESULTS_KEYS}, index=df.index), df.drop(columns=[c for c in RESULTS_KEYS if c in df])],
        axis=1,
    )
    con.register("_incoming", keyed)
    try:
        exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0]
        if not exists:
            con.execute(f"CREATE TABLE {ident} AS SELECT * FROM _incoming")
            return
        where = " AND ".join(f"{k} = ?" for k in RESULTS_KEYS)
        con.execute(f"DELETE FROM {ident} WHERE {where}", [keys[k] for k in RESULTS_KEYS])
        _widen(con, ident)
        con.execute(f"INSERT INTO {ident} BY NAME SELECT * FROM _incoming")
    finally:
        con.unregister("_incoming")


def _widen(con: duckdb.DuckDBPyConnection, ident: str) -> None:
    """Add columns a later run's table has (results tables follow the step's files, which may gain columns)."""
    have = {r[0]: r[1] for r in con.execute(f"DESCRIBE {ident}").fetchall()}
    for col, typ, *_ in con.execute("DESCRIBE _incoming").fetchall():
        if col not in have:
            con.execute(f'ALTER TABLE {ident} ADD COLUMN "{col}" {typ}')
        elif have[col] != typ and have[col] != "VARCHAR" and typ == "VARCHAR":
            # A column that was all-missing (read as numbers) now holds text.
            con.execute(f'ALTER TABLE {ident} ALTER "{col}" TYPE VARCHAR')


# --------------------------------------------------------------------------- from Dagster's event log
def _metadata_values(mat: dg.AssetMaterialization) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def _upstream(instance: dg.DagsterInstance, provenance: dg.DataProvenance | None) -> list[Upstream]:
    """The events a materialization read: its data provenance's input events, found again by storage id."""
    if provenance is None:
        return []
    out: list[Upstream] = []
    for key, storage_id in sorted(provenance.input_storage_ids.items(), key=lambda kv: kv[0].to_user_string()):
        version = provenance.input_data_versions.get(key)
        run_id = partition = None
        if storage_id is not None:
            flt = dg.AssetRecordsFilter(asset_key=key, storage_ids=[storage_id])
            recs = instance.fetch_materializations(flt, limit=1).records or instance.fetch_observations(flt, limit=1).records
            if recs:
                run_id, partition = recs[0].run_id, recs[0].partition_key or ""
        out.append(Upstream(key.to_user_string(), run_id, partition, None if version is None else version.value))
    return out


def _timestamp(value: Any) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(float(value), timezone.utc)


def materialization_of(instance: dg.DagsterInstance, record: Any) -> tuple[str | None, Materialization]:
    """A Dagster materialization event record as (lineage database path, :class:`Materialization`)."""
    entry = record.event_log_entry
    mat = entry.asset_materialization
    md = _metadata_values(mat)
    tags = entry.tags or {}
    provenance = dg.DataProvenance.from_tags(tags)  # Dagster's public reading of its provenance tags
    return md.get(MD_LINEAGE_DB), Materialization(
        run_id=entry.run_id,
        asset_key=mat.asset_key.to_user_string(),
        partition_key=mat.partition or "",
        event_id=record.storage_id,
        step=md.get(MD_STEP),
        started_at=_timestamp(md.get(MD_STARTED)),
        finished_at=_timestamp(entry.timestamp),
        code_version=None if provenance is None else provenance.code_version,
        data_version=md.get(MD_VERSION),
        settings=md.get(MD_SETTINGS),
        input_files=md.get(MD_INPUT_FILES),
        input_version=md.get(MD_INPUT_VERSION),
        out_dir=md.get(MD_RUN_FOLDER),
        output_paths=list(md.get(MD_OUTPUTS) or []),
        row_counts=dict(md.get(MD_ROW_COUNTS) or {}),
        metrics=dict(md.get(MD_METRICS) or {}),
        upstream=_upstream(instance, provenance),
    )


def record_run(instance: dg.DagsterInstance, run_id: str, step_key: str | None = None, timeout_s: float = 30.0) -> int:
    """Write the materializations of a run (of one step) into their lineage databases.

    Each materialization names its database in its metadata (``lineage database``);
    one without (an asset that keeps no lineage) is skipped. Writing twice adds nothing.

    Returns
    -------
    int
        The number of materializations written.
    """
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    by_db: dict[str, list[Materialization]] = {}
    for rec in records:
        if step_key is not None and rec.event_log_entry.step_key != step_key:
            continue
        path, mat = materialization_of(instance, rec)
        if path:
            by_db.setdefault(path, []).append(mat)
    for path, mats in by_db.items():
        LineageDB(path, timeout_s=timeout_s).record(mats)
    return sum(len(m) for m in by_db.values())


@dg.success_hook(name="record_lineage")
def record_lineage(context: dg.HookContext) -> None:
    """Write the step's materializations into the lineage database once the step succeeded."""
    record_run(context.instance, context.run_id, step_key=context.step_key)


# --------------------------------------------------------------------------- the console answer
def hit_list_lineage(db: LineageDB, out_dir: str | Path | None = None) -> pd.DataFrame:
    """The materializations that made the latest hit list (of ``out_dir``, else of any folder).

    Returns
    -------
    pandas.DataFrame
        One row per asset, oldest first: ``asset_key, data_version, made_at, run_id,
        input_files, input_version, settings`` (JSON text); empty when no hit list was recorded.
    """
    folder = None if out_dir is None else str(Path(out_dir).resolve())
    return db.query(HIT_LINEAGE_SQL, [folder])


def format_hit_lineage(table: pd.DataFrame, db_path: Path, all_settings: bool = False) -> str:
    """A console answer to "what made this hit list": inputs, each asset's version and run, settings."""
    if table.empty:
        return f"{db_path}: no hit list (ranked_hits) recorded for this run folder"
    hit = table[table["asset_key"] == "ranked_hits"]
    hit = hit.iloc[0] if len(hit) else table.iloc[-1]
    loaded = table[table["input_version"].notna()]
    files = list(loaded["input_files"].iloc[0]) if len(loaded) else []
    input_version = loaded["input_version"].iloc[0] if len(loaded) else "unknown"
    lines = [
        f"latest hit list of {hit['out_dir']}: ranked_hits version {hit['data_version']}, "
        f"made {_when(hit['made_at'])} in Dagster run {hit['run_id']}",
        f"input files (content hash {input_version}):",
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
