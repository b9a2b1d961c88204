"""A Dagster Pipes client that runs a function as a Slurm job and returns its value.

The asset's own process (in any executor) writes the call to a task folder on the shared
file system, opens a Pipes session (context and messages in files beside it), submits a
job script with ``sbatch`` and watches the job with ``squeue``. On the node,
:mod:`fatebias_dagster.slurm.remote` opens Pipes, runs the call and leaves its value (or
its exception) in the task folder; its log lines reach Dagster through Pipes.

What the client does about the queue:

* ``sbatch`` refuses the job (a bad partition, an impossible request): the step fails at
  once with Slurm's own words.
* The job waits in the queue longer than ``start_timeout``: it is cancelled and the step
  fails with the job's state and Slurm's pending reason.
* The job ends before the step started (a broken environment): a new job, up to
  ``max_start_failures`` in a row; then the step fails with the end of the job's log.
* The job is lost after the step started (``scancel``, node failure, preemption): the
  step runs again in a new job, up to ``max_resubmits`` times.
* The job ends without a value in another way (out of memory, walltime): the step fails
  with the job's state and the end of its log; running it again would end the same way.
* The run is terminated: the job is cancelled.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from fatebias_core.io.layout import SLURM_LOGS, SLURM_TASKS

from . import queue
from .files import CALL_FILE, RESULT_FILE, STARTED_FILE
from .queue import LOST_STATES, JobState
from .settings import JobSpec, SlurmClusterError, SlurmSettings

#: Seconds to wait for a finished job's result file to appear (shared file systems lag).
RESULT_GRACE_S = 10.0


class SlurmStepError(RuntimeError):
    """A step's job ended without leaving a value (out of memory, walltime, a crash)."""


@dataclass(frozen=True)
class Attempt:
    """One job of a step: its folder, job id and end state."""

    folder: Path
    job_id: str
    state: JobState

    @property
    def started(self) -> bool:
        """Whether the step started in this job."""
        return (self.folder / STARTED_FILE).is_file()

    @property
    def finished(self) -> bool:
        """Whether the job left the step's value or exception."""
        return (self.folder / RESULT_FILE).is_file()

    def where(self) -> dict[str, str]:
        """Job id, host and pid the step ran under (from its start record)."""
        try:
            return json.loads((self.folder / STARTED_FILE).read_text())
        except (OSError, ValueError):
            return {}


class PipesSlurmClient(dg.PipesClient):
    """Runs calls as Slurm jobs of a pool (see the module).

    Parameters
    ----------
    settings
        The parsed ``slurm:`` block.
    """

    def __init__(self, settings: SlurmSettings):
        self.settings = settings

    # ------------------------------------------------------------------ the Pipes contract
    def run(  # type: ignore[override]
        self,
        *,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        task_dir: Path,
        pool: str,
        label: str,
        log_directory: Path,
        extras: Mapping[str, Any] | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        """Run the call in ``task_dir`` as jobs of ``pool`` until one leaves its result.

        Returns
        -------
        PipesClientCompletedInvocation
            The Pipes session of the job that finished (its results and messages).

        Raises
        ------
        SlurmClusterError
            Slurm refused the job, it waited in the queue too long, or jobs kept dying (see the module).
        SlurmStepError
            The job ended without a value after the step started.
        """
        spec = self._spec(pool)
        start_failures = resubmits = 0
        note = ""
        most = self.settings.max_start_failures * (self.settings.max_resubmits + 1)  # jobs the limits below allow
        for n in range(1, most + 1):
            folder = task_dir / f"attempt-{n}"
            folder.mkdir(parents=True)
            with dg.open_pipes_session(
                context=context,
                context_injector=dg.PipesFileContextInjector(str(folder / "context.json")),
                message_reader=dg.PipesFileMessageReader(str(folder / "messages.jsonl")),
                extras={**(extras or {}), "task": str(task_dir), "attempt": str(folder), "label": label},
            ) as session:
                script = folder / "job.sh"
                script.write_text(spec.script(session.get_bootstrap_env_vars(), log_directory))
                job = queue.submit(script)
                context.log.info(
                    f"{note}started Slurm job {job} in its place ({pool} pool)" if note
                    else f"step {label}: submitted Slurm job {job} ({pool} pool)"
                )
                attempt = Attempt(folder, job, self._wait(job, pool, label))
                if attempt.state.state == "COMPLETED":
                    self._await_result(attempt)
            if attempt.finished:
                where = attempt.where()
                context.log.info(
                    f"step {label} ran in Slurm job {job} ({pool} pool) on {where.get('host', '?')}, pid {where.get('pid', '?')}"
                )
                return dg.PipesClientCompletedInvocation(session)
            tail = queue.log_tail(queue.log_paths(job, Path(spec.log_directory or log_directory), spec.job_name)[1])
            log = f"; the end of its log:\n{tail}" if tail else ""
            if attempt.state.state in LOST_STATES:
                resubmits += 1
                if resubmits > self.settings.max_resubmits:
                    raise SlurmClusterError(
                        f"step {label}: Slurm job {job} was lost ({attempt.state.state}); {resubmits} jobs of this step "
                        f"were lost (max_resubmits {self.settings.max_resubmits}): giving up"
                    )
                note = f"step {label} (Slurm job {job}) was lost ({attempt.state.state}); "
                context.log.warning(f"{note}submitting it again")
                start_failures = 0 if attempt.started else start_failures
                continue
            if not attempt.started:
                start_failures += 1
                why = f"Slurm job {job} of the {pool} pool ended ({attempt.state.state}) before its step started{log}"
                if start_failures >= self.settings.max_start_failures:
                    raise SlurmClusterError(f"step {label}: {why}\n({start_failures} such jobs in a row: giving up)")
                context.log.warning(why)
                note = f"step {label} (Slurm job {job}) ended before its step started; "
                continue
            raise SlurmStepError(f"step {label}: Slurm job {job} ended ({attempt.state.state}) without finishing the step{log}")
        raise SlurmClusterError(f"step {label}: no job of the {pool} pool finished")  # not reached: the limits above

    # ------------------------------------------------------------------ calls
    def call(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        *,
        pool: str,
        label: str,
        workdir: Path,
        fn: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """``fn(*args, **kwargs)`` in a Slurm job of ``pool``; its value, or its exception raised here.

        Parameters
        ----------
        context
            The asset's context (the Pipes session's).
        pool
            ``cpu`` or ``gpu``.
        label
            The step's name in log lines and the task folder.
        workdir
            A folder every node sees (the run folder): the task folder goes in its
            ``.slurm_jobs``, the job logs (unless the block names a folder) in its ``slurm_logs``.
        fn, args, kwargs
            The call; ``fn`` is pickled by reference (a module-level function), the arguments by value.
        """
        self._spec(pool)
        task_dir = workdir / SLURM_TASKS / f"{label}-{uuid.uuid4().hex[:8]}"
        task_dir.mkdir(parents=True)
        logs = workdir / SLURM_LOGS
        logs.mkdir(parents=True, exist_ok=True)
        try:
            (task_dir / CALL_FILE).write_bytes(pickle.dumps((fn, tuple(args), dict(kwargs or {}))))
            self.run(context=context, task_dir=task_dir, pool=pool, label=label, log_directory=logs)
            result = next(task_dir.glob(f"attempt-*/{RESULT_FILE}"))  # only the job that finished left one
            payload = pickle.loads(result.read_bytes())
        finally:
            shutil.rmtree(task_dir, ignore_errors=True)
        if payload[0] == "ok":
            return payload[1]
        exc, text = payload[1], payload[2]
        if isinstance(exc, BaseException):
            exc.add_note(f"(raised in the Slurm job of step {label}; its traceback:)\n{text}")
            raise exc
        raise SlurmStepError(f"step {label} failed in its Slurm job:\n{text}")

    # ------------------------------------------------------------------ helpers
    def _spec(self, pool: str) -> JobSpec:
        if pool not in self.settings.pools:
            raise SlurmClusterError(
                f"no {pool} pool in the slurm cluster: add a {pool}: block (e.g. gpu: {{job_extra_directives: "
                "['--gres=gpu:1']}) or unset FATEBIAS_GPU_REQUEST"
            )
        return self.settings.pools[pool]

    def _wait(self, job: str, pool: str, label: str) -> JobState:
        """Poll the job until it ends; cancel it when it waits too long or the run stops."""
        pending_since = time.monotonic()
        try:
            while True:
                state = queue.job_state(job)
                if state is not None:
                    if not state.alive:
                        return state
                    if not state.pending:
                        pending_since = time.monotonic()
                    elif time.monotonic() - pending_since > self.settings.start_timeout:
                        waited = time.monotonic() - pending_since
                        raise SlurmClusterError(
                            f"step {label}: Slurm job {job} of the {pool} pool waited {waited:.0f} s in the queue "
                            f"(start_timeout {self.settings.start_timeout:g} s): {state.state} (reason: {state.reason})"
                        )
                time.sleep(self.settings.poll_interval)
        except BaseException:
            queue.cancel(job)  # the step failed here or the run was stopped: no job is left behind
            raise

    @staticmethod
    def _await_result(attempt: Attempt) -> None:
        deadline = time.monotonic() + RESULT_GRACE_S
        while not attempt.finished and attempt.started and time.monotonic() < deadline:
            time.sleep(0.2)
