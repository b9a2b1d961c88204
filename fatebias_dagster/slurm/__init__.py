"""Steps as Slurm jobs, through Dagster Pipes.

With ``FATEBIAS_EXECUTOR=slurm`` and ``FATEBIAS_SLURM`` naming a file with a ``slurm:``
block, Dagster's own multiprocess executor runs the run on the submit host and each
step's computation is a Slurm job of its own (:class:`~fatebias_dagster.resources.ClusterResource`
calls :class:`PipesSlurmClient`): the fit in the ``gpu`` pool's job when
``FATEBIAS_GPU_REQUEST=1``, every other step in the ``cpu`` pool's. ``python -m
fatebias_dagster.slurm slurm.yaml`` prints each pool's job script.

* :mod:`.settings`: the block, its pools and job scripts.
* :mod:`.queue`: Slurm's commands.
* :mod:`.client`: the Pipes client (submit, watch, resubmit, the value back).
* :mod:`.remote`: what the job runs.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: Public names and their modules, imported on first use: a step's job imports :mod:`.remote`
#: through this package and should not pay for Dagster's import.
_EXPORTS = {
    "JobSpec": "settings",
    "PipesSlurmClient": "client",
    "SlurmClusterError": "settings",
    "SlurmSettings": "settings",
    "SlurmStepError": "client",
    "parse_slurm_block": "settings",
    "pool_job_scripts": "settings",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "JobSpec",
    "PipesSlurmClient",
    "SlurmClusterError",
    "SlurmSettings",
    "SlurmStepError",
    "parse_slurm_block",
    "pool_job_scripts",
]
