"""Resources of the platform: experiment configuration, compute device, cluster, mash backend, lineage store."""

from .cluster import ClusterResource
from .compute import ComputeResource
from .experiment import ChainSource, ExperimentConfig, RunFolder
from .lineage import LineageStore
from .mash import MashBackend
from .study import Study, StudyConfig

__all__ = [
    "ChainSource",
    "ClusterResource",
    "ComputeResource",
    "ExperimentConfig",
    "LineageStore",
    "MashBackend",
    "RunFolder",
    "Study",
    "StudyConfig",
]
