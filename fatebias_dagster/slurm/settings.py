"""The ``slurm:`` block: a cpu and an optional gpu pool of Slurm jobs, and each pool's job script.

A block (YAML, in the file ``FATEBIAS_SLURM`` names)::

    slurm:
      queue: cpu                  # partition
      account: mylab
      cores: 4                    # --cpus-per-task (and the step's thread count)
      memory: 16GB                # --mem
      walltime: "02:00:00"        # -t
      log_directory: /shared/fatebias/slurm-logs   # -o/-e (default: <run folder>/slurm_logs)
      job_extra_directives: ["--qos=normal"]
      job_script_prologue: ["source /shared/fatebias/.venv/bin/activate"]
      start_timeout: 3600         # s a job may wait in the queue (default 600)
      max_start_failures: 3       # jobs in a row that end before their step starts (default 3)
      max_resubmits: 2            # jobs of one step lost after it started (default 2)
      poll_interval: 2            # s between looks at the queue (default 2)
      steps: [load, fit, export, diagnostics, simulate]   # steps sent as jobs (default: all)
      gpu:                        # the gpu pool: what differs from the above
        queue: gpu
        job_extra_directives: ["--gres=gpu:1"]

Keys that only the Dask route (dask-jobqueue) read (``interface``, ``n_workers``,
``scheduler_options``, ...) are accepted and ignored: :attr:`SlurmSettings.ignored` names them.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fatebias_core.errors import ConfigError
from fatebias_core.pipeline.graph import STEPS

#: Keys that shape a job; the block's apply to both pools, ``gpu:``'s override them there.
JOB_KEYS = (
    "queue", "account", "cores", "memory", "walltime", "job_name", "log_directory",
    "job_extra_directives", "job_script_prologue", "python",
)
#: Keys of the block itself.
OWN_KEYS = ("gpu", "start_timeout", "max_start_failures", "max_resubmits", "poll_interval", "steps")
#: What a deployment computes: the chain's steps, and the simulation study's simulating and scoring.
STEP_NAMES = (*STEPS, "simulate", "evaluate")
#: dask-jobqueue's SLURMCluster keywords of the earlier Dask route: accepted, ignored.
DASK_KEYS = (
    "n_workers", "processes", "interface", "scheduler_options", "local_directory", "worker_extra_args",
    "death_timeout", "name", "silence_logs", "shared_temp_directory", "scheduler_cls", "security", "protocol",
    "nanny", "worker_command", "job_cpu", "job_mem", "job_directives_skip",
)
#: The pools.
POOLS = ("cpu", "gpu")

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


class SlurmClusterError(RuntimeError):
    """Slurm cannot run a step: the job was refused, never started, or kept dying."""


@dataclass(frozen=True)
class JobSpec:
    """The Slurm job of one pool.

    Attributes
    ----------
    pool
        ``cpu`` or ``gpu``.
    queue, account
        Partition and account (``-p``, ``-A``); None: Slurm's default.
    cores
        ``--cpus-per-task``; also the step's thread count (``OMP_NUM_THREADS`` and friends).
    memory_mib
        ``--mem`` in MiB; None: the partition's default.
    walltime
        ``-t``; None: the partition's default.
    job_name
        ``-J`` (default ``fatebias-<pool>``).
    log_directory
        Where ``-o``/``-e`` go (``<job name>-<job id>.out/.err``); None: the run folder's ``slurm_logs``.
    extra_directives
        More ``#SBATCH`` lines (e.g. ``--gres=gpu:1``).
    prologue
        Shell lines run before the step (activate an environment, load modules).
    python
        The interpreter that runs the step (default: this one).
    """

    pool: str
    queue: str | None = None
    account: str | None = None
    cores: int = 1
    memory_mib: int | None = None
    walltime: str | None = None
    job_name: str = ""
    log_directory: str | None = None
    extra_directives: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    python: str = sys.executable

    def directives(self, log_directory: Path) -> list[str]:
        """The ``#SBATCH`` lines of this pool's jobs."""
        logs = Path(self.log_directory) if self.log_directory else log_directory
        lines = [f"-J {self.job_name}"]
        if self.queue:
            lines.append(f"-p {self.queue}")
        if self.account:
            lines.append(f"-A {self.account}")
        lines += ["-n 1", f"--cpus-per-task={self.cores}"]
        if self.memory_mib:
            lines.append(f"--mem={self.memory_mib}M")
        if self.walltime:
            lines.append(f"-t {self.walltime}")
        lines += [f"-o {logs / '%x-%j.out'}", f"-e {logs / '%x-%j.err'}", *self.extra_directives]
        return [f"#SBATCH {line}" for line in lines]

    def script(self, env: Mapping[str, str], log_directory: Path, module: str = "fatebias_dagster.slurm.remote") -> str:
        """The job script: directives, prologue, the step's thread count and environment, the step.

        Parameters
        ----------
        env
            Variables the step needs (Dagster Pipes' bootstrap variables).
        log_directory
            The log folder when the block names none.
        module
            The module the job runs with ``python -m``.
        """
        threads = [f"export {v}={self.cores}" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")]
        exports = [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]
        body = ["#!/usr/bin/env bash", *self.directives(log_directory), *self.prologue, *threads, *exports,
                f"exec {shlex.quote(self.python)} -m {module}"]
        return "\n".join(body) + "\n"


@dataclass(frozen=True)
class SlurmSettings:
    """A parsed ``slurm:`` block.

    Attributes
    ----------
    pools
        The job of each pool (``gpu`` only when the block has a ``gpu:`` mapping).
    start_timeout
        Seconds a job may wait in the queue before the step fails with Slurm's reason.
    max_start_failures
        Jobs in a row of one step that may end before the step starts.
    max_resubmits
        Jobs of one step that may be lost (cancelled, node failure, preemption) after it started.
    poll_interval
        Seconds between looks at the queue.
    ignored
        Keys of the Dask route found in the block (ignored).
    steps
        The steps sent to Slurm as jobs (None: every step); the others compute in their
        asset's process on the submit host.
    """

    pools: dict[str, JobSpec]
    start_timeout: float = 600.0
    max_start_failures: int = 3
    max_resubmits: int = 2
    poll_interval: float = 2.0
    ignored: tuple[str, ...] = field(default=())
    steps: tuple[str, ...] | None = None

    def sends(self, step: str) -> bool:
        """Whether ``step`` runs as a Slurm job."""
        return self.steps is None or step in self.steps


def _positive_int(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"slurm cluster: {what} must be a whole number >= {minimum}, got {value!r}")
    return value


def _positive_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"slurm cluster: {what} must be a number > 0, got {value!r}")
    return float(value)


def memory_mib(value: Any, what: str = "memory") -> int:
    """``16GB``, ``2G``, ``1.5GiB``, ``500MB`` or a number of MiB, as whole MiB (rounded up).

    ``K/M/G/T`` and ``KiB...`` are powers of 1024 (Slurm's own units); ``KB/MB/GB/TB`` powers of 1000.
    """
    if isinstance(value, bool):
        raise ConfigError(f"slurm cluster: {what} must be a size such as 16GB, got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ConfigError(f"slurm cluster: {what} must be > 0, got {value!r}")
        return math.ceil(value)
    m = _MEMORY.match(str(value))
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"slurm cluster: {what} must be a size such as 16GB, 2G or 500MB, got {value!r}")
    number, unit, binary, byte = float(m.group(1)), m.group(2).upper(), m.group(3), m.group(4)
    power = "BKMGT".index(unit or "B") if unit else (2 if not byte else 0)  # a bare number is MiB, as in Slurm
    base = 1000 if (byte and not binary and unit) else 1024
    return max(1, math.ceil(number * base**power / 2**20))


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"slurm cluster: {what} must be a list of strings, got {value!r}")
    return tuple(value)


def _job_spec(pool: str, options: Mapping[str, Any], where: str) -> JobSpec:
    walltime = options.get("walltime")
    if walltime is not None:
        walltime = str(walltime)
        if not _WALLTIME.match(walltime):
            raise ConfigError(f"slurm cluster: {where}walltime must be like 02:00:00 or 1-00:00:00, got {walltime!r}")
    extra = tuple(d.removeprefix("#SBATCH").strip() for d in _strings(options.get("job_extra_directives"), f"{where}job_extra_directives"))
    return JobSpec(
        pool=pool,
        queue=options.get("queue"),
        account=options.get("account"),
        cores=_positive_int(options.get("cores", 1), f"{where}cores"),
        memory_mib=memory_mib(options["memory"], f"{where}memory") if options.get("memory") is not None else None,
        walltime=walltime,
        job_name=str(options.get("job_name") or f"fatebias-{pool}"),
        log_directory=str(options["log_directory"]) if options.get("log_directory") else None,
        extra_directives=extra,
        prologue=_strings(options.get("job_script_prologue"), f"{where}job_script_prologue"),
        python=str(options.get("python") or sys.executable),
    )


def _unknown(keys: Sequence[str], allowed: Sequence[str], where: str) -> None:
    bad = sorted(set(keys) - set(allowed))
    if bad:
        raise ConfigError(
            f"slurm cluster: unknown key(s) {', '.join(bad)}{' in ' + where if where else ''}; "
            f"known: {', '.join(sorted(allowed))}"
        )


def parse_slurm_block(block: Mapping[str, Any]) -> SlurmSettings:
    """Check a ``slurm:`` block and make each pool's job.

    Parameters
    ----------
    block
        The mapping under ``slurm:``.

    Returns
    -------
    SlurmSettings
        The settings; the ``gpu`` pool only when the block has a ``gpu:`` mapping.

    Raises
    ------
    ConfigError
        A key that is not known, or a value of the wrong kind, named.
    """
    if not isinstance(block, Mapping):
        raise ConfigError(f"slurm cluster: expected a mapping of job settings, got {block!r}")
    _unknown(list(block), (*JOB_KEYS, *OWN_KEYS, *DASK_KEYS), "")
    ignored = tuple(k for k in block if k in DASK_KEYS)
    base = {k: v for k, v in block.items() if k in JOB_KEYS}
    pools = {"cpu": _job_spec("cpu", base, "")}
    gpu = block.get("gpu")
    if gpu is not None:
        if not isinstance(gpu, Mapping):
            raise ConfigError(f"slurm cluster: gpu must be a mapping of job settings for the gpu pool, got {gpu!r}")
        misplaced = sorted(set(gpu) & set(OWN_KEYS))
        if misplaced:
            raise ConfigError(f"slurm cluster: {', '.join(misplaced)} belong to the block, not to gpu:")
        _unknown(list(gpu), (*JOB_KEYS, *DASK_KEYS), "gpu:")
        ignored += tuple(f"gpu.{k}" for k in gpu if k in DASK_KEYS)
        pools["gpu"] = _job_spec("gpu", {**base, "job_name": None, **{k: v for k, v in gpu.items() if k in JOB_KEYS}}, "gpu.")
    return SlurmSettings(
        pools=pools,
        start_timeout=_positive_float(block.get("start_timeout", 600), "start_timeout"),
        max_start_failures=_positive_int(block.get("max_start_failures", 3), "max_start_failures"),
        max_resubmits=_positive_int(block.get("max_resubmits", 2), "max_resubmits", minimum=0),
        poll_interval=_positive_float(block.get("poll_interval", 2), "poll_interval"),
        ignored=ignored,
        steps=_steps(block.get("steps", "all")),
    )


def _steps(value: Any) -> tuple[str, ...] | None:
    if value == "all":
        return None
    names = _strings(value, "steps")
    unknown = sorted(set(names) - set(STEP_NAMES))
    if unknown:
        raise ConfigError(f"slurm cluster: steps names {', '.join(unknown)}; known: all, {', '.join(STEP_NAMES)}")
    return names


def pool_job_scripts(block: Mapping[str, Any], log_directory: Path = Path("<run folder>/slurm_logs")) -> dict[str, str]:
    """Each pool's job script for ``block``, with placeholders for the step's Pipes variables."""
    settings = parse_slurm_block(block)
    env = {"DAGSTER_PIPES_CONTEXT": "<set per step>", "DAGSTER_PIPES_MESSAGES": "<set per step>"}
    return {name: spec.script(env, log_directory) for name, spec in settings.pools.items()}
