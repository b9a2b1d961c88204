"""The simulation-study resource: a sweep spec's runs as partitions, each in its own folder.

A study is a sweep spec (:mod:`fatebias_core.studies.sweep`): ``scenarios`` (name -> settings),
a grid of settings and ``seeds``. ``FATEBIAS_STUDY`` names a spec YAML or a preset
(``stress``, the default; ``prior``; ``tau``). The base settings are the experiment
configuration's (``FATEBIAS_CONFIG``).

Partitions are ``<variant>|<seed>``: the variant is the scenario and grid values of a
run (``low_concentration``, ``s_tau=0.3+s_guide=0.1``), the seed its ``sim_seed``.
Partition ``v|s`` simulates into ``<root>/<v>/seed_<s>`` and runs the chain into that
folder's ``results``, exactly as ``fatebias sweep`` does for one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from fatebias_core.config import FatebiasConfig, make_config
from fatebias_core.errors import ConfigError
from fatebias_core.studies.sweep import PRESETS, SweepRun, SweepSpec, load_spec, preset

from .env import env_or
from .experiment import ChainSource, ExperimentConfig, RunFolder, demo_run_config

STUDY_ENV = "FATEBIAS_STUDY"
STUDY_DIR_ENV = "FATEBIAS_STUDY_DIR"
DEFAULT_STUDY = "stress"


def _value(v: object) -> str:
    return str(v).replace("|", "/").replace(",", ";").replace("[", "(").replace("]", ")")


@dataclass(frozen=True)
class Study:
    """A validated study: the sweep spec and its runs by partition."""

    spec: SweepSpec

    @classmethod
    def load(cls, ref: str | None) -> Study:
        """A preset name or a spec YAML (``None``: the ``stress`` preset)."""
        ref = ref or DEFAULT_STUDY
        return cls(preset(ref) if ref in PRESETS else load_spec(ref))

    @staticmethod
    def variant(run: SweepRun) -> str:
        """The partition label of a run's scenario and grid values."""
        parts = ([run.scenario] if run.scenario else []) + [f"{k}={_value(v)}" for k, v in run.values.items()]
        return "+".join(parts) or "base"

    def variants(self) -> list[str]:
        """Every variant, in the spec's order."""
        return list(dict.fromkeys(self.variant(r) for r in self.spec.runs()))

    def partitions_def(self) -> dg.MultiPartitionsDefinition:
        """Partitions ``<variant>|<seed>``."""
        return dg.MultiPartitionsDefinition(
            {
                "scenario": dg.StaticPartitionsDefinition(self.variants()),
                "seed": dg.StaticPartitionsDefinition([str(s) for s in self.spec.seeds]),
            }
        )

    def run_config(self, partition_key: str, base: FatebiasConfig) -> tuple[SweepRun, FatebiasConfig]:
        """The run of a partition and its validated simulation settings."""
        variant, seed = split_partition(partition_key)
        base = make_config(base.model_dump() | {"adata_path": None, "guide_map_csv": None})
        for run, cfg in self.spec.configs(base):
            if self.variant(run) == variant and run.seed == seed:
                return run, cfg
        raise ConfigError(f"partition {partition_key!r} is not a run of study {self.spec.name!r}")


def split_partition(partition_key: str) -> tuple[str, int]:
    """``"<variant>|<seed>"`` -> (variant, seed)."""
    keys = getattr(partition_key, "keys_by_dimension", None)
    if keys is not None:
        return keys["scenario"], int(keys["seed"])
    variant, seed = str(partition_key).split("|")
    return variant, int(seed)


class StudyConfig(ChainSource):
    """The simulation study: base settings from the experiment configuration, runs from a sweep spec."""

    experiment: ExperimentConfig
    study: str | None = Field(
        default=None, description="Sweep spec YAML or preset name (FATEBIAS_STUDY). Unset: the stress preset."
    )
    root: str | None = Field(default=None, description="Folder of the study (FATEBIAS_STUDY_DIR). Unset: <out_dir>/study.")

    @classmethod
    def from_env(cls, experiment: ExperimentConfig) -> StudyConfig:
        """The resource with ``FATEBIAS_STUDY`` and ``FATEBIAS_STUDY_DIR`` (``dg.EnvVar``) where set."""
        return cls(experiment=experiment, study=env_or(STUDY_ENV, None), root=env_or(STUDY_DIR_ENV, None))

    def load(self) -> Study:
        """The validated study."""
        return Study.load(self.study)

    def study_root(self) -> Path:
        """The study's folder."""
        if self.root:
            return Path(self.root).resolve()
        return Path(self.experiment.chain_config().out_dir).resolve() / "study"

    def partition_dir(self, partition_key: str) -> Path:
        """``<root>/<variant>/seed_<seed>``: the simulated files of a partition."""
        variant, seed = split_partition(partition_key)
        return self.study_root() / variant / f"seed_{seed}"

    def sweep_run(self, partition_key: str) -> tuple[SweepRun, FatebiasConfig]:
        """The sweep run of a partition and its simulation settings."""
        return self.load().run_config(partition_key, self.experiment.base_config())

    def simulation_target(self, partition_key: str | None = None) -> tuple[FatebiasConfig, Path]:
        """The settings and folder of a partition's simulation."""
        key = _require(partition_key)
        return self.sweep_run(key)[1], self.partition_dir(key)

    def run_folder(self, partition_key: str | None = None, **overrides: object) -> RunFolder:
        """The run folder and effective settings of a partition."""
        key = _require(partition_key)
        config = demo_run_config(self.sweep_run(key)[1], self.partition_dir(key))
        if overrides:
            config = make_config(config.model_dump(), source="resource overrides", **overrides)
        out = Path(config.out_dir).resolve()
        return RunFolder(config, out, self.experiment.lineage_default(), partition_key=str(key))


def _require(partition_key: str | None) -> str:
    if partition_key is None:
        raise ConfigError("the simulation study's assets are partitioned: name a <variant>|<seed> partition")
    return partition_key
