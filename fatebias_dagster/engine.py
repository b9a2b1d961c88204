"""``fatebias run``/``demo`` through Dagster: the whole graph materialized in-process.

fatebias_core never imports Dagster: its command line finds this engine through the
``fatebias.engines`` entry point (``dagster = "fatebias_dagster.engine:run_chain"``).
The run materializes the same assets as ``dagster dev`` (sources observed first), writes
the same lineage rows, and is recorded in the Dagster instance named by
``DAGSTER_HOME`` when that is set (so it shows in the UI), else in an ephemeral one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import dagster as dg

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import ConfigError, FatebiasError, FitError, InputDataError
from fatebias_core.io import layout as names
from fatebias_core.io import read_csv
from fatebias_core.pipeline.chain import ChainResult
from fatebias_core.pipeline.check import load_experiment_checked
from fatebias_core.pipeline.graph import CHAIN

from .definitions import build_definitions
from .jobs import CHAIN_JOB, OBSERVE_JOB
from .resources import ExperimentConfig, LineageStore
from .versions import ASSET_STEP

_USER_ERRORS: dict[str, type[FatebiasError]] = {
    cls.__name__: cls for cls in (FatebiasError, ConfigError, InputDataError, FitError)
}
PATH_KEYS = ("adata_path", "guide_map_csv", "out_dir")


def _absolute(config: FatebiasConfig) -> FatebiasConfig:
    """``config`` with its file paths made absolute (they are resolved against the CWD)."""
    update = {k: str(Path(getattr(config, k)).resolve()) for k in PATH_KEYS if getattr(config, k)}
    return config.model_copy(update=update)


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


def _execute(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """Observe the sources, then materialize the chain: two runs in ``instance``."""
    # Failures come back as exceptions (user errors as their one line); Dagster's own log
    # would print them again with a stack trace.
    run_config = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    observed = defs.resolve_job_def(OBSERVE_JOB).execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
    if not observed.success:
        return observed
    return defs.resolve_job_def(CHAIN_JOB).execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """``step: error`` of the first failed step."""
    for event in result.all_events:
        if event.is_step_failure:
            err = event.step_failure_data.error
            return f"{event.step_key}: {err.cls_name}: {err.message.strip()}" if err else str(event.step_key)
    return "see the log above"


def run_chain(config: FatebiasConfig, instance: dg.DagsterInstance | None = None) -> ChainResult:
    """Materialize the whole chain for ``config`` in this process, through Dagster.

    Parameters
    ----------
    config
        Validated settings naming the experiment (``adata_path``, ``guide_map_csv``).
    instance
        The Dagster instance to record the run in (default: ``DAGSTER_HOME``'s, else an
        ephemeral one).

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
    load_experiment_checked(config, verbose=False)
    # Dagster's instance storage migrates with alembic, which logs every step at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = _absolute(config)
    with tempfile.TemporaryDirectory(prefix="fatebias-engine-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config.to_yaml())
        defs = build_definitions(ExperimentConfig(config_path=str(path)), automation=False, executor=dg.in_process_executor)
        if instance is not None:
            result = _execute(defs, instance)
        elif os.environ.get("DAGSTER_HOME"):
            with dg.DagsterInstance.get() as inst:
                result = _execute(defs, inst)
        else:
            with dg.DagsterInstance.ephemeral() as inst:
                result = _execute(defs, inst)
    if not result.success:
        err = _user_error(result)
        if err is not None:
            raise err
        raise RuntimeError(f"the chain failed in Dagster run {result.run_id}: {_failure(result)}")
    chain = _chain_result(config, result, time.perf_counter() - t0)
    lineage = LineageStore.from_env().db(Path(config.out_dir) / "lineage.duckdb").path
    chain.notes.append(f"Dagster run {result.run_id}; lineage in {lineage}")
    return chain


def _chain_result(config: FatebiasConfig, result: dg.ExecuteInProcessResult, runtime_s: float) -> ChainResult:
    out = Path(config.out_dir)
    chain = ChainResult(out_dir=out, config=config, runtime_s=runtime_s)
    status: dict[str, bool] = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        step = ASSET_STEP.get(mat.asset_key.path[-1])
        reused = mat.metadata.get("reused")
        disabled = mat.metadata.get("run_diagnostics")
        if disabled is not None and not disabled.value:
            continue  # diagnostics switched off: recorded, nothing computed
        if step and step in CHAIN:
            status[step] = bool(reused.value) if reused is not None else False
    chain.ran = [s for s in CHAIN if s in status and not status[s]]
    chain.reused = [s for s in CHAIN if s in status and status[s]]
    fit_json = out / names.FIT_DIR / names.FIT_META
    if fit_json.exists():
        chain.fit_info = json.loads(fit_json.read_text()).get("info", {})
    hits = out / "hits_ranked.csv"
    if hits.exists():
        chain.hits = read_csv(hits, what="hits", dtype={"gene": str, "active_days": str, "active_days_any": str})
    return chain
