"""The local engine: the step table run in order in this process, reusing current steps.

``fatebias run --engine local`` (and ``fatebias fit``/``demo``) call :func:`run_chain`.
A step is reused when the run folder's manifest (``fatebias_manifest.json``) records
it made at the same version (:func:`fatebias_core.pipeline.graph.step_versions`) and
its files still exist. The Dagster engine keeps and reads the same manifest, so a
folder made by either engine is current for the other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pandas as pd

from fatebias_core.checks.ntc import read_ntc_check
from fatebias_core.config import FatebiasConfig, load_config, make_config
from fatebias_core.data.simulate import simulate
from fatebias_core.discovery.answer import contrast_answers, describe_hits
from fatebias_core.discovery.evaluate import evaluate_files
from fatebias_core.errors import ConfigError
from fatebias_core.io import layout as names
from fatebias_core.io import read_csv, write_text
from fatebias_core.pipeline.check import load_experiment_checked
from fatebias_core.pipeline.graph import (
    CHAIN,
    STEPS,
    Manifest,
    Step,
    downstream,
    enabled_steps,
    input_version,
    step_versions,
)
from fatebias_core.pipeline.steps import (
    diagnostics_step,
    load_step,
    report_step,
    write_load_files,
)
from fatebias_core.types import DiagnosticsResult, Experiment

log = logging.getLogger("fatebias")


@dataclass
class ChainResult:
    """What :func:`run_chain` made, and which steps it reused."""

    out_dir: Path
    config: FatebiasConfig
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    hits: pd.DataFrame | None = None
    fit_info: dict = field(default_factory=dict)
    runtime_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"outputs in {self.out_dir} ({self.runtime_s:.0f} s)"]
        if self.ran:
            lines.append(f"  ran: {', '.join(self.ran)}")
        if self.reused:
            lines.append(f"  reused (inputs and settings unchanged): {', '.join(self.reused)}")
        if self.fit_info:
            lines.append(f"  fit: {fit_line(self.fit_info)}")
        ntc = read_ntc_check(self.out_dir)
        if ntc is not None:
            lines.append(
                f"  NTC check: 90% intervals of NTC pseudo-genes cover 0 in {ntc['coverage_90']:.1%} (nominal 90%) - "
                + ("ok" if ntc["calibrated"] else "FAILED: THE INTERVALS ARE NOT TRUSTED (hits may include false ones)")
            )
        if self.hits is not None:
            lines.append(f"  hits ({self.config.mash_default_mode} mode; the primary contrast's are in {names.HITS}):")
            for ans in contrast_answers(self.out_dir, self.config).values():
                lines.extend(describe_hits(ans))
        lines.extend(f"  {n}" for n in self.notes)
        report = self.out_dir / names.REPORT
        if report.is_file() and "report" in self.ran + self.reused:
            lines.append(f"  report: {report.resolve()} (open it in a browser)")
        return "\n".join(lines)


def fit_line(info: dict) -> str:
    """The fit in one line: SVI steps, or the Laplace step's empirical Bayes updates."""
    if info.get("steps"):
        return f"{info.get('steps')} SVI steps, {info.get('ms_per_step')} ms/step, converged: {info.get('converged')}"
    parts = [f"Laplace step, {info.get('laplace_eb_updates')} empirical Bayes updates ({info.get('laplace_runtime_s')} s)"]
    if info.get("clone_cov"):
        sd = ", ".join(f"{float(info['clone_cov'][k][k]) ** 0.5:.2f}" for k in range(len(info["clone_cov"])))
        parts.append(f"clone effect SD {sd} over {info.get('n_clusters')} clones")
    parts.append(f"converged: {info.get('converged')}")
    return ", ".join(parts)


def fit_and_export(config: FatebiasConfig) -> ChainResult:
    """Load, fit and export into ``config.out_dir`` (``fatebias fit``)."""
    return run_chain(config, until="export")


def chain_steps(config: FatebiasConfig, until: str | None = None) -> list[Step]:
    """The steps ``fatebias run`` runs, in order (diagnostics only when ``run_diagnostics``)."""
    chosen = CHAIN if until is None else CHAIN[: CHAIN.index(until) + 1]
    return [STEPS[n] for n in enabled_steps(config, chosen)]


def step_inputs(step: Step, config: FatebiasConfig, out: Path, values: dict[str, Any]) -> dict[str, Any]:
    """The values ``step`` takes, rebuilt from the run folder for steps reused in this run."""
    for name in step.reads:
        if name not in values:
            reload = STEPS[name].reload
            assert reload is not None, f"step {name} has no value to give {step.name}"
            values[name] = reload(config, out)
    return values


def compute_step(step: str, config: FatebiasConfig, out_dir: str | Path, values: Mapping[str, Any] | None = None) -> Any:
    """Run one step with the values it reads; those not given are rebuilt from the run folder.

    What a platform hands to wherever it computes a step (a worker, a Slurm job): the
    step's files land in ``out_dir`` and its value is returned.
    """
    out = Path(out_dir)
    return STEPS[step].call(config, out, step_inputs(STEPS[step], config, out, dict(values or {})), engine=run_chain)


def run_chain(
    config: FatebiasConfig, until: str | None = None, experiment: Experiment | None = None, rerun: str | None = None
) -> ChainResult:
    """Run every step of the chain into ``config.out_dir``, reusing steps that are current.

    A step is reused when the run folder's manifest records it made at the same version
    (its settings, code version, upstream versions and the input files' content hash)
    and its files still exist; so changing only a ranking threshold reruns ranking, not
    the fit. Diagnostics run when ``run_diagnostics`` is true.

    Parameters
    ----------
    config
        The validated configuration.
    until
        Stop after this step (``export`` for ``fatebias fit``).
    experiment
        An already loaded experiment (skips reading the files again).
    rerun
        Remake this step and every step after it even when current (``--rerun``).
    """
    t0 = time.perf_counter()
    if experiment is None:
        experiment = load_experiment_checked(config)  # validates everything before writing
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_load_files(experiment, out)
    write_text(config.to_yaml(), out / names.CONFIG_USED)
    versions = step_versions(config, input_version(config))
    manifest = Manifest.open(out)
    result = ChainResult(out_dir=out, config=config)
    values: dict[str, Any] = {"load": experiment}
    forced = set(downstream(rerun)) if rerun else set()
    for step in chain_steps(config, until):
        # The report reruns whenever any step before it ran: the page shows them all.
        force = step.name in forced or (step.name == "report" and bool(result.ran))
        if not force and manifest.is_current(step.name, versions[step.name]):
            result.reused.append(step.name)
        else:
            values[step.name] = step.call(config, out, step_inputs(step, config, out, values), engine=run_chain)
            metrics = step.metrics(values[step.name])
            manifest.record(step.name, versions[step.name], step.outputs(config, out), metrics)
            result.ran.append(step.name)
        _collect(result, step, config, out, values)
    result.runtime_s = time.perf_counter() - t0
    return result


def _collect(result: ChainResult, step: Step, config: FatebiasConfig, out: Path, values: dict[str, Any]) -> None:
    """Keep the fit's facts and the ranked hits for the summary."""
    if step.name == "fit":
        result.fit_info = step_inputs(STEPS["export"], config, out, values)["fit"].info
    elif step.name == "rank":
        result.hits = read_csv(out / names.HITS, what="hits", dtype={"gene": str})


def forget_steps(config: FatebiasConfig, from_step: str, out_dir: str | Path | None = None) -> list[str]:
    """Make ``from_step`` and every step after it rerun on the next ``fatebias run``.

    Their records are dropped from the run folder's manifest; forgetting ``fit`` also
    deletes its checkpoint, so the fit starts over rather than resuming. The permutation
    control's own run (``<out>/permutation``) forgets the same steps, so rerunning
    diagnostics after the fit also refits its permuted data. Outputs stay in place
    until the rerun replaces them (atomically).

    Returns
    -------
    list of str
        The steps whose records were dropped.
    """
    if from_step not in CHAIN:
        raise ConfigError(f"--rerun {from_step!r} is not a step (one of: {', '.join(CHAIN)})")
    out = Path(out_dir or config.out_dir)
    steps = CHAIN[CHAIN.index(from_step) :]
    dropped: list[str] = []
    for folder in (out, out / names.PERMUTATION_DIR):
        if "fit" in steps:
            (folder / names.FIT_DIR / names.CHECKPOINT).unlink(missing_ok=True)
        if (folder / names.MANIFEST).exists():
            forgot = Manifest.open(folder).forget(steps)
            if folder == out:
                dropped = forgot
    return dropped


# --------------------------------------------------------------------------- engines and demo
DEMO_RESULTS = "results"


def diagnose(config: FatebiasConfig) -> DiagnosticsResult:
    """``fatebias diagnose``: load the experiment and run the diagnostics."""
    experiment = load_step(config)
    return diagnostics_step(experiment, config, run_chain=run_chain)


#: The platform's top-level packages (the ``platform`` extra); the Dagster engine needs them.
PLATFORM_MODULES = ("dagster", "dagster_webserver", "dagster_pipes", "dagster_dask", "dask", "distributed", "duckdb")

#: The one line ``--engine auto`` logs when it falls back to the local engine.
LOCAL_FALLBACK = 'Dagster is not installed (pip install "fatebias[platform]"): running the chain with the local engine'


def chain_engine(name: str = "auto"):
    """The function that runs the whole chain: ``local`` (:func:`run_chain`) or a plugin.

    Plugins register under the entry-point group ``fatebias.engines`` (fatebias_dagster
    registers ``dagster``, which materialises the asset graph). ``auto`` picks ``dagster``
    when it and the platform it runs on (the ``platform`` extra) import, else ``local``,
    saying so in one log line (:data:`LOCAL_FALLBACK`); naming ``dagster`` without the
    platform is an error that says what to install.
    """
    if name == "local":
        return run_chain
    engines = {ep.name: ep for ep in entry_points(group="fatebias.engines")}
    wanted = "dagster" if name == "auto" else name
    if wanted not in engines:
        if name == "auto":
            return run_chain
        raise ConfigError(f"engine {name!r} is not installed (available: local{''.join(', ' + n for n in engines)})")
    try:
        return engines[wanted].load()
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in PLATFORM_MODULES:
            raise
        if name == "auto":
            log.warning(LOCAL_FALLBACK)
            return run_chain
        raise ConfigError(
            f"engine {name!r} needs the platform ({missing} is not installed): "
            'pip install "fatebias[platform]", or use --engine local'
        ) from None


def run_demo(out_dir: str | Path = "fatebias_demo", config_path: str | Path | None = None, engine: str = "auto") -> ChainResult:
    """Simulate a modest experiment with known truth and run every step of the chain on it.

    The simulation (``sim_*`` defaults: 20,000 cells, 100 genes, 600 guides, Kmax 9)
    goes to ``out_dir``; the run's outputs to ``out_dir/results``; the calls are scored
    against the truth (``daywise_confusion.csv``, ``pred_call_summary.json``).
    """
    base = load_config(config_path) if config_path else make_config()
    out = Path(out_dir)
    sim = simulate(base, out)
    log.info(sim.describe(next_step=False))  # the demo runs the chain itself
    run_cfg = load_config(sim.paths["config"])
    result = chain_engine(engine)(run_cfg)
    ev = evaluate_files(result.out_dir / names.HITS, sim.paths["truth_daywise"], result.out_dir, truth_thresh=run_cfg.sim_truth_thresh, config=run_cfg)
    s = ev.summary
    result.notes.append(
        "recovery vs truth: daywise precision {:.3f} recall {:.3f}; any-day precision {:.3f} recall {:.3f} "
        "(daywise_confusion.csv)".format(
            _num(s.get("daywise_precision")), _num(s.get("daywise_recall")), _num(s.get("anyday_precision")), _num(s.get("anyday_recall"))
        )
    )
    report_step(run_cfg, result.out_dir)  # again, now with the recovery scores
    return result


def _num(x) -> float:
    return float("nan") if x is None else float(x)
