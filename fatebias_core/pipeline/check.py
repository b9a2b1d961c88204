"""``fatebias check``: the data as a run would load them, checked before any fit; nothing written.

Kept apart from :mod:`fatebias_core.pipeline.steps` so that the check does not import the
model's numerical stack (torch, Pyro): at 200,000 cells it takes a few seconds. The
Laplace size check it runs is plain arithmetic (numpy/scipy only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from fatebias_core.config import FatebiasConfig
from fatebias_core.data.load import load_experiment
from fatebias_core.errors import ConfigError, InputDataError
from fatebias_core.io import layout as names
from fatebias_core.model.laplace import check_laplace_size
from fatebias_core.types import Experiment


def load_experiment_checked(config: FatebiasConfig, verbose: bool = True) -> Experiment:
    """Load the experiment named by the configuration (nothing is written)."""
    if not config.adata_path or not config.guide_map_csv:
        missing = [k for k in ("adata_path", "guide_map_csv") if not getattr(config, k)]
        raise ConfigError(f"the configuration does not name {' and '.join(missing)}")
    absent = [f"{key}: file not found: {getattr(config, key)}" for key in ("adata_path", "guide_map_csv")
              if not Path(getattr(config, key)).exists()]
    absent += [f"guide_files: file not found: {f}" for f in config.guide_files if not Path(f).exists()]
    if absent:
        raise InputDataError("; ".join(absent))  # every missing input at once, each with its key
    return load_experiment(config, verbose=verbose)


@dataclass
class CheckResult:
    """What :func:`check_data` found: the experiment as a run would load it."""

    experiment: Experiment
    runtime_s: float
    notes: list[str] = field(default_factory=list)

    def describe(self, config_path: str | Path | None = None) -> str:
        s = self.experiment.summary
        lines = [s.format()]
        lines.extend(f"  note: {n}" for n in self.notes)
        run = f"fatebias run --config {config_path}" if config_path else "fatebias run"
        lines.append(
            f"data ok: {s.n_cells_kept} cells, {self.experiment.guides.n_genes} genes, {len(s.cells_per_day)} days "
            f"checked in {self.runtime_s:.1f} s; nothing was written. `{run}` fits it."
        )
        return "\n".join(lines)


def check_data(config: FatebiasConfig) -> CheckResult:
    """Run every validation of loading (and the checks that precede the fit) without fitting.

    ``fatebias check``: reads the inputs exactly as ``fatebias run`` does and writes nothing.

    Raises
    ------
    FatebiasError
        The one-line error ``fatebias run`` would stop with.
    """
    t0 = time.perf_counter()
    experiment = load_experiment_checked(config, verbose=False)
    notes: list[str] = []
    if config.posterior_method != "meanfield":
        notes.append(check_laplace_size(experiment, len(config.contrast_fates), config.laplace_algebra).describe())
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir: {out} exists and is not a folder")
    if experiment.summary.n_dropped:
        notes.append("fatebias run lists every dropped cell, with its reason, in dropped_cells.csv")
    if (out / names.MANIFEST).exists():
        notes.append(f"{out} holds an earlier run: steps whose inputs and settings are unchanged will be reused")
    return CheckResult(experiment=experiment, runtime_s=time.perf_counter() - t0, notes=notes)
