"""The chain as step functions.

Each ``*_step`` function is one step of the chain (docs/method.md): it takes typed inputs
and the configuration, writes its files (:mod:`fatebias_core.io.layout` names them) into
the run folder, and returns a typed result. The local engine (:mod:`fatebias_core.pipeline.chain`), the notebook API and the
Dagster assets call the same functions; none adds logic of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fatebias_core.checks.diagnostics import ChainRunner, run_diagnostics
from fatebias_core.checks.ntc import require_calibrated, run_ntc_check
from fatebias_core.config import MASH_MODES, FatebiasConfig
from fatebias_core.discovery.aggregate import aggregate_file
from fatebias_core.discovery.calls import RankResult, rank_and_compare, rank_file
from fatebias_core.errors import ConfigError
from fatebias_core.io import layout as names
from fatebias_core.io import read_csv, write_csv, write_json
from fatebias_core.io.layout import RunLayout
from fatebias_core.mash import ash_table, mash_table
from fatebias_core.model.inference import fit, write_fit
from fatebias_core.model.posterior import ExportResult, PosteriorSummary, export_posterior
from fatebias_core.pipeline.check import load_experiment_checked
from fatebias_core.report.build import ReportResult, build_report
from fatebias_core.report.plots import plot_effects_by_day, plot_elbo
from fatebias_core.types import DiagnosticsResult, Experiment, FitResult

log = logging.getLogger("fatebias")



def _layout(config: FatebiasConfig, out_dir: str | Path | None) -> RunLayout:
    return RunLayout.of(config, out_dir)


# --------------------------------------------------------------------------- load
def load_step(config: FatebiasConfig, out_dir: str | Path | None = None, verbose: bool = True) -> Experiment:
    """Load and validate the experiment; write ``load_summary.json`` and ``dropped_cells.csv``."""
    experiment = load_experiment_checked(config, verbose=verbose)
    write_load_files(experiment, _layout(config, out_dir).root)
    return experiment


def write_load_files(experiment: Experiment, out_dir: str | Path) -> list[Path]:
    """Write ``load_summary.json`` and ``dropped_cells.csv`` (``cell, reason``; header only when none).

    Guides read from a guide file or assigned from counts are written beside them:
    ``guide_assignment.h5ad`` and ``guide_thresholds.csv`` (:class:`fatebias_core.data.assignment.GuideFiles`).
    """
    out = Path(out_dir)
    dropped = experiment.dropped_cells
    if dropped is None:
        dropped = pd.DataFrame({"cell": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
    guide_files = experiment.guide_files.write(out) if experiment.guide_files is not None else []
    return [
        write_json(experiment.summary.to_dict(), out / names.LOAD_SUMMARY),
        write_csv(dropped, out / names.DROPPED_CELLS),
        *guide_files,
    ]


# --------------------------------------------------------------------------- fit
def fit_step(experiment: Experiment, config: FatebiasConfig, out_dir: str | Path | None = None) -> FitResult:
    """Fit the model (resuming from a checkpoint in ``<out>/fit`` when one matches) and save it.

    Writes ``fit/variational_params.npz``, ``fit/elbo_trace.csv``, ``fit/fit.json`` and
    ``elbo_trace.png``.
    """
    layout = _layout(config, out_dir)
    result = fit(experiment, config, checkpoint_dir=layout.fit_dir)
    save_fit(result, experiment, layout)
    return result


def save_fit(result: FitResult, experiment: Experiment, layout: RunLayout) -> None:
    """Save a fit into the run folder: ``fit/`` and the ELBO trace figure."""
    write_fit(result, layout.fit_dir)
    plot_elbo(
        result.elbo, layout / names.ELBO_FIGURE, n_cells=experiment.n_cells,
        switch_step=result.info.get("weight_switch_step"), weight_steps=result.info.get("weight_update_steps"),
    )


# --------------------------------------------------------------------------- export
def export_step(
    fit_result: FitResult,
    experiment: Experiment | None,
    config: FatebiasConfig,
    out_dir: str | Path | None = None,
    summary: PosteriorSummary | None = None,
) -> ExportResult:
    """Write the posterior exports (gene/day and guide/day tables), the effects-by-day figure, and run the NTC check.

    ``summary`` is the posterior summary when already drawn (it is drawn when None).
    With ``experiment`` and ``ntc_check`` on, the NTC pseudo-genes are fitted as genes
    (:func:`fatebias_core.checks.ntc.run_ntc_check`): ``ntc_calibration.csv`` and
    ``ntc_check.json``; a failed check is said loudly.
    """
    layout = _layout(config, out_dir)
    result = export_posterior(fit_result, config, layout.root, summary=summary)
    if experiment is not None:
        check = run_ntc_check(experiment, fit_result, config, layout.root)
        if check is not None:
            (log.info if check.calibrated else log.warning)(check.describe())
    s = result.summary
    c = s.contrasts[s.primary]
    plot_effects_by_day(
        c.theta_mean, c.theta_sd, s.gene_names, s.day_labels, layout / names.EFFECTS_FIGURE,
        title=f"{s.primary} vs {fit_result.ref_fate}: gene effects by day (mean +/- 2 SD)",
    )
    return result


# --------------------------------------------------------------------------- mash
@dataclass
class MashOutputs:
    """Files of :func:`mash_step`, and what mash said while making them."""

    layout: RunLayout
    messages: list[str] = field(default_factory=list)

    def path(self, level: str, mode: str, fate: str | None = None) -> Path:
        """The mash table of ``level`` (gene or guide) in ``mode`` for ``fate``."""
        return self.layout.mash(level, mode, fate)

    @property
    def files(self) -> dict[tuple[str, str, str], Path]:
        """Every mash table, by (level, mode, fate)."""
        return self.layout.mash_tables()

    @property
    def ash_files(self) -> dict[str, Path]:
        """Every ash summary, by contrast fate."""
        return self.layout.ash_tables()

    @property
    def all_paths(self) -> list[Path]:
        return self.layout.mash_files()


def mash_step(config: FatebiasConfig, out_dir: str | Path | None = None) -> MashOutputs:
    """mash (both modes) on the gene and guide tables of every contrast; ash on the across-day summary.

    Reads the exports of :func:`export_step` from the run folder and writes
    ``mash_gene_<mode>.csv``, ``mash_guide_<mode>.csv`` and ``ash_gene_summary.csv``
    (other contrasts with a ``_<FATE>`` suffix).
    """
    layout = _layout(config, out_dir)
    result = MashOutputs(layout)
    for fate, files in layout.all_exports().items():
        for level in layout.mash_levels:
            table = read_csv(files[f"{level}_daywise"], what=f"{level} daywise table", dtype={"gene": str, "guide": str})
            for mode in MASH_MODES:
                res = mash_table(table, mode, config)
                path = write_csv(res.table, layout.mash(level, mode, fate))
                result.messages.extend(f"{path.name}: {m}" for m in res.messages)
        ash_path = layout.ash(fate)
        if ash_path is not None:
            summary = read_csv(files["ash_summary"], what="across-day summary", dtype={"gene": str})
            write_csv(ash_table(summary, config).table, ash_path)
    return result


# --------------------------------------------------------------------------- aggregate / rank
def aggregate_step(config: FatebiasConfig, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Guide-to-gene aggregation of the primary contrast's guide mash tables, both modes."""
    layout = _layout(config, out_dir)
    paths = layout.guide_aggs()
    for mode, path in paths.items():
        aggregate_file(layout.mash("guide", mode), path, config)
    return paths


def discovery_inputs(config: FatebiasConfig, out_dir: str | Path | None = None) -> dict[str, Path]:
    """The discovery table of each mash mode for the configured ``discovery_source``."""
    layout = _layout(config, out_dir)
    if config.discovery_source == "gene":
        return {mode: layout.mash("gene", mode) for mode in MASH_MODES}
    if config.discovery_source == "guide_agg":
        return {mode: layout.guide_agg(mode) for mode in MASH_MODES}
    if not config.export_ash_summary:
        raise ConfigError("discovery_source: ash needs export_ash_summary: true")
    return {config.mash_default_mode: layout.ash()}


def rank_step(config: FatebiasConfig, out_dir: str | Path | None = None) -> RankResult:
    """Call and rank hits from the configured discovery source; compare the modes.

    Writes ``hits_ranked.csv`` (``mash_default_mode``) and ``mash_mode_comparison.csv``;
    every other contrast's gene mash table (``mash_default_mode``) ranked with the same
    calls goes to ``hits_ranked_<FATE>.csv``, which the report reads.

    Returns
    -------
    RankResult
        The primary contrast's ranking and the mode comparison.
    """
    layout = _layout(config, out_dir)
    require_calibrated(layout.root, config)
    result = rank_and_compare(discovery_inputs(config, out_dir), layout.root, config)
    for fate, path in layout.contrast_hits().items():
        rank_file(layout.mash("gene", config.mash_default_mode, fate), path, config, source="gene")
    return result


# --------------------------------------------------------------------------- diagnostics
def diagnostics_step(
    experiment: Experiment, config: FatebiasConfig, out_dir: str | Path | None = None, run_chain: ChainRunner | None = None
) -> DiagnosticsResult:
    """Held-out fit, permutation negative control and sanity checks -> ``diagnostics.json``.

    ``run_chain`` is the engine the permutation control reruns the chain with (the step
    table passes :func:`fatebias_core.pipeline.chain.run_chain`).
    """
    return run_diagnostics(experiment, config, _layout(config, out_dir).root, run_chain=run_chain)


# --------------------------------------------------------------------------- report
def report_step(config: FatebiasConfig, out_dir: str | Path | None = None) -> ReportResult:
    """Write ``report.html``, the self-contained HTML report of the run folder's files."""
    return build_report(_layout(config, out_dir).root, config)


def step_outputs(step: str, config: FatebiasConfig, out_dir: str | Path | None = None) -> list[Path]:
    """The files ``step`` writes into the run folder (what the manifest checks still exist)."""
    return _layout(config, out_dir).step_files(step)
