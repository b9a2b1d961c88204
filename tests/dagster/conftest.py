"""Fixtures of the platform tests: a tiny simulated experiment and a fresh environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

#: Settings small enough that the whole chain runs in seconds on 2 cores.
TINY = {
    "sim_n_cells": 1500,
    "sim_n_genes": 12,
    "sim_n_guides": 36,
    "sim_kmax": 4,
    "num_steps": 150,
    "batch_size": 1024,
    "num_posterior_draws": 100,
    "run_diagnostics": False,
    "progress": False,
}

#: Environment variables the platform reads; cleared so that tests see only what they set.
PLATFORM_ENV = (
    "FATEBIAS_CONFIG",
    "FATEBIAS_DEMO_DIR",
    "FATEBIAS_DEVICE",
    "FATEBIAS_MASH_BACKEND",
    "FATEBIAS_LINEAGE_DB",
    "FATEBIAS_EXECUTOR",
    "FATEBIAS_DASK_CLUSTER",
    "FATEBIAS_SLURM",
    "FATEBIAS_GPU_REQUEST",
    "FATEBIAS_STUDY",
    "FATEBIAS_STUDY_DIR",
    "FATEBIAS_OBSERVE_INTERVAL",
    "FATEBIAS_AUTOMATION_INTERVAL",
    "DAGSTER_HOME",
)


def write_tiny_sim_config(folder: Path, **settings: object) -> Path:
    """A configuration naming no experiment (the demo deployment) with the tiny settings."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **settings}))
    return path


def simulate_tiny(folder: Path, **settings: object) -> Path:
    """Simulate the tiny experiment into ``folder``; return its run configuration."""
    from fatebias_core.config import make_config
    from fatebias_core.data.simulate import simulate

    sim = simulate(make_config({**TINY, **settings}), folder)
    return sim.paths["config"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The platform's environment variables unset (``fatebias run``'s instance: the run folder's own)."""
    for name in PLATFORM_ENV:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run configuration of a tiny simulated experiment (shared by a module's tests)."""
    return simulate_tiny(tmp_path_factory.mktemp("tiny") / "sim")


def write_debug_instance_yaml(home: Path) -> Path:
    """The repository's dagster.yaml in ``home`` with run logs at DEBUG.

    The repository keeps runs at INFO (a user sees what each step did, not every event);
    tests that read Dagster's per-event lines (RUN_SUCCESS, step starts, engine events)
    need every event logged.
    """
    text = (Path(__file__).parents[2] / "dagster.yaml").read_text()
    assert "python_log_level: INFO" in text
    path = home / "dagster.yaml"
    path.write_text(text.replace("python_log_level: INFO", "python_log_level: DEBUG"))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """The current environment without the platform's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in PLATFORM_ENV}
    env.update(extra)
    return env


class PipesCall:
    """Calls through :class:`~fatebias_dagster.slurm.PipesSlurmClient` of a ``slurm:`` block, each inside a
    materialization (a Pipes session needs a run); a call gives its value or raises its exception."""

    def __init__(self, block: dict):
        from fatebias_dagster.slurm import PipesSlurmClient, parse_slurm_block

        self.client = PipesSlurmClient(parse_slurm_block(block))

    def __call__(self, **kwargs: object) -> object:
        """``client.call(context, **kwargs)``."""
        out: dict[str, object] = {}

        @dg.asset
        def step(context) -> dg.MaterializeResult:  # noqa: ANN001 (Dagster reads the annotation, a string here)
            try:
                out["value"] = self.client.call(context, **kwargs)
            except Exception as exc:
                out["error"] = exc
            return dg.MaterializeResult()

        dg.materialize([step])
        if "error" in out:
            raise out["error"]  # type: ignore[misc]
        return out["value"]
