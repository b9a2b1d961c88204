"""The chain as step functions, and the whole chain in one call.

Each ``*_step`` function is one step of MODEL.md's chain: it takes typed inputs and the
configuration, writes its files (seed names) into the run folder, and returns a typed
result. ``fatebias run``/``demo`` (through :func:`run_chain`) and the Dagster assets
call the same functions; neither adds logic of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .check import load_experiment_checked
from .config import FatebiasConfig
from .errors import ConfigError
from .inference import FitResult, fit, load_fit
from .io import read_csv, write_csv, write_json, write_text
from .posterior import ExportResult, export_posterior
from .steps import CHAIN
from .types import Experiment

log = logging.getLogger("fatebias")

MASH_MODES = ("conservative", "enriched")
FIT_DIR = "fit"


def _out(config: FatebiasConfig, out_dir: str | Path | None) -> Path:
    return Path(out_dir or config.out_dir)


def _say(msg: str) -> None:
    log.info(msg)


# --------------------------------------------------------------------------- load
def load_step(config: FatebiasConfig, out_dir: str | Path | None = None, verbose: bool = True) -> Experiment:
    """Load and validate the experiment; write ``load_summary.json`` and ``dropped_cells.csv``."""
    experiment = load_experiment_checked(config, verbose=verbose)
    write_load_files(experiment, _out(config, out_dir))
    return experiment


DROPPED_CELLS_FILE = "dropped_cells.csv"


def write_load_files(experiment: Experiment, out_dir: str | Path) -> list[Path]:
    """Write ``load_summary.json`` and ``dropped_cells.csv`` (``cell, reason``; header only when none)."""
    out = Path(out_dir)
    dropped = experiment.dropped_cells
    if dropped is None:
        dropped = pd.DataFrame({"cell": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
    return [
        write_json(experiment.summary.to_dict(), out / "load_summary.json"),
        write_csv(dropped, out / DROPPED_CELLS_FILE),
    ]


# --------------------------------------------------------------------------- fit
def fit_step(experiment: Experiment, config: FatebiasConfig, out_dir: str | Path | None = None) -> FitResult:
    """Fit the model (resuming from a checkpoint in ``<out>/fit`` when one matches) and save it.

    Writes ``fit/variational_params.npz``, ``fit/elbo_trace.csv``, ``fit/fit.json`` and
    ``elbo_trace.png``.
    """
    from .plots import plot_elbo

    out = _out(config, out_dir)
    fit_dir = out / FIT_DIR
    result = fit(experiment, config, checkpoint_dir=fit_dir)
    result.save(fit_dir)
    plot_elbo(
        result.elbo, out / "elbo_trace.png", n_cells=experiment.n_cells, switch_step=result.info.get("weight_switch_step"),
        weight_steps=result.info.get("weight_update_steps"),
    )
    return result


# --------------------------------------------------------------------------- export
def export_step(fit_result: FitResult, config: FatebiasConfig, out_dir: str | Path | None = None) -> ExportResult:
    """Write the posterior exports (MODEL.md 6) and the effects-by-day figure."""
    from .plots import plot_effects_by_day

    out = _out(config, out_dir)
    result = export_posterior(fit_result, config, out)
    c = result.summary.contrasts[result.summary.primary]
    plot_effects_by_day(
        c.theta_mean, c.theta_sd, result.summary.gene_names, result.summary.day_labels, out / "effects_by_day.png",
        title=f"{result.summary.primary} vs {fit_result.ref_fate}: gene effects by day (mean +/- 2 SD)",
    )
    return result


# --------------------------------------------------------------------------- mash
@dataclass
class MashOutputs:
    """Files of :func:`mash_step`: ``files[(level, mode, fate)]`` and ``ash_files[fate]``."""

    primary: str
    files: dict[tuple[str, str, str], Path]
    ash_files: dict[str, Path]
    messages: list[str] = field(default_factory=list)

    def path(self, level: str, mode: str, fate: str | None = None) -> Path:
        """The mash table of ``level`` (gene or guide) in ``mode`` for ``fate``."""
        return self.files[(level, mode, fate or self.primary)]

    @property
    def all_paths(self) -> list[Path]:
        return [*self.files.values(), *self.ash_files.values()]


def mash_levels(config: FatebiasConfig) -> tuple[str, ...]:
    """The tables mash runs on: gene, and guide unless ``mash_guide_level`` is off."""
    return ("gene", "guide") if config.mash_guide_level else ("gene",)


def mash_outputs(config: FatebiasConfig, out_dir: str | Path | None = None) -> MashOutputs:
    """Where :func:`mash_step` writes, for every contrast (seed names for the primary one)."""
    out = _out(config, out_dir)
    files, ash = {}, {}
    for fate in config.contrast_fates:
        sfx = config.file_suffix(fate)
        for level in mash_levels(config):
            for mode in MASH_MODES:
                files[(level, mode, fate)] = out / f"mash_{level}_{mode}{sfx}.csv"
        if config.export_ash_summary:
            ash[fate] = out / f"ash_gene_summary{sfx}.csv"
    return MashOutputs(primary=config.contrast_fate, files=files, ash_files=ash)


def mash_step(config: FatebiasConfig, out_dir: str | Path | None = None) -> MashOutputs:
    """mash (both modes) on the gene and guide tables of every contrast; ash on the across-day summary.

    Reads the exports of :func:`export_step` from the run folder and writes
    ``mash_gene_<mode>.csv``, ``mash_guide_<mode>.csv`` and ``ash_gene_summary.csv``
    (other contrasts with a ``_<FATE>`` suffix).
    """
    from .mash import ash_table, mash_table
    from .posterior import export_paths

    out = _out(config, out_dir)
    result = mash_outputs(config, out)
    exports = export_paths(config, out, config.contrast_fates)
    for fate, files in exports.items():
        for level, kind in (("gene", "gene_daywise"), ("guide", "guide_daywise"))[: len(mash_levels(config))]:
            table = read_csv(files[kind], what=f"{level} daywise table", dtype={"gene": str, "guide": str})
            for mode in MASH_MODES:
                res = mash_table(table, mode, config)
                path = write_csv(res.table, result.path(level, mode, fate))
                result.messages.extend(f"{path.name}: {m}" for m in res.messages)
        if fate in result.ash_files:
            summary = read_csv(files["ash_summary"], what="across-day summary", dtype={"gene": str})
            write_csv(ash_table(summary, config).table, result.ash_files[fate])
    return result


# --------------------------------------------------------------------------- aggregate / rank
def aggregate_paths(config: FatebiasConfig, out_dir: str | Path | None = None) -> dict[str, Path]:
    """``gene_from_guide_mash_<mode>.csv`` of each mode (none without guide-level mash)."""
    out = _out(config, out_dir)
    if not config.mash_guide_level:
        return {}
    return {mode: out / f"gene_from_guide_mash_{mode}.csv" for mode in MASH_MODES}


def aggregate_step(config: FatebiasConfig, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Guide-to-gene aggregation (MODEL.md 8) of the primary contrast's guide tables, both modes."""
    from .aggregate import aggregate_file

    mash = mash_outputs(config, out_dir)
    paths = aggregate_paths(config, out_dir)
    for mode, path in paths.items():
        aggregate_file(mash.path("guide", mode), path, config)
    return paths


def rank_step(config: FatebiasConfig, out_dir: str | Path | None = None):
    """Call and rank hits (MODEL.md 9) from the configured discovery source; compare the modes.

    Writes ``hits_ranked.csv`` (``mash_default_mode``) and ``mash_mode_comparison.csv``.

    Returns
    -------
    fatebias_core.calls.RankResult
    """
    from .calls import rank_and_compare

    mash = mash_outputs(config, out_dir)
    if config.discovery_source == "gene":
        inputs = {mode: mash.path("gene", mode) for mode in MASH_MODES}
    elif config.discovery_source == "guide_agg":
        inputs = aggregate_paths(config, out_dir)
    else:
        if not config.export_ash_summary:
            raise ConfigError("discovery_source: ash needs export_ash_summary: true")
        inputs = {config.mash_default_mode: mash.ash_files[mash.primary]}
    return rank_and_compare(inputs, _out(config, out_dir), config)


def rank_outputs(config: FatebiasConfig, out_dir: str | Path | None = None) -> list[Path]:
    out = _out(config, out_dir)
    return [out / "hits_ranked.csv", out / "mash_mode_comparison.csv"]


# --------------------------------------------------------------------------- diagnostics
def diagnostics_step(experiment: Experiment, config: FatebiasConfig, out_dir: str | Path | None = None):
    """Held-out fit, permutation negative control and sanity checks -> ``diagnostics.json``."""
    from .diagnostics import run_diagnostics

    return run_diagnostics(experiment, config, _out(config, out_dir))


def diagnose(config: FatebiasConfig):
    """``fatebias diagnose``: load the experiment and run the diagnostics."""
    experiment = load_step(config)
    return diagnostics_step(experiment, config)


# --------------------------------------------------------------------------- report
def report_step(config: FatebiasConfig, out_dir: str | Path | None = None):
    """Write ``report.html``, the self-contained HTML report of the run folder's files.

    Returns
    -------
    fatebias_core.report.ReportResult
    """
    from .report import build_report

    return build_report(_out(config, out_dir), config)


# --------------------------------------------------------------------------- whole chain
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
            lines.append(
                f"  fit: {self.fit_info.get('steps')} steps, {self.fit_info.get('ms_per_step')} ms/step, "
                f"converged: {self.fit_info.get('converged')}"
            )
        if self.hits is not None:
            from .answer import contrast_answers, describe_hits

            lines.append(f"  hits ({self.config.mash_default_mode} mode; the primary contrast's are in hits_ranked.csv):")
            for ans in contrast_answers(self.out_dir, self.config).values():
                lines.extend(describe_hits(ans))
        lines.extend(f"  {n}" for n in self.notes)
        report = self.out_dir / "report.html"
        if report.is_file() and "report" in self.ran + self.reused:
            lines.append(f"  report: {report.resolve()} (open it in a browser)")
        return "\n".join(lines)


def fit_and_export(config: FatebiasConfig) -> ChainResult:
    """Load, fit and export into ``config.out_dir`` (``fatebias fit``)."""
    return run_chain(config, until="export")


def run_chain(config: FatebiasConfig, until: str | None = None, experiment: Experiment | None = None) -> ChainResult:
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
    """
    from .steps import Manifest, input_version, step_versions

    t0 = time.perf_counter()
    if experiment is None:
        experiment = load_experiment_checked(config)  # validates everything before writing
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_load_files(experiment, out)
    write_text(config.to_yaml(), out / "config_used.yaml")
    versions = step_versions(config, input_version(config))
    manifest = Manifest.open(out)
    result = ChainResult(out_dir=out, config=config)
    fitted: list[FitResult] = []

    def fit_result() -> FitResult:
        if not fitted:
            fitted.append(load_fit(out / FIT_DIR))
        return fitted[0]

    def do_fit() -> FitResult:
        fitted[:] = [fit_step(experiment, config, out)]
        return fitted[0]

    make = {
        "fit": do_fit,
        "export": lambda: export_step(fit_result(), config, out),
        "mash": lambda: mash_step(config, out),
        "aggregate": lambda: aggregate_step(config, out),
        "rank": lambda: rank_step(config, out),
        "diagnostics": lambda: diagnostics_step(experiment, config, out),
        "report": lambda: report_step(config, out),
    }
    for step in CHAIN if until is None else CHAIN[: CHAIN.index(until) + 1]:
        if step == "diagnostics" and not config.run_diagnostics:
            continue
        # The report reruns whenever any step before it ran: the page shows them all.
        force = step == "report" and bool(result.ran)
        if not force and manifest.is_current(step, versions[step]):
            result.reused.append(step)
        else:
            value = make[step]()
            manifest.record(step, versions[step], step_outputs(step, config, out), step_metrics(step, value))
            result.ran.append(step)
        if step == "fit":
            result.fit_info = fit_result().info
        elif step == "rank":
            result.hits = read_csv(out / "hits_ranked.csv", what="hits", dtype={"gene": str})
    result.runtime_s = time.perf_counter() - t0
    return result


def forget_steps(config: FatebiasConfig, from_step: str, out_dir: str | Path | None = None) -> list[str]:
    """Make ``from_step`` and every step after it rerun on the next ``fatebias run``.

    Their records are dropped from the run folder's manifest (both engines read it);
    forgetting ``fit`` also deletes its checkpoint, so the fit starts over rather than
    resuming. The permutation control's own run (``<out>/permutation``) forgets the same
    steps, so rerunning diagnostics after the fit also refits its permuted data.
    Outputs stay in place until the rerun replaces them (atomically).

    Returns
    -------
    list of str
        The steps whose records were dropped.
    """
    from .diagnostics import PERMUTATION_DIR
    from .inference import CHECKPOINT_NAME
    from .steps import Manifest

    if from_step not in CHAIN:
        raise ConfigError(f"--rerun {from_step!r} is not a step (one of: {', '.join(CHAIN)})")
    out = _out(config, out_dir)
    steps = CHAIN[CHAIN.index(from_step) :]
    dropped: list[str] = []
    for folder in (out, out / PERMUTATION_DIR):
        if "fit" in steps:
            (folder / FIT_DIR / CHECKPOINT_NAME).unlink(missing_ok=True)
        if (folder / "fatebias_manifest.json").exists():
            forgot = Manifest.open(folder).forget(steps)
            if folder == out:
                dropped = forgot
    return dropped


def step_outputs(step: str, config: FatebiasConfig, out_dir: str | Path | None = None) -> list[Path]:
    """The files ``step`` writes into the run folder (what the manifest checks still exist)."""
    from .posterior import export_paths
    from .report import REPORT_FILE

    out = _out(config, out_dir)
    if step == "fit":
        return [out / FIT_DIR / "fit.json", out / FIT_DIR / "variational_params.npz"]
    if step == "export":
        return [p for files in export_paths(config, out, config.contrast_fates).values() for p in files.values()]
    if step == "mash":
        return mash_outputs(config, out).all_paths
    if step == "aggregate":
        return list(aggregate_paths(config, out).values())
    if step == "rank":
        return rank_outputs(config, out)
    if step == "diagnostics":
        return [out / "diagnostics.json"]
    if step == "report":
        return [out / REPORT_FILE]
    raise ValueError(f"no such step: {step}")


def step_metrics(step: str, value) -> dict:
    """Headline numbers of a finished step, kept in the manifest."""
    if step == "fit":
        return {"final_loss_per_cell": value.info["final_loss_per_cell"], "converged": value.info["converged"]}
    if step == "rank":
        return {"n_hits": int(value.hits["hit_anyday"].sum())}
    if step == "report":
        return {"size_bytes": value.size_bytes, "n_figures": value.n_figures}
    return {}


# --------------------------------------------------------------------------- demo
DEMO_RESULTS = "results"


def chain_engine(name: str = "auto"):
    """The function that runs the whole chain: ``local`` (:func:`run_chain`) or a plugin.

    Plugins register under the entry-point group ``fatebias.engines`` (fatebias_dagster
    registers ``dagster``, which materialises the asset graph). ``auto`` picks ``dagster``
    when installed, else ``local``.
    """
    from importlib.metadata import entry_points

    if name == "local":
        return run_chain
    engines = {ep.name: ep for ep in entry_points(group="fatebias.engines")}
    if name == "auto":
        if "dagster" not in engines:
            return run_chain
        name = "dagster"
    if name not in engines:
        raise ConfigError(f"engine {name!r} is not installed (available: local{''.join(', ' + n for n in engines)})")
    return engines[name].load()


def run_demo(out_dir: str | Path = "fatebias_demo", config_path: str | Path | None = None, engine: str = "auto") -> ChainResult:
    """Simulate a modest experiment with known truth and run every step of the chain on it.

    The simulation (``sim_*`` defaults: 20,000 cells, 100 genes, 600 guides, Kmax 9)
    goes to ``out_dir``; the run's outputs to ``out_dir/results``; the calls are scored
    against the truth (``daywise_confusion.csv``, ``pred_call_summary.json``).
    """
    from .config import load_config, make_config
    from .evaluate import evaluate_files
    from .simulate import simulate

    base = load_config(config_path) if config_path else make_config()
    out = Path(out_dir)
    sim = simulate(base, out)
    _say(sim.describe(next_step=False))  # the demo runs the chain itself
    run_cfg = load_config(sim.paths["config"])
    result = chain_engine(engine)(run_cfg)
    ev = evaluate_files(result.out_dir / "hits_ranked.csv", sim.paths["truth_daywise"], result.out_dir, truth_thresh=run_cfg.sim_truth_thresh, config=run_cfg)
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
