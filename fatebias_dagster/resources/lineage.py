"""The lineage store resource: the deployment's DuckDB file (see :mod:`fatebias_dagster.lineage`)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..lineage import LineageDB

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
        """The resource as the environment configures it."""
        return cls(path=os.environ.get(LINEAGE_ENV) or None)

    def db(self, default: Path) -> LineageDB:
        """The lineage database (``default`` when no path is configured)."""
        return LineageDB(Path(self.path) if self.path else default, timeout_s=self.timeout_s)
