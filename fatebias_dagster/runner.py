"""How a chain asset runs its fatebias_core step.

Every chain asset body is: start a :class:`StepRun`, call one fatebias_core step
function through :meth:`StepRun.execute`, describe the result. The run

* resolves the run folder and effective settings from the resources (partition-aware);
* computes the step versions exactly as ``fatebias run`` does (fatebias_core.pipeline.graph) and
  reuses the step's files when the run folder's manifest says they are current (so a
  folder made by ``fatebias run --engine local`` is reused by the platform and the other
  way round), recording the step in the manifest when it runs;
* reports the step version as the asset's data version;
* appends the lineage row (and any results tables) to the deployment's DuckDB file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import dagster as dg
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.pipeline.graph import UPSTREAM, Manifest

from .lineage import LineageRow, utcnow
from .resources.experiment import RunFolder
from .versions import (
    CODE_VERSIONS,
    STEP_ASSETS,
    input_files,
    input_version,
    settings_values,
    settings_version,
    step_versions,
    upstream_closure,
)

T = TypeVar("T")

#: Resources every chain asset uses.
CHAIN_RESOURCES = frozenset({"experiment", "compute", "mash", "lineage"})


@dataclass(frozen=True)
class ChainLayout:
    """The asset keys of one copy of the chain.

    Attributes
    ----------
    prefix
        Key prefix (``()`` for the main chain, ``("study",)`` for the simulation study).
    root
        The asset the chain's data come from: ``experiment`` (observable source of
        real files), ``simulated_experiment`` (the demo) or ``study/simulated_experiment``.
    settings_sources
        Whether each step depends on a ``settings/<step>`` observable source.
    """

    prefix: tuple[str, ...] = ()
    root: dg.AssetKey = dg.AssetKey("experiment")
    settings_sources: bool = True

    def key(self, name: str) -> dg.AssetKey:
        """The key of chain asset ``name``."""
        return dg.AssetKey([*self.prefix, name])

    def op_name(self, name: str) -> str:
        """A unique op name for asset ``name``."""
        return "__".join([*self.prefix, name])

    def keys_of(self, step: str) -> list[dg.AssetKey]:
        """The asset keys made by ``step``."""
        return [self.key(n) for n in STEP_ASSETS[step]]

    def settings_deps(self, step: str) -> list[dg.AssetKey]:
        """The settings source ``step`` depends on (none without settings sources)."""
        from .versions import SETTINGS_STEPS, settings_key

        return [settings_key(step)] if self.settings_sources and step in SETTINGS_STEPS else []


@contextlib.contextmanager
def manifest_lock(out_dir: Path) -> Iterator[Manifest]:
    """The run folder's manifest, read fresh under an exclusive lock.

    Steps of one run may finish at the same time (the multiprocess and Dask executors
    run the fit and the diagnostics side by side); the lock keeps one step's record
    from overwriting another's. The lock is taken on the run folder itself
    (``flock`` on its directory descriptor), so no lock file is left behind, whether
    the run succeeds or fails.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield Manifest.open(out_dir)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@dataclass
class Executed(Generic[T]):
    """The value of a step and whether its files were reused."""

    value: T | None
    reused: bool


@dataclass
class StepRun:
    """One materialization of the asset(s) of a fatebias_core step."""

    context: dg.AssetExecutionContext
    step: str
    layout: ChainLayout
    folder: RunFolder
    versions: dict[str, str]
    started_at: datetime = field(default_factory=utcnow)

    @classmethod
    def start(cls, context: dg.AssetExecutionContext, step: str, layout: ChainLayout) -> StepRun:
        """Resolve the run folder, effective settings and step versions for ``context``."""
        res = context.resources
        partition = context.partition_key if context.has_partition_key else None
        overrides = {**res.compute.overrides(), **res.mash.overrides()}
        folder = res.experiment.run_folder(partition, **overrides)
        folder.out_dir.mkdir(parents=True, exist_ok=True)
        return cls(context, step, layout, folder, step_versions(folder.config))

    @property
    def config(self) -> FatebiasConfig:
        return self.folder.config

    @property
    def out_dir(self) -> Path:
        return self.folder.out_dir

    @property
    def version(self) -> str:
        """This step's version: the data version of its assets."""
        return self.versions[self.step]

    # ------------------------------------------------------------------ executing
    def execute(
        self,
        make: Callable[[], T],
        outputs: Callable[[], Sequence[Path]],
        reuse: Callable[[], T] | None = None,
        metrics: Callable[[T], dict[str, Any]] | None = None,
        always: bool = False,
    ) -> Executed[T]:
        """Run the step, or reuse its files when the manifest says they are current.

        Parameters
        ----------
        make
            Calls the fatebias_core step function.
        outputs
            The files the step writes (the manifest checks they still exist).
        reuse
            Rebuilds the value from the files when the step is reused (None: no value).
        metrics
            Headline numbers kept in the manifest.
        always
            Run even when current (loading: cheap, and its value is needed); it still
            counts as reused when it was current.
        """
        with manifest_lock(self.out_dir) as manifest:
            current = manifest.is_current(self.step, self.version)
        if current and not always:
            self.context.log.info(f"{self.step}: files in {self.out_dir} are current (version {self.version}); reused")
            return Executed(reuse() if reuse else None, reused=True)
        value = make()
        with manifest_lock(self.out_dir) as manifest:
            manifest.record(self.step, self.version, list(outputs()), metrics(value) if metrics else None)
        # A step run although current (loading) made nothing new: it counts as reused.
        return Executed(value, reused=current)

    # ------------------------------------------------------------------ recording
    def _manifest_steps(self) -> dict[str, dict]:
        with manifest_lock(self.out_dir) as manifest:
            return dict(manifest.steps)

    def upstream_versions(self, steps: Mapping[str, dict]) -> dict[str, str]:
        """Data versions of the direct upstream assets (chain assets as made on disk, sources now)."""
        out: dict[str, str] = {}
        for up in UPSTREAM[self.step]:
            version = steps.get(up, {}).get("version", self.versions[up])
            for key in self.layout.keys_of(up):
                out[key.to_user_string()] = version
        for key in self.layout.settings_deps(self.step):
            out[key.to_user_string()] = settings_version(self.config, self.step)
        if self.step == "load":
            out[self.layout.root.to_user_string()] = input_version(self.config)
        return out

    def lineage(self, steps: Mapping[str, dict]) -> dict[str, str]:
        """Data version of this step's assets and of every chain asset upstream, as made on disk."""
        out: dict[str, str] = {}
        for s in upstream_closure(self.step):
            version = self.version if s == self.step else steps.get(s, {}).get("version", self.versions[s])
            for key in self.layout.keys_of(s):
                out[key.to_user_string()] = version
        return out

    def record(
        self,
        reused: bool,
        outputs: Sequence[Path],
        metrics: Mapping[str, Any] | None = None,
        row_counts: Mapping[str, int] | None = None,
        tables: Mapping[str, pd.DataFrame] | None = None,
        asset_names: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Append the lineage row of each asset of the step; return the common UI metadata.

        ``tables`` (results tables) are written only when the step ran.
        """
        steps = self._manifest_steps()
        load = steps.get("load", {}).get("metrics", {})
        common: dict[str, Any] = {}
        for i, name in enumerate(asset_names or STEP_ASSETS[self.step]):
            common = append_lineage(
                self.context,
                self.folder,
                asset_key=self.layout.key(name),
                step=self.step,
                started_at=self.started_at,
                data_version=self.version,
                code_version=CODE_VERSIONS[self.step],
                settings=settings_values(self.config, self.step),
                upstream_versions=self.upstream_versions(steps),
                lineage=self.lineage(steps),
                input_files=load.get("input_files") or input_files(self.config),
                input_version=load.get("input_version") or input_version(self.config),
                outputs=outputs,
                reused=reused,
                metrics=metrics,
                row_counts=row_counts,
                # Results tables go with the first asset's row only, and only when computed.
                tables=tables if (i == 0 and not reused) else None,
            )
        return {**common, "step version": dg.MetadataValue.text(self.version)}


def append_lineage(
    context: dg.AssetExecutionContext,
    folder: RunFolder,
    *,
    asset_key: dg.AssetKey,
    step: str,
    started_at: datetime,
    data_version: str,
    code_version: str,
    settings: Mapping[str, Any],
    upstream_versions: Mapping[str, str],
    lineage: Mapping[str, str],
    input_files: Sequence[str],
    input_version: str,
    outputs: Sequence[Path],
    reused: bool = False,
    metrics: Mapping[str, Any] | None = None,
    row_counts: Mapping[str, int] | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Append one materialization's row (and results tables) to the lineage database.

    Returns the UI metadata every asset shows: run folder, reuse, lineage database.
    """
    db = context.resources.lineage.db(folder.lineage_db)
    row = LineageRow(
        asset_key=asset_key.to_user_string(),
        run_id=context.run.run_id,
        step=step,
        started_at=started_at,
        finished_at=utcnow(),
        data_version=data_version,
        code_version=code_version,
        config_hash=folder.config.hash(),
        settings=dict(settings),
        upstream_versions=dict(upstream_versions),
        lineage=dict(lineage),
        input_files=list(input_files),
        input_version=input_version,
        out_dir=str(folder.out_dir),
        output_paths=[str(p) for p in outputs],
        row_counts=dict(row_counts or {}),
        metrics=dict(metrics or {}),
        config=folder.config.model_dump(mode="json"),
        partition_key=folder.partition_key,
        reused=reused,
    )
    if not db.append(row, tables):
        context.log.warning(f"lineage database {db.path} is held by another program; row spooled to {db.spool_dir}")
    return {
        "run folder": dg.MetadataValue.path(str(folder.out_dir)),
        "reused": dg.MetadataValue.bool(reused),
        "lineage database": dg.MetadataValue.path(str(db.path)),
    }
