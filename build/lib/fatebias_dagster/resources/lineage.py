"""The lineage store resource: the deployment's DuckDB file (see :mod:`fatebias_dagster.lineage`)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from ..lineage import LineageDB
from .env import env_or

LINEAGE_ENV = "FATEBIAS_LINEAGE_DB"


class LineageStore(dg.ConfigurableResource):
    """Where materializations are recorded: one DuckDB file per deployment."""

    path: str | None = Field(
        default=None,
        description="DuckDB file of the lineage (FATEBIAS_LINEAGE_DB). Unset: <out_dir>/lineage.duckdb.",
    )
    timeout_s: float = Field(
        default=30.0,
        description="Seconds an append waits for a database held open by another program before spooling the row.",
    )

    @classmethod
    def from_env(cls) -> LineageStore:
        """The resource with its path from ``FATEBIAS_LINEAGE_DB`` (a ``dg.EnvVar``) when set."""
        return cls(path=env_or(LINEAGE_ENV, None))

    def db(self, default: Path) -> LineageDB:
        """The lineage database (``default`` when no path is configured).

        Outside a run (``fatebias lineage``, the engine) the ``EnvVar`` is resolved here;
        inside one Dagster has resolved it already.
        """
        resolved = self.process_config_and_initialize()
        return LineageDB(Path(resolved.path) if resolved.path else default, timeout_s=resolved.timeout_s)
