"""Every file name of a run folder, a fit folder and a simulation folder, in one place.

The names are the public interface that downstream scripts read
(``gene_daywise_for_mash.csv``, ``mash_gene_<mode>.csv``, ``hits_ranked.csv``, ...), so
they are defined here once; the steps, the diagnostics, the report, the CLI and the
Dagster assets ask :class:`RunLayout` where a file lives rather than spelling its name.

The primary contrast's files keep their plain names; every other contrast's files carry
the suffix ``_<FATE>`` (:meth:`FatebiasConfig.file_suffix`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fatebias_core.config import MASH_MODES, FatebiasConfig
from fatebias_core.io.files import PathLike

# ---------------------------------------------------------------- the fit folder (<run>/fit)
FIT_DIR = "fit"
FIT_META = "fit.json"
FIT_PARAMS = "variational_params.npz"
FIT_ELBO = "elbo_trace.csv"
CHECKPOINT = "checkpoint.pt"
FIT_META_FILE = f"{FIT_DIR}/{FIT_META}"
"""The fit's metadata relative to the run folder (``fit/fit.json``)."""
FIT_ELBO_FILE = f"{FIT_DIR}/{FIT_ELBO}"
"""The fit's loss trace relative to the run folder (``fit/elbo_trace.csv``)."""

# ---------------------------------------------------------------- the run folder
LOAD_SUMMARY = "load_summary.json"
DROPPED_CELLS = "dropped_cells.csv"
GUIDE_ASSIGNMENT = "guide_assignment.h5ad"
"""Cells x guides as loaded from a guide file or assigned from counts (X: 1 = detected; layers['counts']: UMIs; var: per guide)."""
GUIDE_THRESHOLDS = "guide_thresholds.csv"
"""Per guide and batch: the threshold, cells assigned, UMI summaries and detection estimate (the assignment QC)."""
CONFIG_USED = "config_used.yaml"
MANIFEST = "fatebias_manifest.json"
ELBO_FIGURE = "elbo_trace.png"
EFFECTS_FIGURE = "effects_by_day.png"
HITS = "hits_ranked.csv"
HITS_FILE = "hits_ranked{sfx}.csv"
MODE_COMPARISON = "mash_mode_comparison.csv"
DIAGNOSTICS = "diagnostics.json"
NTC_TABLE = "ntc_calibration.csv"
NTC_CHECK = "ntc_check.json"
PERMUTATION_DIR = "permutation"
PERMUTATION_FINGERPRINT = "permutation.json"
REPORT = "report.html"
DAYWISE_CONFUSION = "daywise_confusion.csv"
CALL_SUMMARY = "pred_call_summary.json"
LINEAGE_DB = "lineage.duckdb"
"""The Dagster engine's lineage database (fatebias_dagster), unless ``FATEBIAS_LINEAGE_DB`` names another."""
SLURM_LOGS = "slurm_logs"
"""The Slurm jobs' ``.out``/``.err`` files of a run folder (fatebias_dagster on Slurm), unless the block names a folder."""
SLURM_TASKS = ".slurm_jobs"
"""Where a step's call, Pipes files and result wait while its Slurm job runs (removed after it)."""

# ---------------------------------------------------------------- a simulation study (fatebias_dagster)
RECOVERY_SUMMARY = "recovery_summary.csv"
RECOVERY_FIGURE = "recovery_summary.png"

# ---------------------------------------------------------------- a calibration study (fatebias calibrate)
CALIBRATION_RESULTS = "calibration_results.csv"
CALIBRATION_PARTIAL = "calibration_results.partial.csv"
"""The rows of the runs done so far (an interrupted study resumes from it)."""
CALIBRATION_SUMMARY = "calibration_summary.csv"
CALIBRATION_COVERAGE_FIGURE = "calibration_coverage.png"
CALIBRATION_FSR_FIGURE = "calibration_fsr.png"
CALIBRATION_TABLES = "calibration_tables.md"

# ---------------------------------------------------------------- a parameter sweep (fatebias sweep)
SWEEP_SPEC = "sweep_spec.yaml"
SWEEP_RESULTS = "sweep_results.csv"
SWEEP_FIGURE = "sweep_results.png"

EXPORT_FILES = {
    "gene_daywise": "gene_daywise_for_mash{sfx}.csv",
    "guide_daywise": "guide_daywise_for_mash{sfx}.csv",
    "theta_npz": "theta_posterior_summary{sfx}.npz",
    "delta_npz": "delta_posterior_summary{sfx}.npz",
    "qc_delta": "qc_delta_mean_by_gene{sfx}.csv",
    "qc_offset": "qc_theta_beta_offset_by_gene{sfx}.csv",
    "ash_summary": "gene_summary_for_ash{sfx}.csv",
}
"""The posterior exports of one contrast, by kind."""

MASH_FILE = "mash_{level}_{mode}{sfx}.csv"
ASH_FILE = "ash_gene_summary{sfx}.csv"
GUIDE_AGG_FILE = "gene_from_guide_mash_{mode}.csv"

# ---------------------------------------------------------------- a simulation folder
SIM_ADATA = "adata.h5ad"
SIM_GUIDE_MAP = "guide_map.csv"
SIM_TRUTH_GUIDES = "truth_guides.csv"
SIM_METADATA = "sim_metadata.yaml"
SIM_CONFIG = "config.yaml"
SIM_RESULTS = "results"
"""The run folder ``fatebias demo`` and a simulation's ``config.yaml`` write into."""


def truth_daywise_file(suffix: str = "") -> str:
    """The simulated truth of a contrast (``truth_daywise<suffix>.csv``)."""
    return f"truth_daywise{suffix}.csv"


def truth_estimand_file(suffix: str = "") -> str:
    """The estimand a fit targets under the simulated realism (``truth_estimand_daywise<suffix>.csv``)."""
    return f"truth_estimand_daywise{suffix}.csv"


@dataclass(frozen=True)
class RunLayout:
    """Where each output of a run lives, for one run folder and configuration.

    Parameters
    ----------
    root
        The run folder.
    config
        The configuration: it decides the contrasts (file suffixes) and whether the
        across-day ash files exist.
    """

    root: Path
    config: FatebiasConfig

    @classmethod
    def of(cls, config: FatebiasConfig, out_dir: PathLike | None = None) -> RunLayout:
        """The layout of ``out_dir`` (``config.out_dir`` when None)."""
        return cls(Path(out_dir if out_dir is not None else config.out_dir), config)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    @property
    def fit_dir(self) -> Path:
        return self.root / FIT_DIR

    @property
    def permutation_dir(self) -> Path:
        return self.root / PERMUTATION_DIR

    def _sfx(self, fate: str | None) -> str:
        return self.config.file_suffix(fate or self.config.contrast_fate)

    # ------------------------------------------------------------ per step
    def load_files(self) -> list[Path]:
        """``load_summary.json``, ``dropped_cells.csv`` and, for guides not read from obsm, the guide files."""
        files = [self.root / LOAD_SUMMARY, self.root / DROPPED_CELLS]
        if self.config.guide_source != "obsm":
            files += [self.root / GUIDE_ASSIGNMENT, self.root / GUIDE_THRESHOLDS]
        return files

    def fit_files(self) -> list[Path]:
        """The saved fit that later steps load (metadata and parameters)."""
        return [self.fit_dir / FIT_META, self.fit_dir / FIT_PARAMS]

    def exports(self, fate: str | None = None) -> dict[str, Path]:
        """The posterior exports of contrast ``fate`` (primary when None), by kind."""
        kinds = [k for k in EXPORT_FILES if k != "ash_summary" or self.config.export_ash_summary]
        sfx = self._sfx(fate)
        return {kind: self.root / EXPORT_FILES[kind].format(sfx=sfx) for kind in kinds}

    def all_exports(self, fates: list[str] | None = None) -> dict[str, dict[str, Path]]:
        """:meth:`exports` of every contrast (or of ``fates``)."""
        return {fate: self.exports(fate) for fate in (fates if fates is not None else self.config.contrast_fates)}

    def mash(self, level: str, mode: str, fate: str | None = None) -> Path:
        """``mash_<level>_<mode>[_<FATE>].csv``: mash of the gene or guide table in ``mode``."""
        return self.root / MASH_FILE.format(level=level, mode=mode, sfx=self._sfx(fate))

    def ash(self, fate: str | None = None) -> Path | None:
        """``ash_gene_summary[_<FATE>].csv``, or None when ``export_ash_summary`` is off."""
        return self.root / ASH_FILE.format(sfx=self._sfx(fate)) if self.config.export_ash_summary else None

    @property
    def mash_levels(self) -> tuple[str, ...]:
        """The tables mash runs on: gene, and guide unless ``mash_guide_level`` is off."""
        return ("gene", "guide") if self.config.mash_guide_level else ("gene",)

    def mash_tables(self) -> dict[tuple[str, str, str], Path]:
        """Every mash table, by (level, mode, fate)."""
        return {
            (level, mode, fate): self.mash(level, mode, fate)
            for fate in self.config.contrast_fates
            for level in self.mash_levels
            for mode in MASH_MODES
        }

    def guide_aggs(self) -> dict[str, Path]:
        """``gene_from_guide_mash_<mode>.csv`` of each mode (none without guide-level mash)."""
        return {mode: self.guide_agg(mode) for mode in MASH_MODES} if self.config.mash_guide_level else {}

    def ash_tables(self) -> dict[str, Path]:
        """Every ash summary, by contrast fate (none when ``export_ash_summary`` is off)."""
        return {fate: p for fate in self.config.contrast_fates if (p := self.ash(fate)) is not None}

    def mash_files(self) -> list[Path]:
        """Every file the mash step writes: the mash tables and the ash summaries."""
        return [*self.mash_tables().values(), *self.ash_tables().values()]

    def guide_agg(self, mode: str) -> Path:
        """``gene_from_guide_mash_<mode>.csv``: guide-level mash aggregated to genes."""
        return self.root / GUIDE_AGG_FILE.format(mode=mode)

    def contrast_hits(self) -> dict[str, Path]:
        """``hits_ranked_<FATE>.csv`` of every contrast but the primary one, by fate."""
        primary = self.config.contrast_fate
        return {
            fate: self.root / HITS_FILE.format(sfx=self._sfx(fate)) for fate in self.config.contrast_fates if fate != primary
        }

    def hits(self, fate: str | None = None) -> Path:
        """The ranked hits of contrast ``fate`` (``hits_ranked.csv`` for the primary one)."""
        return self.root / HITS_FILE.format(sfx=self._sfx(fate))

    def rank_files(self) -> list[Path]:
        """``hits_ranked.csv``, ``mash_mode_comparison.csv`` and every other contrast's ``hits_ranked_<FATE>.csv``."""
        return [self.root / HITS, self.root / MODE_COMPARISON, *self.contrast_hits().values()]

    def step_files(self, step: str) -> list[Path]:
        """The files ``step`` writes (what a manifest checks still exist)."""
        files = {
            "load": self.load_files,
            "fit": self.fit_files,
            "export": lambda: [p for f in self.all_exports().values() for p in f.values()],
            "mash": self.mash_files,
            "aggregate": lambda: list(self.guide_aggs().values()),
            "rank": self.rank_files,
            "diagnostics": lambda: [self.root / DIAGNOSTICS],
            "report": lambda: [self.root / REPORT],
        }
        if step not in files:
            raise ValueError(f"no such step: {step}")
        return files[step]()
