"""``fatebias run``/``demo`` through Dagster: the whole graph materialized in-process.

fatebias_core never imports Dagster: its command line finds this engine through the
``fatebias.engines`` entry point (``dagster = "fatebias_dagster.engine:run_chain"``).
The run observes the sources, then materializes the assets whose step the run
folder's manifest does not record at its version now (or whose files are gone): the
others are current and are not run at all. Each asset records itself in that manifest,
the one record both engines keep. The instance is persistent, so a later
``dagster dev`` shows the run: ``DAGSTER_HOME`` when set, else the run folder's own
``<out_dir>/dagster_home`` (:func:`dagster_home`). One instance per experiment: the
chain's asset keys are the same for every experiment, so two experiments sharing an
instance would be one asset graph to Dagster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from fatebias_core.checks.ntc import CalibrationFailed
from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import ConfigError, FatebiasError, FitError, InputDataError
from fatebias_core.io import layout as run_files
from fatebias_core.io import read_csv, write_text
from fatebias_core.pipeline.chain import ChainResult
from fatebias_core.pipeline.check import load_experiment_checked
from fatebias_core.pipeline.graph import ASSET_STEP, STEPS, Manifest, downstream, enabled_steps
from fatebias_core.pipeline.steps import write_load_files

from .definitions import build_definitions
from .jobs import CHAIN_JOB, OBSERVE_JOB
from .lineage import record_run
from .resources import ExperimentConfig, LineageStore
from .runner import ChainLayout
from .versions import step_versions

#: The folder, inside the run folder, of the instance ``fatebias run`` uses when ``DAGSTER_HOME`` is unset.
DAGSTER_HOME_DIR = "dagster_home"

_USER_ERRORS: dict[str, type[FatebiasError]] = {
    cls.__name__: cls for cls in (FatebiasError, ConfigError, InputDataError, FitError)
}
PATH_KEYS = ("adata_path", "guide_map_csv", "out_dir")


def _absolute(config: FatebiasConfig) -> FatebiasConfig:
    """``config`` with its file paths made absolute (they are resolved against the CWD)."""
    update: dict = {k: str(Path(getattr(config, k)).resolve()) for k in PATH_KEYS if getattr(config, k)}
    if config.guide_files:
        update["guide_files"] = [str(Path(f).resolve()) for f in config.guide_files]
    return config.model_copy(update=update)


def _blocked(result: dg.ExecuteInProcessResult) -> FatebiasError | None:
    """A blocking asset check that failed (the NTC check with ``on_failed_calibration: stop``): the steps after it did not run."""
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            return CalibrationFailed(
                f"the {evaluation.check_name} check failed ({evaluation.description}): the intervals are not trusted, "
                "so the steps after it stopped (on_failed_calibration: stop)"
            )
    return None


def _user_error(result: dg.ExecuteInProcessResult) -> FatebiasError | None:
    """The fatebias error that failed the run, rebuilt as its own class (one line for the CLI)."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.user_failure_data is None:
            err = event.step_failure_data.error
            while err is not None:
                if err.cls_name in _USER_ERRORS:
                    return _USER_ERRORS[err.cls_name](err.message.split(": ", 1)[-1].strip())
                err = err.cause
    return None


#: The instance settings written into a new home (Dagster's defaults otherwise: SQLite storage in the home).
INSTANCE_YAML = "# Dagster instance of fatebias runs (see the README: Dagster).\ntelemetry:\n  enabled: false\n"


def dagster_home(out_dir: str | Path) -> Path:
    """The persistent instance's folder: ``DAGSTER_HOME``, else ``<out_dir>/dagster_home``.

    A new folder receives a ``dagster.yaml`` (without one Dagster prints a notice on every run).
    """
    home = Path(os.environ.get("DAGSTER_HOME") or Path(out_dir) / DAGSTER_HOME_DIR).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        write_text(INSTANCE_YAML, home / "dagster.yaml")
    return home


@contextlib.contextmanager
def persistent_instance(out_dir: str | Path) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance in :func:`dagster_home` (``dagster dev`` with the same home shows its runs)."""
    with dg.DagsterInstance.from_config(str(dagster_home(out_dir))) as instance:
        yield instance


def stale_assets(config: FatebiasConfig) -> list[dg.AssetKey]:
    """The chain's assets whose step the run folder's manifest does not record as current.

    The manifest (:class:`~fatebias_core.pipeline.graph.Manifest`) is the record both
    engines keep: a step is current when it was made at the version it has now and its
    files exist, whichever engine made it. A step the configuration does not run
    (:attr:`~fatebias_core.pipeline.graph.Step.enabled`) never is stale.
    """
    versions, layout = step_versions(config), ChainLayout()
    manifest = Manifest.open(config.out_dir)
    stale: list[dg.AssetKey] = []
    for name in enabled_steps(config, list(STEPS)):
        if not manifest.is_current(name, versions[name]):
            stale.extend(layout.keys_of(name))
    return stale


def _execute(
    defs: dg.Definitions, instance: dg.DagsterInstance, config: FatebiasConfig, rerun: str | None = None
) -> dg.ExecuteInProcessResult | None:
    """Observe the sources, then materialize the stale assets and ``rerun`` onwards (None: nothing to do)."""
    # Failures come back as exceptions (user errors as their one line); Dagster's own log
    # would print them again with a stack trace.
    run_config = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    observed = defs.resolve_job_def(OBSERVE_JOB).execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
    if not observed.success:
        return observed
    stale = stale_assets(config)
    forced = [k for s in enabled_steps(config, downstream(rerun) if rerun else []) for k in ChainLayout().keys_of(s)]
    stale += [k for k in forced if k not in stale]
    if not stale:
        return None
    result = defs.resolve_job_def(CHAIN_JOB).execute_in_process(
        instance=instance, run_config=run_config, raise_on_error=False, asset_selection=stale
    )
    record_run(instance, result.run_id)
    return result


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """``step: error`` of the first failed step."""
    for event in result.all_events:
        if event.is_step_failure:
            err = event.step_failure_data.error
            return f"{event.step_key}: {err.cls_name}: {err.message.strip()}" if err else str(event.step_key)
    return "see the log above"


def run_chain(config: FatebiasConfig, instance: dg.DagsterInstance | None = None, rerun: str | None = None) -> ChainResult:
    """Materialize the stale part of the chain for ``config`` in this process, through Dagster.

    Parameters
    ----------
    config
        Validated settings naming the experiment (``adata_path``, ``guide_map_csv``).
    instance
        The Dagster instance to record the run in (default: :func:`persistent_instance`
        of the run folder).
    rerun
        Remake this step and every step after it even when current (``--rerun``).

    Returns
    -------
    ChainResult
        The run folder, the steps run and reused, the ranked hits, the fit's facts.

    Raises
    ------
    FatebiasError
        The step's own one-line error when the configuration or the input files are at fault.
    """
    if not config.adata_path or not config.guide_map_csv:
        missing = [k for k in ("adata_path", "guide_map_csv") if not getattr(config, k)]
        raise ConfigError(f"the configuration does not name {' and '.join(missing)}")
    t0 = time.perf_counter()
    # Validate the inputs before Dagster observes anything: a run that fails validation
    # leaves no run folder, lineage database or lock behind (a few seconds at 200k cells).
    experiment = load_experiment_checked(config, verbose=False)
    # Dagster's instance storage migrates with alembic, which logs every step at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = _absolute(config)
    _write_run_files(config, experiment)
    with tempfile.TemporaryDirectory(prefix="fatebias-engine-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config.to_yaml())
        defs = build_definitions(ExperimentConfig(config_path=str(path)), automation=False, executor=dg.in_process_executor)
        with contextlib.ExitStack() as stack:
            inst = instance or stack.enter_context(persistent_instance(config.out_dir))
            result = _execute(defs, inst, config, rerun)
    blocked = None if result is None else _blocked(result)
    if blocked is not None:
        raise blocked
    if result is not None and not result.success:
        err = _user_error(result)
        if err is not None:
            raise err
        raise RuntimeError(f"the chain failed in Dagster run {result.run_id}: {_failure(result)}")
    chain = _chain_result(config, result, time.perf_counter() - t0)
    lineage = LineageStore.from_env().db(Path(config.out_dir) / run_files.LINEAGE_DB).path
    run = f"Dagster run {result.run_id}" if result is not None else "every step current: no Dagster run"
    chain.notes.append(f"{run}; lineage in {lineage}")
    return chain


def _write_run_files(config: FatebiasConfig, experiment: object) -> None:
    """The files ``fatebias run`` writes whatever it reruns (as the local engine does)."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_load_files(experiment, out)
    write_text(config.to_yaml(), out / run_files.CONFIG_USED)


def _chain_result(config: FatebiasConfig, result: dg.ExecuteInProcessResult | None, runtime_s: float) -> ChainResult:
    out = Path(config.out_dir)
    chain = ChainResult(out_dir=out, config=config, runtime_s=runtime_s)
    ran: set[str] = set()
    for event in result.get_asset_materialization_events() if result is not None else []:
        ran.add(ASSET_STEP.get(event.step_materialization_data.materialization.asset_key.path[-1], ""))
    steps = enabled_steps(config)
    chain.ran = [s for s in steps if s in ran]
    chain.reused = [s for s in steps if s not in ran]
    fit_json = out / run_files.FIT_DIR / run_files.FIT_META
    if fit_json.exists():
        chain.fit_info = json.loads(fit_json.read_text()).get("info", {})
    hits = out / run_files.HITS
    if hits.exists():
        chain.hits = read_csv(hits, what="hits", dtype={"gene": str, "active_days": str, "active_days_any": str})
    return chain
