"""How a chain asset runs its fatebias_core step.

Every chain asset is made by one factory (:mod:`fatebias_dagster.assets.chain`) from
the step table (:data:`fatebias_core.pipeline.graph.STEPS`). Its body starts a
:class:`StepRun` (the run folder and effective settings of the partition, from the
typed resources), calls the step and reports the step's version as the data version of
its assets. Whether a step needs to run at all is Dagster's business (its data and
code versions); the body always computes.

The lineage database is filled from what Dagster records (:func:`fatebias_dagster.lineage.record_run`):
each materialization carries the machine-readable metadata made by :func:`lineage_metadata`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.io import json_ready
from fatebias_core.pipeline.chain import compute_step
from fatebias_core.pipeline.graph import Manifest, Step
from fatebias_core.types import Experiment

from . import lineage as lin
from .lineage import RESULTS_KEYS, LineageDB, utcnow
from .resources import ChainSource, ClusterResource, ComputeResource, LineageStore, MashBackend
from .resources.experiment import RunFolder
from .versions import (
    SETTINGS_STEPS,
    STEP_ASSETS,
    settings_key,
    step_versions,
)


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
        return [settings_key(step)] if self.settings_sources and step in SETTINGS_STEPS else []


# --------------------------------------------------------------------------- values
def asset_values(step: str, value: Any) -> dict[str, Any]:
    """A step's value as the values of its assets (loading: the cells and the guide embedding)."""
    if step == "load":
        return {"filtered_cells": (value.cells, value.summary), "guide_embeddings": value.guides}
    return {name: value for name in STEP_ASSETS[step]}


@dataclass(frozen=True)
class Deferred:
    """An upstream value left unloaded: the step's Slurm job rebuilds it from the run folder.

    The IO manager of a deployment whose steps run as Slurm jobs hands these to the
    assets, so that the submit host never loads the cells or the fit.
    """

    step: str


def step_value(step: str, values: Mapping[str, Any]) -> Any:
    """Inverse of :func:`asset_values`: a step's value from its assets' values."""
    if any(isinstance(v, Deferred) for v in values.values()):
        return Deferred(step)
    if step == "load":
        cells, summary = values["filtered_cells"]
        return Experiment(cells, values["guide_embeddings"], summary)
    return values[STEP_ASSETS[step][0]]


# --------------------------------------------------------------------------- one materialization
@dataclass(frozen=True)
class StepRun:
    """One materialization of the asset(s) of a fatebias_core step."""

    context: dg.AssetExecutionContext
    step: Step
    folder: RunFolder
    versions: dict[str, str]
    lineage: LineageStore
    cluster: ClusterResource
    started_at: datetime = field(default_factory=utcnow)

    @classmethod
    def start(
        cls,
        context: dg.AssetExecutionContext,
        step: Step,
        experiment: ChainSource,
        compute: ComputeResource,
        mash: MashBackend,
        lineage: LineageStore,
        cluster: ClusterResource,
    ) -> StepRun:
        """Resolve the run folder, effective settings and step versions for ``context``."""
        partition = context.partition_key if context.has_partition_key else None
        folder = experiment.run_folder(partition, **compute.overrides(), **mash.overrides())
        folder.out_dir.mkdir(parents=True, exist_ok=True)
        return cls(context, step, folder, step_versions(folder.config), lineage, cluster)

    @property
    def config(self) -> FatebiasConfig:
        return self.folder.config

    @property
    def out_dir(self) -> Path:
        return self.folder.out_dir

    @property
    def version(self) -> str:
        """This step's version: the data version of its assets."""
        return self.versions[self.step.name]

    def compute(self, values: Mapping[str, Any]) -> Any:
        """The step's value, computed where the cluster resource says (here, or in a Slurm job).

        A Slurm job rebuilds the values it reads from the run folder, as does this process for
        :class:`Deferred` ones.
        """
        given = None if self.cluster.sends(self.step.name) else {k: v for k, v in values.items() if not isinstance(v, Deferred)}
        return self.cluster.call(
            self.context, step=self.step.name, workdir=self.out_dir, fn=compute_step,
            args=(self.step.name, self.config, self.out_dir, given),
        )

    @property
    def lineage_db(self) -> LineageDB:
        """The deployment's lineage database."""
        return self.lineage.db(self.folder.lineage_db)

    def metadata(self, outputs: Sequence[Path], metrics: Mapping[str, Any], **extra: Any) -> dict[str, dg.MetadataValue]:
        """The lineage metadata of this step's materializations (:func:`lineage_metadata`)."""
        return lineage_metadata(
            step=self.step.name, version=self.version, db=self.lineage_db, out_dir=self.out_dir, started_at=self.started_at,
            settings={k: self.config.model_dump(mode="json")[k] for k in self.step.settings},
            outputs=outputs, metrics=metrics, **extra,
        )

    def save_results(self, asset_key: dg.AssetKey, tables: Mapping[str, pd.DataFrame]) -> None:
        """Append results tables, keyed by (run, asset, partition), to the lineage database."""
        if tables:
            save_results(self.context, self.lineage_db, asset_key, self.folder.partition_key, tables)


def save_results(
    context: dg.AssetExecutionContext,
    db: LineageDB,
    asset_key: dg.AssetKey,
    partition_key: str | None,
    tables: Mapping[str, pd.DataFrame],
) -> None:
    """Append ``tables`` to ``db`` keyed by this run, ``asset_key`` and ``partition_key``."""
    keys = dict(zip(RESULTS_KEYS, (context.run.run_id, asset_key.to_user_string(), partition_key or ""), strict=True))
    if not db.append_results(keys, tables):
        context.log.warning(f"lineage database {db.path} is held by another program; results spooled to {db.spool_dir}")


def lineage_metadata(
    *,
    step: str,
    version: str,
    db: LineageDB,
    out_dir: Path,
    started_at: datetime,
    settings: Mapping[str, Any],
    outputs: Sequence[Path] = (),
    metrics: Mapping[str, Any] | None = None,
    row_counts: Mapping[str, int] | None = None,
    input_files: Sequence[str] | None = None,
    input_version: str | None = None,
) -> dict[str, dg.MetadataValue]:
    """The metadata of a materialization that :func:`fatebias_dagster.lineage.record_run` reads."""
    md: dict[str, dg.MetadataValue] = {
        lin.MD_STEP: dg.MetadataValue.text(step),
        lin.MD_VERSION: dg.MetadataValue.text(version),
        lin.MD_STARTED: dg.MetadataValue.timestamp(started_at.timestamp()),
        lin.MD_RUN_FOLDER: dg.MetadataValue.path(str(out_dir)),
        lin.MD_LINEAGE_DB: dg.MetadataValue.path(str(db.path)),
        lin.MD_SETTINGS: dg.MetadataValue.json(json_ready(dict(settings))),
        lin.MD_OUTPUTS: dg.MetadataValue.json([str(p) for p in outputs]),
        lin.MD_METRICS: dg.MetadataValue.json(json_ready(dict(metrics or {}))),
        lin.MD_ROW_COUNTS: dg.MetadataValue.json(dict(row_counts or {})),
    }
    if input_files is not None:
        md[lin.MD_INPUT_FILES] = dg.MetadataValue.json(list(input_files))
        md[lin.MD_INPUT_VERSION] = dg.MetadataValue.text(input_version or "")
    return md


@contextlib.contextmanager
def manifest_lock(out_dir: Path) -> Iterator[Manifest]:
    """A folder's manifest, read fresh under an exclusive lock (the simulation and study scores).

    The lock is taken on the folder itself (``flock`` on its directory descriptor), so
    no lock file is left behind, whether the step succeeds or fails.
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
