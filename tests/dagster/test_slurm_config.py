"""The slurm: block, its pools and job scripts, step routing, and the Pipes client against a stand-in
Slurm (``tests/slurm/`` runs the chain on a real one)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fatebias_core.errors import ConfigError
from fatebias_dagster.executors import executor_from_env
from fatebias_dagster.resources import ClusterResource
from fatebias_dagster.slurm import (
    SlurmClusterError,
    SlurmStepError,
    parse_slurm_block,
    pool_job_scripts,
)
from fatebias_dagster.slurm.__main__ import main as print_scripts
from fatebias_dagster.slurm.settings import memory_mib

from .conftest import PipesCall

BLOCK = {"queue": "cpu", "cores": 2, "memory": "4GB", "walltime": "01:00:00"}
GPU = {"queue": "gpu", "cores": 4, "job_extra_directives": ["--gres=gpu:1"]}


def test_block_makes_a_job_per_pool() -> None:
    s = parse_slurm_block(BLOCK)
    assert list(s.pools) == ["cpu"]
    assert (s.start_timeout, s.max_start_failures, s.max_resubmits, s.poll_interval) == (600.0, 3, 2, 2.0)
    cpu = s.pools["cpu"]
    assert (cpu.queue, cpu.cores, cpu.memory_mib, cpu.walltime, cpu.job_name) == ("cpu", 2, 3815, "01:00:00", "fatebias-cpu")
    s = parse_slurm_block({**BLOCK, "account": "lab", "start_timeout": 30, "max_resubmits": 0, "gpu": GPU})
    gpu = s.pools["gpu"]
    # The gpu pool takes the block's settings and overrides what it names.
    assert (gpu.queue, gpu.cores, gpu.memory_mib, gpu.account, gpu.job_name) == ("gpu", 4, 3815, "lab", "fatebias-gpu")
    assert gpu.extra_directives == ("--gres=gpu:1",) and s.pools["cpu"].extra_directives == ()
    assert s.start_timeout == 30 and s.max_resubmits == 0


def test_keys_of_the_dask_route_are_ignored_and_named() -> None:
    s = parse_slurm_block({**BLOCK, "interface": "ib0", "n_workers": 2, "gpu": {**GPU, "n_workers": 1}})
    assert s.ignored == ("interface", "n_workers", "gpu.n_workers")
    assert "interface" not in pool_job_scripts({**BLOCK, "interface": "ib0"})["cpu"]


@pytest.mark.parametrize(
    ("value", "mib"),
    [("4GB", 3815), ("2G", 2048), ("1.5GiB", 1536), ("500MB", 477), ("500M", 500), (4096, 4096), ("64", 64), ("1T", 2**20)],
)
def test_memory_sizes_become_whole_mebibytes(value: object, mib: int) -> None:
    """K/M/G/T and KiB.. are powers of 1024 (Slurm's units); KB/MB/GB powers of 1000; a bare number is MiB."""
    assert memory_mib(value) == mib


@pytest.mark.parametrize(
    ("block", "says"),
    [
        ({**BLOCK, "qeueu": "cpu"}, r"unknown key\(s\) qeueu; known: .*queue"),
        ({**BLOCK, "gpu": {"partition": "gpu"}}, r"unknown key\(s\) partition in gpu:"),
        ({**BLOCK, "memory": "lots"}, "memory must be a size such as 16GB"),
        ({**BLOCK, "walltime": "2 hours"}, "walltime must be like 02:00:00"),
        ({**BLOCK, "cores": 0}, "cores must be a whole number >= 1"),
        ({**BLOCK, "gpu": {"cores": 1.5}}, "gpu.cores"),
        ({**BLOCK, "gpu": ["--gres=gpu:1"]}, "gpu must be a mapping"),
        ({**BLOCK, "gpu": {"start_timeout": 5}}, "start_timeout belong to the block"),
        ({**BLOCK, "start_timeout": 0}, "start_timeout must be a number > 0"),
        ({**BLOCK, "max_resubmits": -1}, "max_resubmits must be a whole number >= 0"),
        ({**BLOCK, "job_script_prologue": "module load python"}, "job_script_prologue must be a list of strings"),
        ({**BLOCK, "steps": ["fit", "fitt"]}, "steps names fitt; known: all, load, fit"),
    ],
)
def test_bad_blocks_are_named(block: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_slurm_block(block)


def test_job_scripts_of_the_two_pools() -> None:
    """The gpu pool's job asks Slurm for a GPU, the cpu pool's does not; both run the step's remote entry."""
    scripts = pool_job_scripts({**BLOCK, "job_script_prologue": ["source /opt/venv/bin/activate"], "gpu": GPU})
    cpu, gpu = scripts["cpu"], scripts["gpu"]
    assert "#SBATCH --gres=gpu:1" in gpu and "#SBATCH -p gpu" in gpu and "#SBATCH --cpus-per-task=4" in gpu
    assert "gres" not in cpu and "#SBATCH -p cpu" in cpu and "#SBATCH --cpus-per-task=2" in cpu
    assert "#SBATCH -J fatebias-cpu" in cpu and "#SBATCH -J fatebias-gpu" in gpu
    assert "#SBATCH --mem=3815M" in cpu and "#SBATCH -t 01:00:00" in cpu
    for script, cores in ((cpu, 2), (gpu, 4)):
        lines = script.splitlines()
        assert lines[0] == "#!/usr/bin/env bash" and lines[-1].endswith("-m fatebias_dagster.slurm.remote")
        # The prologue runs before the step, whose libraries use the job's cores.
        assert lines.index("source /opt/venv/bin/activate") < lines.index(f"export OMP_NUM_THREADS={cores}")
        assert "#SBATCH -e <run folder>/slurm_logs/%x-%j.err" in lines


def test_cluster_resource_routes_the_fit_and_fails_early_without_a_gpu_pool(tmp_path: Path) -> None:
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump({"slurm": {**BLOCK, "gpu": GPU}}))
    cluster = ClusterResource(slurm=str(path), gpu_request=True)
    assert cluster.remote and cluster.pool("fit") == "gpu" and cluster.pool("export") == "cpu"
    assert ClusterResource(slurm=str(path)).pool("fit") == "cpu"
    assert cluster.sends("fit") and cluster.sends("report")  # every step by default
    path.write_text(yaml.safe_dump({"slurm": {**BLOCK, "gpu": GPU, "steps": ["load", "fit"]}}))
    assert cluster.sends("fit") and not cluster.sends("report") and not ClusterResource().sends("fit")
    path.write_text(yaml.safe_dump({"slurm": BLOCK}))
    with pytest.raises(ConfigError, match="FATEBIAS_GPU_REQUEST=1 asks for the fit to run on a GPU, but .* has no gpu: pool"):
        ClusterResource(slurm=str(path), gpu_request=True).check()
    path.write_text("slurm: [1, 2]")
    with pytest.raises(ConfigError, match="slurm.yaml: slurm cluster: expected a mapping"):
        ClusterResource(slurm=str(path)).settings()
    assert not ClusterResource().remote and ClusterResource().call(None, step="fit", workdir=tmp_path, fn=max, args=(2, 5)) == 5


def test_executor_and_cluster_from_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump({"slurm": BLOCK}))
    clean_env.setenv("FATEBIAS_EXECUTOR", "slurm")
    clean_env.setenv("FATEBIAS_SLURM", str(path))
    assert executor_from_env().name == "multiprocess"
    assert ClusterResource.from_env().slurm == str(path)
    clean_env.setenv("FATEBIAS_GPU_REQUEST", "1")
    with pytest.raises(ConfigError, match="has no gpu: pool"):
        ClusterResource.from_env()


def test_cli_prints_the_job_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"slurm": {**BLOCK, "interface": "lo", "gpu": GPU}}))
    proc = subprocess.run([sys.executable, "-m", "fatebias_dagster.slurm", str(cluster)], capture_output=True, text=True)
    out = proc.stdout
    assert proc.returncode == 0 and out.startswith("# ignored (keys of the Dask route): interface")
    assert out.index("the cpu pool's job script") < out.index("the gpu pool's job script") < out.index("--gres=gpu:1")
    cluster.write_text(yaml.safe_dump({"slurm": {**BLOCK, "cores": "many"}}))
    assert print_scripts([str(cluster)]) == 2
    assert "cores must be a whole number" in capsys.readouterr().err


# --------------------------------------------------------------------------- the client against a stand-in Slurm
FAKE = r'''#!/usr/bin/env bash
# A stand-in for Slurm's commands: a job runs at once, in a process group of its own; its state is a file.
d="$FAKE_SLURM"
case "$(basename "$0")" in
sbatch)
  [ -f "$d/refuse" ] && { echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2; exit 1; }
  n=$(( $(cat "$d/counter" 2>/dev/null || echo 0) + 1 )); echo $n > "$d/counter"
  script="${@: -1}"
  if [ -f "$d/pending" ]; then echo "PENDING|PartitionDown" > "$d/$n.state"; echo $n; exit 0; fi
  echo "RUNNING|None" > "$d/$n.state"
  ( SLURM_JOB_ID=$n setsid bash "$script" > "$d/logs/fatebias-cpu-$n.out" 2> "$d/logs/fatebias-cpu-$n.err" &
    echo $! > "$d/$n.pid"; wait $!; rc=$?
    if [ "$(cut -d'|' -f1 "$d/$n.state")" = RUNNING ]; then
      if [ $rc = 0 ]; then echo "COMPLETED|None" > "$d/$n.state"; else echo "FAILED|NonZeroExitCode" > "$d/$n.state"; fi
    fi ) > /dev/null 2>&1 &
  echo $n ;;
squeue)
  j=$(echo "$@" | sed -E 's/.*-j ([0-9]+).*/\1/'); cat "$d/$j.state" ;;
scancel)
  echo "CANCELLED|None" > "$d/$1.state"; [ -f "$d/$1.pid" ] && kill -TERM -- -"$(cat "$d/$1.pid")" 2>/dev/null; true ;;
scontrol)
  echo "Invalid job id specified" >&2; exit 1 ;;
esac
'''


@pytest.fixture()
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of stand-in Slurm commands on PATH; jobs' logs in ``<folder>/logs``."""
    d = tmp_path / "fake_slurm"
    (d / "bin").mkdir(parents=True)
    (d / "logs").mkdir()
    for cmd in ("sbatch", "squeue", "scancel", "scontrol"):
        p = d / "bin" / cmd
        p.write_text(FAKE)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{d / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(d))
    return d


def Called(fake: Path, **block: object) -> PipesCall:  # noqa: N802 (reads as the class it makes)
    """Calls through the client on the stand-in Slurm, with ``block``'s settings."""
    return PipesCall({"log_directory": str(fake / "logs"), "poll_interval": 0.1, **block})


def test_client_runs_a_call_in_a_job_and_returns_its_value(fake_slurm: Path, tmp_path: Path) -> None:
    value = Called(fake_slurm)(pool="cpu", label="fit", workdir=tmp_path / "run", fn=divmod, args=(17, 5))
    assert value == (3, 2)
    assert "fatebias: step fit started in Slurm job 1" in (fake_slurm / "logs" / "fatebias-cpu-1.err").read_text()
    assert not list((tmp_path / "run" / ".slurm_jobs").iterdir())  # the task folder is removed


def test_client_raises_the_steps_own_error(fake_slurm: Path, tmp_path: Path) -> None:
    """An error the step raised in its job is raised here as itself, with its message."""
    with pytest.raises(ValueError, match="^invalid literal for int"):
        Called(fake_slurm)(pool="cpu", label="fit", workdir=tmp_path, fn=int,
                                 args=("x",))
    assert (fake_slurm / "counter").read_text().strip() == "1"  # not submitted again


def test_client_fails_fast_on_a_refused_job_and_a_missing_pool(fake_slurm: Path, tmp_path: Path) -> None:
    (fake_slurm / "refuse").touch()
    with pytest.raises(SlurmClusterError, match="Slurm refused the job: sbatch: error: .*Invalid partition name"):
        Called(fake_slurm)(pool="cpu", label="fit", workdir=tmp_path, fn=abs, args=(0,))
    with pytest.raises(SlurmClusterError, match="no gpu pool in the slurm cluster"):
        Called(fake_slurm)(pool="gpu", label="fit", workdir=tmp_path, fn=abs, args=(0,))


def test_client_cancels_a_job_that_waits_too_long(fake_slurm: Path, tmp_path: Path) -> None:
    (fake_slurm / "pending").touch()
    with pytest.raises(SlurmClusterError, match=r"waited \d+ s in the queue \(start_timeout 0.5 s\): PENDING \(reason: PartitionDown\)"):
        Called(fake_slurm, start_timeout=0.5)(pool="cpu", label="fit", workdir=tmp_path,
                                                    fn=abs, args=(0,))
    assert (fake_slurm / "1.state").read_text().startswith("CANCELLED")


def test_client_gives_up_on_jobs_that_die_before_the_step(fake_slurm: Path, tmp_path: Path) -> None:
    call = Called(fake_slurm, job_script_prologue=["echo no python here >&2", "exit 3"], max_start_failures=2)
    with pytest.raises(SlurmClusterError, match=r"ended \(FAILED\) before its step started; the end of its log:\nno python here"):
        call(pool="cpu", label="fit", workdir=tmp_path, fn=abs, args=(0,))
    assert (fake_slurm / "counter").read_text().strip() == "2"


def test_client_runs_a_lost_step_again_and_stops_after_max_resubmits(fake_slurm: Path, tmp_path: Path) -> None:
    """A job cancelled after its step started is replaced (up to max_resubmits); a failure after the start
    that is not a loss (out of memory, a crash) is not."""
    import threading
    import time

    def cancel_first_started() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if list((tmp_path / "w" / ".slurm_jobs").glob("*/attempt-1/started.json")):
                subprocess.run(["scancel", "1"], check=True)
                return
            time.sleep(0.05)

    t = threading.Thread(target=cancel_first_started)
    t.start()
    value = Called(fake_slurm)(pool="cpu", label="fit", workdir=tmp_path / "w",
                                     fn=time.sleep, args=(3.0,))
    t.join()
    assert value is None and (fake_slurm / "1.state").read_text().startswith("CANCELLED")
    assert (fake_slurm / "counter").read_text().strip() == "2"

    (fake_slurm / "counter").unlink()
    t = threading.Thread(target=cancel_first_started)
    t.start()
    with pytest.raises(SlurmClusterError, match=r"was lost \(CANCELLED\); 1 jobs of this step were lost \(max_resubmits 0\)"):
        Called(fake_slurm, max_resubmits=0)(pool="cpu", label="fit",
                                                  workdir=tmp_path / "w", fn=time.sleep, args=(3.0,))
    t.join()

    (fake_slurm / "counter").unlink()
    with pytest.raises(SlurmStepError, match=r"ended \(FAILED\) without finishing the step; the end of its log:\n.*step fit started"):
        Called(fake_slurm)(pool="cpu", label="fit", workdir=tmp_path / "v", fn=os._exit,
                                 args=(9,))
