"""Data versions: the same step versions ``fatebias run`` uses, reported to Dagster.

fatebias_core.pipeline.graph defines a step's *version* as a hash of its code version (a hash
of the sources it runs), the
settings it reads, its upstream steps' versions and (for loading) the input files'
content hash. The platform reports exactly that as each asset's data version, and
models the two kinds of change that make a step stale as observable sources:

* ``experiment``: the input files, data version = their content hash;
* ``settings/<step>``: the settings one step reads, data version = their hash.

Editing only a ranking threshold therefore gives ``settings/rank`` (and
``settings/aggregate``, which calls days with the same thresholds) a new data version,
and Dagster marks ``aggregated_genes`` and ``ranked_hits`` stale, not the fit.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import dagster as dg

from fatebias_core.config import FatebiasConfig
from fatebias_core.hashing import file_hash, short_hash
from fatebias_core.pipeline.graph import (
    ASSET_STEP,
    STEPS,
    code_versions,
    input_version,
    step_settings,
)
from fatebias_core.pipeline.graph import step_versions as core_step_versions

#: Chain assets of each fatebias_core step, in chain order (from the step table).
STEP_ASSETS: dict[str, tuple[str, ...]] = {name: step.asset_names for name, step in STEPS.items()}

#: Steps with a settings source (every chain step that reads settings; the report reads none).
SETTINGS_STEPS = tuple(step for step in STEP_ASSETS if step_settings(step))

EXPERIMENT_KEY = dg.AssetKey("experiment")
SIMULATED_KEY = dg.AssetKey("simulated_experiment")

#: Settings that shape the simulated demo's files.
SIMULATION_SETTINGS = "simulation"


def settings_key(step: str) -> dg.AssetKey:
    """The observable source of ``step``'s settings."""
    return dg.AssetKey(["settings", step])


def simulation_settings() -> list[str]:
    """Settings the simulator reads: every ``sim_*`` setting and the file layout keys."""
    layout = ["fates", "ref_fate", "contrast_fate", "fate_prob_key", "guide_key", "covar_key", "rep_key", "day_key"]
    return [f for f in FatebiasConfig.model_fields if f.startswith("sim_")] + layout


def settings_fields(step: str) -> list[str]:
    """Names of the settings ``step`` reads (``simulation`` included)."""
    return simulation_settings() if step == SIMULATION_SETTINGS else step_settings(step)


def settings_version(config: FatebiasConfig, step: str) -> str:
    """Data version of ``settings/<step>``: the hash of the settings the step reads."""
    return config.hash(settings_fields(step))


def settings_values(config: FatebiasConfig, step: str) -> dict[str, object]:
    """The settings ``step`` reads, name -> value."""
    data = config.model_dump(mode="json")
    return {k: data[k] for k in settings_fields(step)}


def input_files(config: FatebiasConfig) -> list[str]:
    """The experiment's input files (AnnData, guide map and guide files)."""
    return [str(p) for p in config.input_paths()]


@functools.lru_cache(maxsize=32)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return file_hash(path)


def watched_input_version(config: FatebiasConfig) -> str:
    """:func:`fatebias_core.pipeline.graph.input_version`, each file's hash cached on (path, size, mtime).

    The change sensor asks every few seconds; a multi-gigabyte AnnData is hashed again
    only when it changed on disk.
    """
    parts = []
    for p in input_files(config):
        st = os.stat(p)
        parts.append(_file_hash(str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return short_hash("|".join(parts))


def step_versions(config: FatebiasConfig) -> dict[str, str]:
    """Every step's version for the current settings and files (fatebias_core.pipeline.graph)."""
    return core_step_versions(config, watched_input_version(config))


__all__ = [
    "ASSET_STEP",
    "code_versions",
    "EXPERIMENT_KEY",
    "SETTINGS_STEPS",
    "SIMULATED_KEY",
    "STEP_ASSETS",
    "input_files",
    "input_version",
    "settings_key",
    "settings_values",
    "settings_version",
    "step_versions",
    "watched_input_version",
]
