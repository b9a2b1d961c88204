"""The Dask executor on Slurm: each step a task on a Dask worker that Slurm started as a job.

dagster-dask's own executor builds ``SLURMCluster(**block)`` and never scales it: without
``n_workers`` no worker job is submitted and the run waits forever; a job that Slurm
refuses or never starts leaves it waiting too; and one worker template cannot give the fit
a GPU job while the other steps run on CPU jobs. This executor runs the same steps with
``FATEBIAS_EXECUTOR=dask`` and a ``slurm:`` block in ``FATEBIAS_DASK_CLUSTER``, and adds:

* **Two pools of worker jobs.** The ``cpu`` pool runs every step but those that ask for a
  GPU; the ``gpu`` pool (the block's ``gpu:`` keys, e.g. ``job_extra_directives:
  ["--gres=gpu:1"]``) runs the steps whose op tag ``dagster-dask/resource_requirements``
  asks for ``GPU`` (the fit, with ``FATEBIAS_GPU_REQUEST=1``). Workers advertise the Dask
  resource ``CPU=1`` or ``GPU=1`` and every step needs one of them, so a worker runs one
  step at a time and a step only ever lands in its own pool.
* **Jobs when needed.** A pool's jobs are submitted when its first step is ready to run
  and cancelled when its last step is done (a GPU job is held for the fit only).
* **Lost workers are replaced.** A worker whose job ends (``scancel``, walltime, node
  failure) is replaced by a new job; Dask reschedules the step it was running, which
  then runs again from the start. Each step is submitted only after its upstream steps
  finished and its result is fetched at once, so no finished step is ever computed again.
* **Never waits forever.** A job Slurm refuses (``sbatch`` fails: a bad partition, an
  impossible request) fails the run at once with Slurm's message; a pool with work but
  no connected worker for ``start_timeout`` seconds fails it naming each job's state and
  Slurm's pending reason; ``max_start_failures`` jobs in a row that end before their
  worker connects fail it with the end of the job's log.

The block (every key but the executor's own goes to ``dask_jobqueue.SLURMCluster``, the
``gpu:`` keys override them for the GPU pool's jobs)::

    slurm:
      queue: cpu                  # partition
      cores: 4                    # per job; one worker per job (processes: 1)
      memory: 16GB
      walltime: "02:00:00"
      n_workers: 2                # cpu pool: worker jobs at a time (default 1)
      start_timeout: 3600         # seconds a pool may wait for its first worker (default 600)
      max_start_failures: 3       # jobs in a row that die before connecting (default 3)
      poll_interval: 2            # seconds between checks of the jobs (default 2)
      gpu:                        # the gpu pool (optional)
        queue: gpu
        n_workers: 1
        job_extra_directives: ["--gres=gpu:1"]

``python -m fatebias_dagster.slurm slurm.yaml`` prints the job script of each pool.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from dagster import multiple_process_executor_requirements
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.errors import raise_execution_interrupts
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import create_execution_plan, execute_plan
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.state import KnownExecutionState
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.base import Executor
from dagster._core.instance import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.dagster_run import DagsterRun
from dagster._utils.error import serializable_error_info_from_exc_info

from fatebias_core.errors import ConfigError

#: The op tag dagster-dask reads a step's Dask resource requirements from.
RESOURCE_TAG = "dagster-dask/resource_requirements"

#: Keys of the ``slurm:`` block that this executor reads (the rest go to SLURMCluster).
OWN_KEYS = ("n_workers", "gpu", "start_timeout", "max_start_failures", "poll_interval")

#: SLURMCluster keywords that configure the scheduler, not the jobs.
CLUSTER_ONLY_KEYS = ("scheduler_options", "name", "silence_logs", "shared_temp_directory", "scheduler_cls", "security")

#: The Dask resource each pool's workers advertise (one step at a time per worker).
POOL_RESOURCE = {"cpu": "CPU", "gpu": "GPU"}

#: Dask's memory management is for data a worker holds; a step's memory is the step's own. A worker
#: paused at 80% of its limit would hold its step's successors forever, so the workers never pause
#: or spill (the nanny still restarts one past 95%, and Slurm enforces --mem).
WORKER_ENV = (
    "export DASK_DISTRIBUTED__WORKER__MEMORY__TARGET=False",
    "export DASK_DISTRIBUTED__WORKER__MEMORY__SPILL=False",
    "export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=False",
)

#: squeue states of a job that still holds (or waits for) its allocation.
ALIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SIGNALING"}


class SlurmClusterError(RuntimeError):
    """The Slurm cluster cannot run the run's steps (jobs refused, never started, or dying at start)."""


# --------------------------------------------------------------------------- configuration
@dataclass
class PoolSpec:
    """One pool of worker jobs.

    Attributes
    ----------
    name
        ``cpu`` or ``gpu``.
    n_workers
        Worker jobs at a time.
    job_options
        SLURMCluster job keywords that differ from the block's for this pool.
    """

    name: str
    n_workers: int
    job_options: dict[str, Any] = field(default_factory=dict)

    @property
    def resource(self) -> str:
        """The Dask resource this pool's workers advertise."""
        return POOL_RESOURCE[self.name]


@dataclass
class SlurmSettings:
    """A parsed ``slurm:`` block.

    Attributes
    ----------
    cluster_kwargs
        Keywords of ``SLURMCluster`` (scheduler options and the job template of the cpu pool).
    pools
        The pools, by name.
    start_timeout
        Seconds a pool with work to do may have no connected worker before the run fails.
    max_start_failures
        Jobs in a row of one pool that may end before their worker connects.
    poll_interval
        Seconds between checks of the jobs.
    """

    cluster_kwargs: dict[str, Any]
    pools: dict[str, PoolSpec]
    start_timeout: float = 600.0
    max_start_failures: int = 3
    poll_interval: float = 2.0


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"slurm cluster: {what} must be a whole number >= 1, got {value!r}")
    return value


def _positive_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"slurm cluster: {what} must be a number > 0, got {value!r}")
    return float(value)


def _check_job_options(options: Mapping[str, Any], where: str) -> None:
    if options.get("processes", 1) != 1:
        raise ConfigError(f"slurm cluster: {where}processes must be 1 (one worker, one step at a time, per job)")
    for arg in options.get("worker_extra_args") or []:
        if str(arg).startswith("--resources"):
            raise ConfigError(
                f"slurm cluster: {where}worker_extra_args must not set --resources: the executor gives the cpu "
                "pool's workers CPU=1 and the gpu pool's GPU=1"
            )


def parse_slurm_block(block: Mapping[str, Any]) -> SlurmSettings:
    """Check a ``slurm:`` block and split it into the cluster's keywords and the pools.

    Parameters
    ----------
    block
        The mapping under ``slurm:`` in ``FATEBIAS_DASK_CLUSTER``.

    Returns
    -------
    SlurmSettings
        The settings; the ``gpu`` pool only when the block has a ``gpu:`` mapping.
    """
    if not isinstance(block, Mapping):
        raise ConfigError(f"slurm cluster: expected a mapping of SLURMCluster settings, got {block!r}")
    block = dict(block)
    cluster_kwargs = {k: v for k, v in block.items() if k not in OWN_KEYS}
    _check_job_options(cluster_kwargs, "")
    cluster_kwargs["processes"] = 1
    pools = {"cpu": PoolSpec("cpu", _positive_int(block.get("n_workers", 1), "n_workers"))}
    gpu = block.get("gpu")
    if gpu is not None:
        if not isinstance(gpu, Mapping):
            raise ConfigError(f"slurm cluster: gpu must be a mapping of job settings for the gpu pool, got {gpu!r}")
        bad = sorted(set(gpu) & (set(OWN_KEYS) - {"n_workers"}))
        if bad:
            raise ConfigError(f"slurm cluster: {', '.join(bad)} belong to the block, not to gpu:")
        options = {k: v for k, v in gpu.items() if k != "n_workers"}
        _check_job_options(options, "gpu.")
        pools["gpu"] = PoolSpec("gpu", _positive_int(gpu.get("n_workers", 1), "gpu.n_workers"), options)
    return SlurmSettings(
        cluster_kwargs=cluster_kwargs,
        pools=pools,
        start_timeout=_positive_float(block.get("start_timeout", 600), "start_timeout"),
        max_start_failures=_positive_int(block.get("max_start_failures", 3), "max_start_failures"),
        poll_interval=_positive_float(block.get("poll_interval", 2), "poll_interval"),
    )


def pool_of_requirements(requirements: Mapping[str, Any]) -> str:
    """The pool a step runs in, from its Dask resource requirements (``{}``: cpu, ``{"GPU": 1}``: gpu)."""
    unknown = sorted(set(requirements) - {"GPU"})
    if unknown:
        raise ConfigError(f"slurm cluster: steps may only ask for the Dask resource GPU, not {', '.join(unknown)}")
    return "gpu" if requirements.get("GPU") else "cpu"


def _pool_job_kwargs(base: Mapping[str, Any], pool: PoolSpec) -> dict[str, Any]:
    """The SLURMJob keywords of ``pool``'s jobs: the base, the pool's own, its job name and resource."""
    options = {**base, **pool.job_options}
    options["worker_extra_args"] = [*(options.get("worker_extra_args") or []), "--resources", f"{pool.resource}=1"]
    options["job_script_prologue"] = [*(options.get("job_script_prologue") or []), *WORKER_ENV]
    options.setdefault("job_name", f"fatebias-{pool.name}")
    return options


def pool_job_scripts(block: Mapping[str, Any], address: str = "tcp://<scheduler>:8786") -> dict[str, str]:
    """The job script dask-jobqueue submits for each pool of ``block`` (nothing is submitted).

    Parameters
    ----------
    block
        The ``slurm:`` block.
    address
        The scheduler address written into the scripts.
    """
    from dask_jobqueue.slurm import SLURMJob

    settings = parse_slurm_block(block)
    base = {k: v for k, v in settings.cluster_kwargs.items() if k not in CLUSTER_ONLY_KEYS}
    return {
        name: SLURMJob(address, name=f"fatebias-{name}-0", **_pool_job_kwargs(base, pool)).job_script()
        for name, pool in settings.pools.items()
    }


# --------------------------------------------------------------------------- Slurm queries
def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)


def job_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]] | None:
    """``job id -> (state, reason)`` from ``squeue``; jobs Slurm no longer knows are left out.

    None when ``squeue`` itself failed (slurmctld busy or restarting): nothing is known.
    """
    if not job_ids:
        return {}
    proc = _run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"])
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        return None
    out: dict[str, tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out


def job_log_tail(job_id: str, lines: int = 8) -> str:
    """The last ``lines`` lines of a job's stderr file (as ``scontrol show job`` names it), or ''."""
    proc = _run(["scontrol", "show", "job", "-o", job_id])
    record = dict(tok.split("=", 1) for tok in proc.stdout.split() if "=" in tok)
    if "StdErr" not in record:
        return ""
    # scontrol shows the path as given to sbatch: its job id and name patterns unexpanded.
    path = Path(re.sub(r"%[jJ]", job_id, record["StdErr"]).replace("%x", record.get("JobName", "")))
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _slurm_message(exc: BaseException) -> str:
    """Slurm's own words from a failed ``sbatch`` (dask-jobqueue's RuntimeError), else the error."""
    text = str(exc)
    said = [line.strip() for line in text.splitlines() if line.strip().startswith(("sbatch:", "error:"))]
    return "; ".join(said) if said else text.strip()


# --------------------------------------------------------------------------- the pools
@dataclass
class _PoolState:
    spec: PoolSpec
    job_kwargs: dict[str, Any]
    names: list[str] = field(default_factory=list)
    connected_once: set[str] = field(default_factory=set)
    started: bool = False
    counter: int = 0
    start_failures: int = 0
    waiting_since: float | None = None


class SlurmPools:
    """A Dask scheduler in this process and pools of Slurm worker jobs, supervised.

    Parameters
    ----------
    settings
        The parsed ``slurm:`` block.
    """

    def __init__(self, settings: SlurmSettings):
        from dask.distributed import Client
        from dask_jobqueue import SLURMCluster

        self.settings = settings
        kwargs = dict(settings.cluster_kwargs)
        try:
            self.cluster = SLURMCluster(n_workers=0, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"slurm cluster: {exc}") from exc
        self.client = Client(self.cluster)
        base = dict(self.cluster._job_kwargs)
        self.pools = {name: _PoolState(spec, _pool_job_kwargs(base, spec)) for name, spec in settings.pools.items()}

    # ------------------------------------------------------------------ jobs
    @property
    def address(self) -> str:
        """The scheduler's address."""
        return self.cluster.scheduler_address

    def job_id(self, worker_name: str) -> str | None:
        """The Slurm job id of a worker (None before its job was submitted)."""
        job = self.cluster.workers.get(worker_name)
        return getattr(job, "job_id", None)

    def job_script(self, pool: str) -> str:
        """The job script of ``pool``'s workers, with this scheduler's address."""
        from dask_jobqueue.slurm import SLURMJob

        return SLURMJob(self.address, name=f"fatebias-{pool}-N", **self.pools[pool].job_kwargs).job_script()

    def _add_worker(self, state: _PoolState) -> str:
        name = f"fatebias-{state.spec.name}-{state.counter}"
        state.counter += 1
        state.names.append(name)
        self.cluster.worker_spec[name] = {"cls": self.cluster.job_cls, "options": dict(state.job_kwargs)}
        return name

    def _drop_worker(self, state: _PoolState, name: str) -> None:
        state.names.remove(name)
        self.cluster.worker_spec.pop(name, None)

    def _apply(self, pool: str) -> None:
        """Submit and cancel jobs until the cluster matches the worker specs."""
        try:
            self.cluster.sync(self.cluster._correct_state)
        except RuntimeError as exc:
            raise SlurmClusterError(
                f"Slurm refused the {pool} pool's worker job: {_slurm_message(exc)}"
            ) from None

    def start(self, pool: str) -> list[str]:
        """Submit ``pool``'s worker jobs (once); return what was done, for the run's log."""
        state = self.pools[pool]
        if state.started:
            return []
        state.started = True
        state.waiting_since = time.monotonic()
        names = [self._add_worker(state) for _ in range(state.spec.n_workers)]
        self._apply(pool)
        jobs = ", ".join(f"{n} = Slurm job {self.job_id(n)}" for n in names)
        return [f"{pool} pool: submitted {len(names)} worker job(s): {jobs}"]

    def retire(self, pool: str) -> list[str]:
        """Cancel ``pool``'s jobs (its steps are done)."""
        state = self.pools[pool]
        if not state.started or not state.names:
            return []
        jobs = [self.job_id(n) for n in state.names]
        for name in list(state.names):
            self._drop_worker(state, name)
        self._apply(pool)
        state.waiting_since = None
        state.started = False  # a step retried later starts the pool again
        return [f"{pool} pool: its steps are done; cancelled Slurm job(s) {', '.join(str(j) for j in jobs)}"]

    # ------------------------------------------------------------------ supervision
    def connected(self) -> dict[str, str]:
        """Connected workers: name -> address."""
        info = self.client.scheduler_info(n_workers=-1)
        return {str(w.get("name")): addr for addr, w in info.get("workers", {}).items()}

    def check(self, busy: set[str]) -> list[str]:
        """Replace workers whose job ended; fail when a busy pool cannot get a worker.

        Parameters
        ----------
        busy
            Pools with steps submitted and not finished.

        Returns
        -------
        list of str
            What was done (replacement jobs), for the run's log.

        Raises
        ------
        SlurmClusterError
            Slurm refused a job; ``max_start_failures`` jobs in a row ended before their worker
            connected; or a busy pool had no worker for ``start_timeout`` seconds.
        """
        notes: list[str] = []
        connected = self.connected()
        pending = [n for s in self.pools.values() for n in s.names if n not in connected and self.job_id(n)]
        states = job_states([str(self.job_id(n)) for n in pending])
        now = time.monotonic()
        for pool, state in self.pools.items():
            if not state.started:
                continue
            if states is None:  # squeue failed: judge no job this time, only the time without workers
                self._check_waiting(pool, state, busy, connected, now)
                continue
            replace: list[tuple[str, str]] = []
            for name in list(state.names):
                if name in connected:
                    state.connected_once.add(name)
                    state.start_failures = 0
                    continue
                job_id = self.job_id(name)
                known = name in self.cluster.workers
                slurm_state, _reason = states.get(str(job_id), ("GONE", "")) if job_id else ("GONE", "")
                if known and slurm_state in ALIVE_STATES:
                    continue  # queued, or started and not connected yet
                if known and job_id is None:
                    continue  # being submitted
                if name in state.connected_once:
                    replace.append((name, f"the worker {name} (Slurm job {job_id}) was lost ({slurm_state})"))
                    continue
                state.start_failures += 1
                tail = job_log_tail(str(job_id)) if job_id else ""
                why = f"Slurm job {job_id} of the {pool} pool ended ({slurm_state}) before its worker connected"
                if tail:
                    why += f"; the end of its log:\n{tail}"
                if state.start_failures >= self.settings.max_start_failures:
                    raise SlurmClusterError(f"{why}\n({state.start_failures} such jobs in a row: giving up)")
                replace.append((name, why))
            for name, why in replace:
                self._drop_worker(state, name)
                new = self._add_worker(state)
                self._apply(pool)
                notes.append(f"{why}; started Slurm job {self.job_id(new)} ({new}) in its place")
            self._check_waiting(pool, state, busy, connected, now)
        return notes

    def _check_waiting(self, pool: str, state: _PoolState, busy: set[str], connected: Mapping[str, str], now: float) -> None:
        """Fail when ``pool`` has had work and no connected worker for ``start_timeout`` seconds."""
        if pool not in busy or any(n in connected for n in state.names):
            state.waiting_since = None
            return
        if state.waiting_since is None:
            state.waiting_since = now
        elif now - state.waiting_since > self.settings.start_timeout:
            raise SlurmClusterError(self._no_worker_message(pool, now - state.waiting_since))

    def _no_worker_message(self, pool: str, waited: float) -> str:
        state = self.pools[pool]
        ids = [str(self.job_id(n)) for n in state.names if self.job_id(n)]
        states = job_states(ids)
        gone = "gone" if states is not None else "state unknown (squeue failed)"
        jobs = "; ".join(
            f"Slurm job {i}: {states[i][0]} (reason: {states[i][1]})" if states and i in states else f"Slurm job {i}: {gone}"
            for i in ids
        )
        return (
            f"the {pool} pool has had no Dask worker for {waited:.0f} s (start_timeout "
            f"{self.settings.start_timeout:g} s): {jobs or 'no job'}"
        )

    def close(self) -> None:
        """Cancel every job and stop the scheduler."""
        try:
            self.client.close()
        finally:
            self.cluster.close()


# --------------------------------------------------------------------------- the executor
def run_step_on_worker(
    recon_job: ReconstructableJob,
    dagster_run: DagsterRun,
    run_config: Mapping[str, object],
    step_key: str,
    instance_ref: InstanceRef,
    known_state: KnownExecutionState,
    retry_mode: RetryMode,
) -> tuple[dict[str, str], list[DagsterEvent]]:
    """Run one step on a Dask worker; return where it ran and its events."""
    where = {
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
    }
    with DagsterInstance.from_ref(instance_ref) as instance:
        subset_job = recon_job.get_subset(op_selection=dagster_run.resolved_op_selection)
        plan = create_execution_plan(
            subset_job, run_config=run_config, step_keys_to_execute=[step_key], known_state=known_state
        )
        events = execute_plan(plan, subset_job, instance, dagster_run, run_config=run_config, retry_mode=retry_mode)
    return where, list(events)


class SlurmDaskExecutor(Executor):
    """Each step a Dask task on a worker of its pool; the pools are Slurm jobs (see the module)."""

    def __init__(self, settings: SlurmSettings, retries: RetryMode = RetryMode.ENABLED):
        self.settings = settings
        self._retries = retries

    @property
    def retries(self) -> RetryMode:
        return self._retries

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        from distributed.client import FIRST_COMPLETED, wait

        if not plan_context.instance.is_persistent:
            raise dg.DagsterInvariantViolationError(
                "the Dask executor on Slurm needs a persistent Dagster instance (DAGSTER_HOME) that the workers see"
            )
        pool_of = {
            step.key: pool_of_requirements(_requirements(step.tags)) for step in execution_plan.get_steps_to_execute_in_topo_order()
        }
        missing = sorted({p for p in pool_of.values() if p not in self.settings.pools})
        if missing:
            steps = ", ".join(k for k, p in pool_of.items() if p in missing)
            raise SlurmClusterError(
                f"the steps {steps} ask for a worker with the Dask resource GPU (FATEBIAS_GPU_REQUEST=1), "
                "but the slurm cluster has no gpu: pool; add one (e.g. gpu: {job_extra_directives: "
                "['--gres=gpu:1']}) or unset FATEBIAS_GPU_REQUEST"
            )
        pools = SlurmPools(self.settings)
        used = [n for n in self.settings.pools if n in set(pool_of.values())]
        unused = [n for n in self.settings.pools if n not in used]
        note = f" (not needed by this run: {', '.join(unused)}; no step asks for its resource)" if unused else ""
        yield DagsterEvent.engine_event(
            plan_context,
            f"Dask scheduler at {pools.address}; worker pools on Slurm: "
            + ", ".join(f"{n} ({self.settings.pools[n].n_workers} job(s))" for n in used)
            + note,
            EngineEventData(
                metadata={f"{n} job script": dg.MetadataValue.md(f"```\n{pools.job_script(n)}\n```") for n in used}
            ),
        )
        recon_job = plan_context.reconstructable_job
        instance_ref = plan_context.instance.get_ref()
        running: dict[Any, str] = {}
        done: set[str] = set()
        try:
            with ActiveExecution(execution_plan, retry_mode=self.retries) as active:
                while not active.is_complete or running:
                    with raise_execution_interrupts():
                        if active.check_for_interrupts():
                            active.mark_interrupted()
                            for fut in running:
                                fut.cancel()
                            yield DagsterEvent.engine_event(
                                plan_context, "Slurm executor: interrupted; cancelled the running steps", EngineEventData()
                            )
                            return
                        for step in active.get_steps_to_execute():
                            pool = pool_of[step.key]
                            for note in pools.start(pool):
                                yield DagsterEvent.engine_event(plan_context, note, EngineEventData())
                            fut = pools.client.submit(
                                run_step_on_worker,
                                recon_job,
                                plan_context.dagster_run,
                                plan_context.run_config,
                                step.key,
                                instance_ref,
                                active.get_known_state(),
                                self.retries.for_inner_plan(),
                                key=f"{plan_context.job_name}.{step.key}.{time.time_ns()}",
                                resources={POOL_RESOURCE[pool]: 1},
                                pure=False,
                            )
                            running[fut] = step.key
                        yield from active.concurrency_event_iterator(plan_context)
                        finished: set[Any] = set()
                        if running:
                            try:
                                finished = wait(
                                    list(running), timeout=self.settings.poll_interval, return_when=FIRST_COMPLETED
                                ).done
                            except TimeoutError:
                                pass
                        else:
                            time.sleep(min(0.5, self.settings.poll_interval))
                        for fut in finished:
                            key = running.pop(fut)
                            yield from self._step_events(plan_context, active, fut, key, pool_of[key])
                            fut.release()
                            active.verify_complete(plan_context, key)
                            done.add(key)
                        for event in active.plan_events_iterator(plan_context):
                            if event.step_key:
                                done.add(event.step_key)
                            yield event
                        busy = {pool_of[k] for k in running.values()}
                        for note in pools.check(busy):
                            yield DagsterEvent.engine_event(plan_context, note, EngineEventData())
                        for pool in self.settings.pools:
                            if pool not in busy and all(k in done for k, p in pool_of.items() if p == pool):
                                for note in pools.retire(pool):
                                    yield DagsterEvent.engine_event(plan_context, note, EngineEventData())
        finally:
            pools.close()

    def _step_events(
        self, plan_context: PlanOrchestrationContext, active: ActiveExecution, fut: Any, key: str, pool: str
    ) -> Iterator[DagsterEvent]:
        step_context = plan_context.for_step(active.get_step_by_key(key))
        try:
            where, events = fut.result()
        except Exception:
            error = serializable_error_info_from_exc_info(sys.exc_info())
            yield DagsterEvent.engine_event(
                step_context, f"Dask task of step {key} failed", EngineEventData.engine_error(error)
            )
            event = self.log_failure_or_retry_event_after_error(step_context, error, active.get_known_state())
            active.handle_event(event)
            yield event
            return
        for event in events:
            active.handle_event(event)
            yield event
        yield DagsterEvent.engine_event(
            step_context,
            f"step {key} ran in Slurm job {where['slurm_job_id'] or '?'} ({pool} pool) on {where['host']}, pid {where['pid']}",
            EngineEventData(metadata={k: dg.MetadataValue.text(v) for k, v in {**where, "pool": pool}.items()}),
        )


def _requirements(tags: Mapping[str, Any]) -> dict[str, Any]:
    raw = tags.get(RESOURCE_TAG)
    return json.loads(raw) if raw else {}


@dg.executor(
    name="dask",
    config_schema={"cluster": dg.Field(dg.Permissive(), description="{slurm: {...}}: the Slurm cluster block")},
    requirements=multiple_process_executor_requirements(),
)
def slurm_dask_executor(init_context: dg.InitExecutorContext) -> SlurmDaskExecutor:
    """The Dask executor whose workers are Slurm jobs in a cpu and an optional gpu pool."""
    cluster = init_context.executor_config["cluster"]
    if set(cluster) != {"slurm"}:
        raise ConfigError(f"slurm executor: expected cluster: {{slurm: ...}}, got {sorted(cluster)}")
    return SlurmDaskExecutor(parse_slurm_block(cluster["slurm"]))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fatebias_dagster.slurm CLUSTER.yaml``: print each pool's job script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m fatebias_dagster.slurm CLUSTER.yaml", file=sys.stderr)
        return 2
    raw = yaml.safe_load(Path(args[0]).read_text())
    raw = raw.get("cluster", raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict) or "slurm" not in raw:
        print(f"{args[0]}: no slurm: block", file=sys.stderr)
        return 2
    for pool, script in pool_job_scripts(raw["slurm"]).items():
        print(f"# ---- the {pool} pool's job script ----\n{script}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
