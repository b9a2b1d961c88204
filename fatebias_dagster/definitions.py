"""The main code location: the chain on the experiment named by ``FATEBIAS_CONFIG``.

Environment (every variable optional):

=============================  ==============================================================
``FATEBIAS_CONFIG``            fatebias YAML. Unset, or naming no ``adata_path``: the simulated
                               demo (``simulated_experiment`` writes it to ``FATEBIAS_DEMO_DIR``,
                               default ``./fatebias_demo``).
``FATEBIAS_DEVICE``            torch device of the fit (auto | cpu | cuda).
``FATEBIAS_MASH_BACKEND``      native | r.
``FATEBIAS_LINEAGE_DB``        lineage DuckDB file (default ``<out_dir>/lineage.duckdb``).
``FATEBIAS_EXECUTOR``          multiprocess | in_process | slurm | dask | k8s (:mod:`.executors`).
``FATEBIAS_SLURM``             with slurm: the slurm: block's YAML (steps as Slurm jobs).
``FATEBIAS_OBSERVE_INTERVAL``  seconds between checks of the files and settings (30).
``FATEBIAS_AUTOMATION_INTERVAL``  seconds between automation evaluations (30).
``FATEBIAS_LOG_LEVEL``         DEBUG: keep Dagster's beta/preview warnings (hidden otherwise).
=============================  ==============================================================
"""

from __future__ import annotations

import os
import warnings

import dagster as dg

from .assets.chain import ChainOptions, build_chain
from .assets.sources import build_sources
from .automation import (
    RERUN_ON_NEW_DATA,
    build_automation_sensor,
    build_change_sensor,
    build_schedule,
)
from .executors import executor_from_env, fit_op_tags, fit_pool
from .io_manager import RunFolderIOManager
from .jobs import build_chain_job, build_observe_job
from .resources import (
    ChainSource,
    ClusterResource,
    ComputeResource,
    ExperimentConfig,
    LineageStore,
    MashBackend,
)
from .resources.env import resolved
from .runner import ChainLayout
from .versions import EXPERIMENT_KEY, SIMULATED_KEY

# Dagster's own beta/preview notices (asset selections, data versions) are not for the
# biologist running the chain; they stay visible with FATEBIAS_LOG_LEVEL=DEBUG.
if os.environ.get("FATEBIAS_LOG_LEVEL", "INFO").upper() != "DEBUG":
    for _category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=_category)


def chain_resources(experiment: ChainSource | None = None) -> dict[str, object]:
    """The resources of a chain (the main one, or the study's with ``experiment`` its study), from the
    environment unless ``experiment`` is given."""
    experiment = experiment or ExperimentConfig.from_env()
    cluster = ClusterResource.from_env()
    return {
        "experiment": experiment,
        "compute": ComputeResource.from_env(),
        "mash": MashBackend.from_env(),
        "lineage": LineageStore.from_env(),
        "cluster": cluster,
        "io_manager": RunFolderIOManager(experiment=experiment, defer=cluster.remote),
    }


def chain_assets(demo: bool, automation: bool = True) -> list:
    """Sources and chain assets of the main code location."""
    layout = ChainLayout(root=SIMULATED_KEY if demo else EXPERIMENT_KEY)
    condition = RERUN_ON_NEW_DATA if automation else None
    return [
        *build_sources(demo, automation_condition=condition),
        *build_chain(layout, ChainOptions(automation_condition=condition, fit_op_tags=fit_op_tags(), fit_pool=fit_pool())),
    ]


def build_definitions(
    experiment: ExperimentConfig | None = None, automation: bool = True, executor: dg.ExecutorDefinition | None = None
) -> dg.Definitions:
    """The main code location's definitions.

    Parameters
    ----------
    experiment
        The experiment resource (default: from the environment).
    automation
        Whether the chain assets carry the rerun-on-new-data automation condition.
    executor
        The executor (default: from ``FATEBIAS_EXECUTOR``).
    """
    resources = chain_resources(experiment)
    # The graph's shape (demo or real files) is fixed when the definitions load: read the
    # configuration named now (an EnvVar field is resolved here).
    demo = resolved(resources["experiment"]).is_demo()
    assets = chain_assets(demo, automation=automation)
    chain_job = build_chain_job()
    return dg.Definitions(
        assets=assets,
        resources=resources,
        jobs=[chain_job, build_observe_job()],
        schedules=[build_schedule(chain_job)],
        sensors=[build_change_sensor(), build_automation_sensor(dg.AssetSelection.all())],
        executor=executor or executor_from_env(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The main code location, loaded by ``dagster dev`` (workspace.yaml) and ``-m fatebias_dagster``."""
    return build_definitions()
