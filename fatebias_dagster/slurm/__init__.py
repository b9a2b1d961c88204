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

from .client import PipesSlurmClient, SlurmStepError
from .settings import JobSpec, SlurmClusterError, SlurmSettings, parse_slurm_block, pool_job_scripts

__all__ = [
    "JobSpec",
    "PipesSlurmClient",
    "SlurmClusterError",
    "SlurmSettings",
    "SlurmStepError",
    "parse_slurm_block",
    "pool_job_scripts",
]
