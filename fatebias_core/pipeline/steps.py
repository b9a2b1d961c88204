"""The chain as step functions (the whole chain: :mod:`fatebias_core.pipeline.chain`).

Each ``*_step`` function is one step of MODEL.md's chain: it takes typed inputs and the
configuration, writes its files (seed names) into the run folder, and returns a typed
result. ``fatebias run``/``demo`` (through :func:`fatebias_core.pipeline.chain.run_chain`)
and the Dagster assets call the same functions (through the step table,
:data:`fatebias_core.pipeline.graph.STEPS`); neither adds logic of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import ConfigError
from fatebias_core.io import read_csv, write_csv, write_json
from fatebias_core.model.inference import FitResult, fit
from fatebias_core.model.posterior import ExportResult, export_posterior
from fatebias_core.pipeline.check import load_experiment_checked
from fatebias_core.types import Experiment

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
    from fatebias_core.report.plots import plot_elbo

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
    from fatebias_core.report.plots import plot_effects_by_day

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


def mash_outputs(config: FatebiasConfig, out_dir: str | Path | None = None) -> MashOutputs:
    """Where :func:`mash_step` writes, for every contrast (seed names for the primary one)."""
    out = _out(config, out_dir)
    files, ash = {}, {}
    for fate in config.contrast_fates:
        sfx = config.file_suffix(fate)
        for level in ("gene", "guide"):
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
    from fatebias_core.mash import ash_table, mash_table
    from fatebias_core.model.posterior import export_paths

    out = _out(config, out_dir)
    result = mash_outputs(config, out)
    exports = export_paths(config, out, config.contrast_fates)
    for fate, files in exports.items():
        for level, kind in (("gene", "gene_daywise"), ("guide", "guide_daywise")):
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
    """``gene_from_guide_mash_<mode>.csv`` of each mode."""
    out = _out(config, out_dir)
    return {mode: out / f"gene_from_guide_mash_{mode}.csv" for mode in MASH_MODES}


def aggregate_step(config: FatebiasConfig, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Guide-to-gene aggregation (MODEL.md 8) of the primary contrast's guide tables, both modes."""
    from fatebias_core.discovery.aggregate import aggregate_file

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
    fatebias_core.discovery.calls.RankResult
    """
    from fatebias_core.discovery.calls import rank_and_compare

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
    from fatebias_core.checks.diagnostics import run_diagnostics

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
    fatebias_core.report.build.ReportResult
    """
    from fatebias_core.report.build import build_report

    return build_report(_out(config, out_dir), config)


# --------------------------------------------------------------------------- files of each step
def step_outputs(step: str, config: FatebiasConfig, out_dir: str | Path | None = None) -> list[Path]:
    """The files ``step`` writes into the run folder (what the manifest checks still exist)."""
    from fatebias_core.model.posterior import export_paths
    from fatebias_core.report.build import REPORT_FILE

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
