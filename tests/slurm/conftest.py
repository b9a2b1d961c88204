"""A real one-node Slurm cluster for the tests: started by ``scripts/slurm/start_slurm.sh`` and
stopped by ``scripts/slurm/stop_slurm.sh`` (every test here is marked ``slurm``).

The cluster is the machine's own (``/etc/slurm``, munged): one test session at a time holds it
(``/tmp/fatebias-slurm.lock``). A cluster that was already up when the session started is left
running afterwards; one the session started is stopped, whatever the tests did.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.dagster.conftest import subprocess_env, write_debug_instance_yaml

ROOT = Path(__file__).parents[2]
SCRIPTS = ROOT / "scripts" / "slurm"
LOCK = Path("/tmp/fatebias-slurm.lock")
SBIN = ("/usr/sbin", "/sbin")

#: "step X ran in Slurm job N (pool pool)": the log line of a step whose job finished.
RAN_IN = re.compile(r"step (\S+) ran in Slurm job (\d+) \((\w+) pool\)")


def slurm_skip_reason() -> str | None:
    """Why the Slurm tests cannot run here, or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    missing = [c for c in ("slurmctld", "slurmd", "sbatch", "squeue", "munged") if shutil.which(c, path=path) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): apt-get install --no-install-recommends "
                "slurmctld slurmd slurm-client munge (.ci/run does)")
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root"
    return None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), *SBIN])
    return env


def slurm(*args: str) -> str:
    """Run a Slurm command; return its stdout."""
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=60, env=_env()).stdout


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as key -> value (the job's record stays for MinJobAge = 600 s)."""
    out = slurm("scontrol", "show", "job", "-o", job_id)
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)


def batch_script(job_id: str) -> str:
    """The script Slurm ran for a job (``scontrol write batch_script``)."""
    return slurm("scontrol", "write", "batch_script", job_id, "-")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """A running one-node Slurm cluster (partitions ``debug`` and ``down``; ``gres gpu:1``)."""
    reason = slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    with open(LOCK, "a+") as lock:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip("another test session held the machine's Slurm cluster for 15 minutes")
                time.sleep(2)
        up = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=_env()).stdout
        started_here = "UP" not in up
        try:
            proc = subprocess.run(["bash", str(SCRIPTS / "start_slurm.sh")], capture_output=True, text=True,
                                  timeout=300, env=_env())
            assert proc.returncode == 0, proc.stdout + proc.stderr
            yield
        finally:
            if started_here:
                subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh")], capture_output=True, timeout=120, env=_env())
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class Deployment:
    """A deployment's files: DAGSTER_HOME, the slurm: block's YAML, the jobs' logs."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def logs(self) -> Path:
        return self.root / "worker_logs"

    @property
    def cluster_yaml(self) -> Path:
        return self.root / "slurm.yaml"

    def write_cluster(self, **settings: object) -> Path:
        """The slurm: block: 1 core and 2 GB per job, logs in the deployment's folder, plus ``settings``."""
        block = {
            "queue": "debug", "cores": 1, "memory": "2GB", "walltime": "00:20:00",
            "log_directory": str(self.logs), "poll_interval": 0.5, **settings,
        }
        self.cluster_yaml.write_text(yaml.safe_dump({"slurm": block}))
        return self.cluster_yaml

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a run on this deployment's instance (steps as Slurm jobs)."""
        return {**subprocess_env(DAGSTER_HOME=str(self.home), FATEBIAS_EXECUTOR="slurm",
                                 FATEBIAS_SLURM=str(self.cluster_yaml), **extra),
                "PATH": _env()["PATH"]}


def make_deployment(root: Path) -> Deployment:
    """A deployment folder with an instance holding the repository's dagster.yaml (every event logged)."""
    dep = Deployment(root)
    dep.home.mkdir(parents=True)
    dep.logs.mkdir()
    write_debug_instance_yaml(dep.home)  # the tests read RUN_SUCCESS and the executor's engine events
    return dep


def materialize(env: dict[str, str], cwd: Path, select: str = "*", module: str = "fatebias_dagster",
                timeout: float = 420) -> tuple[subprocess.CompletedProcess[str], float]:
    """``dagster asset materialize -m MODULE --select SELECT``; return the process and its wall time."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", module, "--select", select],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    return proc, time.monotonic() - t0
