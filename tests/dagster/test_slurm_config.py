"""The Slurm cluster block: pools, job scripts and routing, checked without a Slurm cluster
(``tests/slurm/`` runs them on a real one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fatebias_core.errors import ConfigError
from fatebias_dagster.executors import executor_from_env
from fatebias_dagster.slurm import (
    parse_slurm_block,
    pool_job_scripts,
    pool_of_requirements,
    slurm_dask_executor,
)

from .conftest import subprocess_env

BLOCK = {"queue": "cpu", "cores": 2, "memory": "4GB", "walltime": "01:00:00", "interface": "lo"}
GPU = {"queue": "gpu", "cores": 4, "job_extra_directives": ["--gres=gpu:1"]}


def test_block_splits_into_pools_and_scheduler_settings() -> None:
    s = parse_slurm_block(BLOCK)
    assert list(s.pools) == ["cpu"] and s.pools["cpu"].n_workers == 1
    assert (s.start_timeout, s.max_start_failures, s.poll_interval) == (600.0, 3, 2.0)
    assert s.cluster_kwargs == {**BLOCK, "processes": 1}
    s = parse_slurm_block({**BLOCK, "n_workers": 3, "start_timeout": 30, "gpu": {**GPU, "n_workers": 2}})
    assert s.pools["cpu"].n_workers == 3 and s.pools["gpu"].n_workers == 2 and s.start_timeout == 30
    assert s.pools["gpu"].job_options == GPU and "gpu" not in s.cluster_kwargs and "n_workers" not in s.cluster_kwargs


@pytest.mark.parametrize(
    ("block", "says"),
    [
        ({**BLOCK, "processes": 2}, "processes must be 1"),
        ({**BLOCK, "gpu": {"processes": 4}}, "gpu.processes must be 1"),
        ({**BLOCK, "worker_extra_args": ["--resources", "GPU=1"]}, "must not set --resources"),
        ({**BLOCK, "n_workers": 0}, "n_workers must be a whole number >= 1"),
        ({**BLOCK, "gpu": {"n_workers": 1.5}}, "gpu.n_workers"),
        ({**BLOCK, "gpu": ["--gres=gpu:1"]}, "gpu must be a mapping"),
        ({**BLOCK, "gpu": {"start_timeout": 5}}, "start_timeout belong to the block"),
        ({**BLOCK, "start_timeout": 0}, "start_timeout must be a number > 0"),
    ],
)
def test_bad_blocks_are_named(block: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_slurm_block(block)


def test_job_scripts_of_the_two_pools() -> None:
    """The gpu pool's job asks Slurm for a GPU and its worker advertises GPU; the cpu pool's neither."""
    scripts = pool_job_scripts({**BLOCK, "gpu": GPU})
    cpu, gpu = scripts["cpu"], scripts["gpu"]
    assert "#SBATCH --gres=gpu:1" in gpu and "#SBATCH -p gpu" in gpu and "#SBATCH --cpus-per-task=4" in gpu
    assert "--resources GPU=1" in gpu and "--resources CPU=1" not in gpu
    assert "gres" not in cpu and "#SBATCH -p cpu" in cpu and "--resources CPU=1" in cpu
    assert "#SBATCH -J fatebias-cpu" in cpu and "#SBATCH -J fatebias-gpu" in gpu
    for script in (cpu, gpu):
        assert "--interface lo" in script and "export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=False" in script
    # Threads follow cores (the step's own libraries use them); one step at a time comes from the resource.
    assert "--nthreads 4" in gpu and "--nthreads 2" in cpu


def test_steps_go_to_the_pool_of_their_resource() -> None:
    assert pool_of_requirements({}) == "cpu"
    assert pool_of_requirements({"GPU": 1}) == "gpu"
    with pytest.raises(ConfigError, match="only ask for the Dask resource GPU"):
        pool_of_requirements({"TPU": 1})


def test_executor_from_env_picks_the_slurm_executor(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    clean_env.setenv("FATEBIAS_EXECUTOR", "dask")
    clean_env.setenv("FATEBIAS_DASK_CLUSTER", str(cluster))
    cluster.write_text(yaml.safe_dump({"slurm": BLOCK}))
    ex = executor_from_env()
    assert ex.name == "dask" and ex.executor_creation_fn is slurm_dask_executor.executor_creation_fn
    cluster.write_text(yaml.safe_dump({"local": {"n_workers": 1}}))
    assert executor_from_env().executor_creation_fn is not slurm_dask_executor.executor_creation_fn
    cluster.write_text(yaml.safe_dump({"slurm": {**BLOCK, "processes": 4}}))
    with pytest.raises(ConfigError, match="processes must be 1"):
        executor_from_env()


def test_cli_prints_the_job_scripts(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"slurm": {**BLOCK, "gpu": GPU}}))
    out = subprocess.run([sys.executable, "-m", "fatebias_dagster.slurm", str(cluster)], capture_output=True,
                         text=True, check=True).stdout
    assert out.index("the cpu pool's job script") < out.index("the gpu pool's job script") < out.index("--gres=gpu:1")


@pytest.mark.slow
def test_gpu_request_without_a_gpu_pool_fails_before_any_job(tmp_path: Path, tiny_experiment: Path) -> None:
    """FATEBIAS_GPU_REQUEST=1 with a cluster that has no gpu pool: the fit could never be placed, so the
    run fails at once, saying what to add."""
    home = tmp_path / "home"
    home.mkdir()
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"slurm": BLOCK}))
    env = subprocess_env(FATEBIAS_CONFIG=str(tiny_experiment), FATEBIAS_EXECUTOR="dask", FATEBIAS_GPU_REQUEST="1",
                         FATEBIAS_DASK_CLUSTER=str(cluster), DAGSTER_HOME=str(home))
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "fatebias_dagster", "--select", "*"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "RUN_FAILURE" in log
    assert "fitted_posterior ask for a worker with the Dask resource GPU" in log and "no gpu: pool" in log, log[-3000:]
