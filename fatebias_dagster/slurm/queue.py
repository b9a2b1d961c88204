"""Slurm's commands, as the client uses them: ``sbatch``, ``squeue``, ``scontrol``, ``scancel``."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .settings import SlurmClusterError

#: States of a job that waits for, or holds, its allocation.
ALIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
    "SIGNALING", "STAGE_OUT", "COMPLETING", "STOPPED",
})
#: End states of a job that Slurm (or a person) took away: the step is worth running again.
LOST_STATES = frozenset({"CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED"})


@dataclass(frozen=True)
class JobState:
    """A job's state and Slurm's reason (``GONE``: Slurm no longer knows the job)."""

    state: str
    reason: str = ""

    @property
    def alive(self) -> bool:
        """Queued or running."""
        return self.state in ALIVE_STATES

    @property
    def pending(self) -> bool:
        """Waiting in the queue."""
        return self.state == "PENDING"


def _run(cmd: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise SlurmClusterError(f"{cmd[0]} not found: is this a Slurm submit host (with Slurm's commands on PATH)?") from None


def submit(script_path: Path) -> str:
    """``sbatch`` the script; return the job id.

    Raises
    ------
    SlurmClusterError
        Slurm refused the job (its own words: a bad partition, an impossible request).
    """
    proc = _run(["sbatch", "--parsable", str(script_path)])
    if proc.returncode != 0:
        said = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise SlurmClusterError(f"Slurm refused the job: {'; '.join(said) or f'sbatch exited {proc.returncode}'}")
    job = proc.stdout.strip().split(";")[0]
    if not job.isdigit():
        raise SlurmClusterError(f"sbatch printed no job id: {proc.stdout.strip()!r}")
    return job


def job_state(job_id: str) -> JobState | None:
    """The job's state and reason; None when Slurm could not be asked (slurmctld busy): nothing is known."""
    proc = _run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r"])
    if proc.returncode == 0 and proc.stdout.strip():
        state, _, reason = proc.stdout.strip().splitlines()[0].partition("|")
        return JobState(state.strip(), reason.strip())
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        return None
    record = show_job(job_id)
    if record is None:
        return None
    if not record:
        return JobState("GONE")
    return JobState(record.get("JobState", "GONE"), record.get("Reason", ""))


def show_job(job_id: str) -> dict[str, str] | None:
    """``scontrol show job`` as key -> value; ``{}`` when Slurm no longer knows the job, None when it failed."""
    proc = _run(["scontrol", "show", "job", "-o", job_id])
    if proc.returncode != 0:
        return {} if "Invalid job id" in proc.stderr else None
    return dict(tok.split("=", 1) for tok in proc.stdout.split() if "=" in tok)


def cancel(job_id: str) -> None:
    """``scancel`` the job (quietly: it may have ended already)."""
    _run(["scancel", job_id])


def log_tail(path: Path, lines: int = 8) -> str:
    """The last ``lines`` lines of a job's log file, or ''."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def log_paths(job_id: str, log_directory: Path, job_name: str) -> tuple[Path, Path]:
    """The job's ``.out`` and ``.err`` files (``%x-%j`` expanded)."""
    return log_directory / f"{job_name}-{job_id}.out", log_directory / f"{job_name}-{job_id}.err"
