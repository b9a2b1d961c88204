"""Upstream of the chain: the experiment's files and the settings each step reads.

* ``experiment``: an observable source for a real ``.h5ad`` + guide map; its data
  version is the files' content hash (:func:`fatebias_core.pipeline.graph.input_version`).
* ``settings/<step>``: observable sources, one per step, whose data version is the hash
  of the settings that step reads (:func:`fatebias_core.pipeline.graph.step_settings`).
* ``simulated_experiment``: in the demo deployment (a configuration that names no
  ``adata_path``), an asset that simulates the experiment with known truth into the
  demo folder (:func:`fatebias_core.simulate.simulate`); its data version is the
  content hash of the files it wrote. The study's partitioned copy uses the same code.

:func:`source_versions` computes what an observation would report, cheaply, so that the
change sensor (:mod:`fatebias_dagster.automation`) can report it without a run.
"""


import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from fatebias_core.config import FatebiasConfig
from fatebias_core.data.simulate import simulate
from fatebias_core.errors import InputDataError
from fatebias_core.hashing import json_hash
from fatebias_core.io import layout as run_files
from fatebias_core.pipeline.graph import STEPS, input_version, modules_version

from ..lineage import record_lineage, utcnow
from ..resources import (
    ChainSource,
    ClusterResource,
    ComputeResource,
    ExperimentConfig,
    LineageStore,
    MashBackend,
)
from ..runner import lineage_metadata, manifest_lock
from ..versions import (
    EXPERIMENT_KEY,
    SETTINGS_STEPS,
    SIMULATED_KEY,
    SIMULATION_SETTINGS,
    input_files,
    settings_key,
    settings_values,
    settings_version,
    watched_input_version,
)

SOURCE_CODE_VERSION = "1"
#: The simulator's code version: a hash of the sources it runs, as the chain's steps.
SIMULATE_CODE_VERSION = modules_version(("fatebias_core.data.simulate",))

SETTINGS_DESCRIPTIONS = {
    **{name: step.reads_settings for name, step in STEPS.items() if step.reads_settings},
    SIMULATION_SETTINGS: "sim_* settings and the file layout the simulator writes",
}


@dataclass(frozen=True)
class SourceVersion:
    """What an observation of one source reports."""

    version: str
    metadata: dict[str, Any]


def source_versions(
    experiment: ExperimentConfig, compute: ComputeResource, mash: MashBackend
) -> dict[dg.AssetKey, SourceVersion]:
    """The current data version of every source of the main chain.

    The experiment's files are hashed only when they exist (in the demo they are made by
    ``simulated_experiment``, which is not a source).
    """
    folder = experiment.run_folder(None, **compute.overrides(), **mash.overrides())
    config = folder.config
    out: dict[dg.AssetKey, SourceVersion] = {}
    demo = experiment.is_demo()
    steps = [*SETTINGS_STEPS, SIMULATION_SETTINGS] if demo else list(SETTINGS_STEPS)
    base = experiment.base_config()
    for step in steps:
        cfg = base if step == SIMULATION_SETTINGS else config
        values = settings_values(cfg, step)
        out[settings_key(step)] = SourceVersion(
            settings_version(cfg, step), {"settings": dg.MetadataValue.json(values), "source": _source(experiment)}
        )
    if not demo:
        files = input_files(config)
        missing = [f for f in files if not Path(f).exists()]
        if not missing:
            out[EXPERIMENT_KEY] = SourceVersion(
                watched_input_version(config),
                {
                    "files": dg.MetadataValue.json(files),
                    "bytes": dg.MetadataValue.json({Path(f).name: Path(f).stat().st_size for f in files}),
                },
            )
    return out


def _source(experiment: ExperimentConfig) -> dg.MetadataValue:
    return dg.MetadataValue.text(experiment.config_path or "built-in demo defaults")


def build_sources(demo: bool, automation_condition: dg.AutomationCondition | None = None) -> list[Any]:
    """The observable sources of the main chain (and the demo's simulated experiment, with
    ``automation_condition``)."""
    steps = [*SETTINGS_STEPS, SIMULATION_SETTINGS] if demo else list(SETTINGS_STEPS)

    # One observation op per source: a multi-spec observable source is not executed by
    # asset jobs in this Dagster version.
    sources: list[Any] = [_settings_source(step) for step in steps]
    if demo:
        sources.append(
            build_simulated_experiment(
                SIMULATED_KEY, settings_dep=settings_key(SIMULATION_SETTINGS), automation_condition=automation_condition
            )
        )
        return sources

    @_observable(
        name="observe_experiment",
        specs=[
            dg.AssetSpec(
                EXPERIMENT_KEY,
                description="The experiment's files (AnnData .h5ad and guide map CSV) named by the configuration; "
                "data version = their content hash, so new data make the whole chain stale.",
                group_name="experiment",
                code_version=SOURCE_CODE_VERSION,
                kinds={"anndata"},
            )
        ],
    )
    def observe_experiment(
        experiment: ExperimentConfig, compute: ComputeResource, mash: MashBackend
    ) -> Iterator[dg.ObserveResult]:
        sv = source_versions(experiment, compute, mash).get(EXPERIMENT_KEY)
        if sv is None:
            missing = [f for f in input_files(experiment.chain_config()) if not Path(f).exists()]
            raise InputDataError(f"experiment file not found: {missing[0]}")
        yield dg.ObserveResult(asset_key=EXPERIMENT_KEY, data_version=dg.DataVersion(sv.version), metadata=sv.metadata)

    sources.append(observe_experiment)
    return sources


def _observable(**kwargs: Any):
    """``multi_observable_source_asset`` (beta in this Dagster version; its warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.multi_observable_source_asset(**kwargs)


def _settings_source(step: str) -> dg.AssetsDefinition:
    key = settings_key(step)

    @_observable(
        name=f"observe_settings_{step}",
        specs=[
            dg.AssetSpec(
                key,
                description=f"Settings read by the {step} step ({SETTINGS_DESCRIPTIONS[step]}); "
                "data version = their hash, so editing them makes exactly the assets that read them stale.",
                group_name="settings",
                code_version=SOURCE_CODE_VERSION,
                kinds={"yaml"},
            )
        ],
    )
    def observe_settings(
        experiment: ExperimentConfig, compute: ComputeResource, mash: MashBackend
    ) -> Iterator[dg.ObserveResult]:
        sv = source_versions(experiment, compute, mash)[key]
        yield dg.ObserveResult(asset_key=key, data_version=dg.DataVersion(sv.version), metadata=sv.metadata)

    return observe_settings


def simulation_version(config: FatebiasConfig) -> str:
    """Version of a simulation: the simulator's code version and the settings it reads."""
    payload = {"code": SIMULATE_CODE_VERSION, "settings": settings_version(config, SIMULATION_SETTINGS)}
    return json_hash(payload)


def build_simulated_experiment(
    key: dg.AssetKey,
    *,
    settings_dep: dg.AssetKey | None = None,
    partitions_def: dg.PartitionsDefinition | None = None,
    group_name: str = "experiment",
    automation_condition: dg.AutomationCondition | None = None,
) -> dg.AssetsDefinition:
    """An asset that simulates an experiment with known truth (the demo, or a study partition).

    The simulation is reused when the folder's manifest records one made with the same
    settings and its files exist. The data version is the files' content hash, the
    version the chain's loading step folds into its own.
    """

    @dg.asset(
        key=key,
        deps=[settings_dep] if settings_dep else [],
        partitions_def=partitions_def,
        group_name=group_name,
        code_version=SIMULATE_CODE_VERSION,
        kinds={"anndata", "numpy"},
        automation_condition=automation_condition,
        description="A simulated time-course Perturb-seq experiment with known truth: "
        "adata.h5ad (CellRank 2 layout), guide_map.csv, truth_daywise.csv, truth_guides.csv, "
        "sim_metadata.yaml and a run-ready config.yaml.",
        hooks={record_lineage},
    )
    def simulated_experiment(
        context: AssetExecutionContext,
        experiment: ChainSource,
        compute: ComputeResource,
        mash: MashBackend,
        lineage: LineageStore,
        cluster: ClusterResource,
    ) -> dg.MaterializeResult:
        started = utcnow()
        partition = context.partition_key if context.has_partition_key else None
        sim_config, folder_path = experiment.simulation_target(partition)
        run_folder = experiment.run_folder(partition, **compute.overrides(), **mash.overrides())
        counts, outputs = _simulate(context, cluster, sim_config, folder_path)
        data_version = input_version(run_folder.config)
        common = lineage_metadata(
            step="simulate", version=data_version, db=lineage.db(run_folder.lineage_db), out_dir=folder_path, started_at=started,
            settings=settings_values(sim_config, SIMULATION_SETTINGS), outputs=outputs, metrics=counts,
            input_files=input_files(run_folder.config), input_version=data_version,
        )
        md = {k: dg.MetadataValue.int(int(v)) for k, v in counts.items() if isinstance(v, int)}
        md["truly active gene/days"] = dg.MetadataValue.json(counts.get("truly_active_gene_days", {}))
        md["folder"] = dg.MetadataValue.path(str(folder_path))
        return dg.MaterializeResult(data_version=dg.DataVersion(data_version), metadata={**common, **md})

    return simulated_experiment


def _simulate(
    context: AssetExecutionContext, cluster: ClusterResource, sim_config: FatebiasConfig, folder: Path
) -> tuple[dict[str, Any], list[Path]]:
    """Simulate into ``folder`` unless its manifest records a simulation with the same settings."""
    version = simulation_version(sim_config)
    names = (run_files.SIM_ADATA, run_files.SIM_GUIDE_MAP, run_files.truth_daywise_file(), run_files.SIM_TRUTH_GUIDES, run_files.SIM_METADATA, run_files.SIM_CONFIG)
    outputs = [folder / n for n in names]
    with manifest_lock(folder) as manifest:
        if manifest.is_current("simulate", version):
            context.log.info(f"simulation in {folder} is current (version {version}); reused")
            return manifest.steps["simulate"].get("metrics", {}), outputs
    folder.mkdir(parents=True, exist_ok=True)
    sim = cluster.call(context, step="simulate", workdir=folder, fn=simulate, args=(sim_config, folder))
    context.log.info(sim.describe())
    counts = {**sim.counts, "truly_active_gene_days": sim.active_gene_days}
    with manifest_lock(folder) as manifest:
        manifest.record("simulate", version, list(sim.paths.values()), counts)
    return counts, outputs
