"""The experiment configuration resource: which experiment, with which settings, into which folder.

The settings are fatebias_core's one schema (:class:`~fatebias_core.config.FatebiasConfig`),
read from the YAML named by ``FATEBIAS_CONFIG``. A configuration that names no
``adata_path`` describes the built-in simulated demo: the ``simulated_experiment`` asset
writes the data into ``demo_dir`` (``FATEBIAS_DEMO_DIR``, default ``./fatebias_demo``)
and the chain reads it from there, exactly as ``fatebias demo`` does.

The YAML is read afresh at every use, so an edited file takes effect in the next run
without restarting anything (the automation sensor notices the edit and reruns the
steps whose settings changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from fatebias_core.config import FatebiasConfig, load_config, make_config
from fatebias_core.errors import ConfigError
from fatebias_core.io import layout as run_files

from .env import env_or

CONFIG_ENV = "FATEBIAS_CONFIG"
DEMO_DIR_ENV = "FATEBIAS_DEMO_DIR"
DEFAULT_DEMO_DIR = "fatebias_demo"
LINEAGE_FILE = run_files.LINEAGE_DB


@dataclass(frozen=True)
class RunFolder:
    """Where one materialization of a chain asset reads and writes, with which settings.

    Attributes
    ----------
    config
        The effective settings (resource overrides such as the device applied).
    out_dir
        The run folder (``config.out_dir``).
    lineage_db
        The deployment's default lineage database.
    partition_key
        The partition being materialized (simulation studies), else None.
    """

    config: FatebiasConfig
    out_dir: Path
    lineage_db: Path
    partition_key: str | None = None


def demo_run_config(base: FatebiasConfig, demo_dir: str | Path) -> FatebiasConfig:
    """The run configuration of the simulated demo experiment in ``demo_dir``.

    The same settings :func:`fatebias_core.simulate.simulate` writes to
    ``<demo_dir>/config.yaml``, computed without simulating, so that the chain's
    settings are known before the data exist.
    """
    from fatebias_core.data.simulate import run_config

    folder = Path(demo_dir).resolve()
    values = run_config(base, base.sim_n_days, base.sim_n_reps)
    values.update(
        adata_path=str(folder / values["adata_path"]),
        guide_map_csv=str(folder / values["guide_map_csv"]),
        out_dir=str(folder / values["out_dir"]),
    )
    return make_config(values, source=f"demo run configuration for {folder}")


class ChainSource(dg.ConfigurableResource):
    """What a chain asset asks of its ``experiment`` resource: the run folder of a partition.

    :class:`ExperimentConfig` (the main chain) and
    :class:`~fatebias_dagster.resources.study.StudyConfig` (a study's partitions) are both.
    """

    def run_folder(self, partition_key: str | None = None, **overrides: object) -> RunFolder:
        """The run folder and effective settings (``overrides`` from the compute and mash resources)."""
        raise NotImplementedError

    def simulation_target(self, partition_key: str | None = None) -> tuple[FatebiasConfig, Path]:
        """The settings and folder of a simulation."""
        raise NotImplementedError


class ExperimentConfig(ChainSource):
    """The experiment and its settings: the YAML named by FATEBIAS_CONFIG, or the built-in demo."""

    config_path: str | None = Field(
        default=None,
        description="fatebias YAML configuration (FATEBIAS_CONFIG). Unset: the built-in simulated demo.",
    )
    demo_dir: str = Field(
        default=DEFAULT_DEMO_DIR,
        description="Folder of the simulated demo experiment when the configuration names no adata_path "
        "(FATEBIAS_DEMO_DIR).",
    )

    @classmethod
    def from_env(cls) -> ExperimentConfig:
        """The resource with ``FATEBIAS_CONFIG`` and ``FATEBIAS_DEMO_DIR`` (``dg.EnvVar``) where set."""
        return cls(config_path=env_or(CONFIG_ENV, None), demo_dir=env_or(DEMO_DIR_ENV, DEFAULT_DEMO_DIR))

    def base_config(self) -> FatebiasConfig:
        """The settings as written in the YAML (defaults when there is none)."""
        if self.config_path is None:
            return make_config()
        return load_config(self.config_path)

    def is_demo(self) -> bool:
        """True when the configuration names no experiment: the chain runs on the simulated demo."""
        base = self.base_config()
        if (base.adata_path is None) != (base.guide_map_csv is None):
            raise ConfigError(f"{self.config_path}: name both adata_path and guide_map_csv, or neither (demo)")
        return base.adata_path is None

    def chain_config(self) -> FatebiasConfig:
        """The settings the chain runs with (the demo's run configuration in demo mode)."""
        base = self.base_config()
        return demo_run_config(base, self.demo_dir) if base.adata_path is None else base

    def simulation_target(self, partition_key: str | None = None) -> tuple[FatebiasConfig, Path]:
        """The settings and folder of the demo simulation."""
        return self.base_config(), Path(self.demo_dir).resolve()

    def lineage_default(self) -> Path:
        """The deployment's lineage database: ``<out_dir>/lineage.duckdb``."""
        return Path(self.chain_config().out_dir).resolve() / LINEAGE_FILE

    def run_folder(self, partition_key: str | None = None, **overrides: object) -> RunFolder:
        """The run folder and effective settings (``overrides`` from the compute and mash resources)."""
        config = self.chain_config()
        if overrides:
            config = make_config(config.model_dump(), source="resource overrides", **overrides)
        out = Path(config.out_dir).resolve()
        return RunFolder(config=config, out_dir=out, lineage_db=out / LINEAGE_FILE, partition_key=partition_key)
