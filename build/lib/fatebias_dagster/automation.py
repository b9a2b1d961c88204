"""Reruns on new data: a change sensor, declarative automation and an optional schedule.

* ``experiment_change_sensor`` (running by default, every ``FATEBIAS_OBSERVE_INTERVAL``
  seconds, 30 by default) hashes the experiment's files and each step's settings, and
  reports an observation of every source whose data version changed. No run is
  started for that: hashing happens in the sensor.
* Every chain asset carries :data:`RERUN_ON_NEW_DATA`: once it has been materialized,
  it is rematerialized when one of its upstream assets updates (a source observed with
  a new data version, or an upstream asset requested in the same tick) or its code
  version changed (an edit of a module its step runs), so one edit
  reruns exactly the stale assets, in one run. ``fatebias_automation``, the
  automation-condition sensor that evaluates it, runs by default and tags its runs
  ``gpu`` (one at a time, ``dagster.yaml``).
* ``nightly_refresh`` (stopped by default) materializes the chain every night at 03:00;
  every step is recomputed (use it to refresh from sources outside the change sensor's view).
"""

from __future__ import annotations

import os

import dagster as dg

from .assets.sources import source_versions
from .resources import ComputeResource, ExperimentConfig, MashBackend

OBSERVE_INTERVAL_ENV = "FATEBIAS_OBSERVE_INTERVAL"
AUTOMATION_INTERVAL_ENV = "FATEBIAS_AUTOMATION_INTERVAL"
DATA_VERSION_TAG = "dagster/data_version"  # the tag Dagster reads an observation's data version from

RERUN_ON_NEW_DATA = (
    (
        (dg.AutomationCondition.any_deps_updated() | dg.AutomationCondition.code_version_changed()).since_last_handled()
        & ~dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    )
    .with_label("rerun when its files or settings change")
)


def _interval(env: str, default: int) -> int:
    return max(int(os.environ.get(env) or default), 1)


def _latest_version(instance: dg.DagsterInstance, key: dg.AssetKey) -> str | None:
    record = instance.get_latest_data_version_record(key, is_source=True)
    event = record.asset_observation if record is not None else None
    return None if event is None else event.tags.get(DATA_VERSION_TAG)


def build_change_sensor() -> dg.SensorDefinition:
    """The sensor that reports new data versions of the experiment's files and settings."""

    @dg.sensor(
        name="experiment_change_sensor",
        minimum_interval_seconds=_interval(OBSERVE_INTERVAL_ENV, 30),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Hashes the experiment's files and each step's settings; reports an observation for every "
        "source whose data version changed, which makes the assets that read it stale.",
    )
    def experiment_change_sensor(
        context: dg.SensorEvaluationContext, experiment: ExperimentConfig, compute: ComputeResource, mash: MashBackend
    ) -> dg.SensorResult:
        # Compared with the instance's latest observation (not a cursor), so an observation
        # made by a run (the chain job observes its sources first) is not reported twice.
        events = [
            dg.AssetObservation(asset_key=key, metadata=sv.metadata, tags={DATA_VERSION_TAG: sv.version})
            for key, sv in source_versions(experiment, compute, mash).items()
            if sv.version != _latest_version(context.instance, key)
        ]
        if not events:
            return dg.SensorResult(skip_reason="no change to the experiment's files or settings")
        context.log.info("new data versions: " + ", ".join(e.asset_key.to_user_string() for e in events))
        return dg.SensorResult(asset_events=events)

    return experiment_change_sensor


def build_automation_sensor(target: dg.AssetSelection) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the chain's automation conditions."""
    return dg.AutomationConditionSensorDefinition(
        "fatebias_automation",
        target=target,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=_interval(AUTOMATION_INTERVAL_ENV, 30),
        run_tags={"gpu": "1"},
        description="Reruns the chain's stale assets when the experiment's files or settings change.",
    )


def build_schedule(job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    """A nightly refresh of the chain (stopped until switched on in the UI)."""
    return dg.ScheduleDefinition(
        name="nightly_refresh",
        job=job,
        cron_schedule="0 3 * * *",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Materializes the whole chain at 03:00 (every step recomputed).",
    )
