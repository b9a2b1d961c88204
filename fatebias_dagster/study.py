"""The simulation-study code location: ``dagster dev`` loads it beside the main chain.

Separate from :mod:`fatebias_dagster` because its assets are partitioned (a Dagster
asset selection such as ``--select '*'`` must share one partitioning), and so that
``dagster asset materialize -m fatebias_dagster --select '*'`` materializes exactly the
chain. A backfill over ``<variant>|<seed>`` partitions (``simulation_study`` job, or the
UI's *Materialize* on the partitioned assets) simulates and analyses many experiments;
include ``recovery_summary`` to gather their scores.

Environment: as :mod:`fatebias_dagster.definitions`, plus ``FATEBIAS_STUDY`` (a sweep
spec YAML or preset: ``stress``, the default; ``prior``; ``tau``) and
``FATEBIAS_STUDY_DIR`` (default ``<out_dir>/study``).
"""

from __future__ import annotations

import dagster as dg

from .assets.recovery import GROUP, build_recovery_assets
from .definitions import chain_resources
from .executors import executor_from_env
from .resources import (
    ExperimentConfig,
    StudyConfig,
)
from .resources.env import resolved

STUDY_JOB = "simulation_study"


def build_study_definitions(study: StudyConfig | None = None) -> dg.Definitions:
    """The study's definitions (resources from the environment unless ``study`` is given)."""
    study = study or StudyConfig.from_env(ExperimentConfig.from_env())
    # The partitions are fixed when the definitions load: read the study named now (an
    # EnvVar field is resolved here).
    assets = build_recovery_assets(resolved(study).load())
    partitioned = dg.AssetSelection.groups(GROUP) - dg.AssetSelection.assets("recovery_summary")
    return dg.Definitions(
        assets=assets,
        resources=chain_resources(study),
        jobs=[
            dg.define_asset_job(
                STUDY_JOB,
                selection=partitioned,
                description="Simulate, analyse and score one <variant>|<seed> partition; backfill it over many.",
            )
        ],
        executor=executor_from_env(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The study's code location (workspace.yaml, ``-m fatebias_dagster.study``)."""
    return build_study_definitions()
