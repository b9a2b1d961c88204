"""Resources of the platform: experiment configuration, compute device, mash backend, lineage store."""

from .compute import ComputeResource
from .experiment import ChainSource, ExperimentConfig, RunFolder
from .lineage import LineageStore
from .mash import MashBackend
from .study import Study, StudyConfig

__all__ = [
    "ChainSource",
    "ComputeResource",
    "ExperimentConfig",
    "LineageStore",
    "MashBackend",
    "RunFolder",
    "Study",
    "StudyConfig",
]
