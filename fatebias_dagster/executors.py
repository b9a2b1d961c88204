"""The executor and GPU request of a deployment, chosen by environment variables.

==========================  ==================================================================
``FATEBIAS_EXECUTOR``       ``multiprocess`` (default: one process per step on this machine),
                            ``in_process``, ``slurm`` (the multiprocess executor, with each
                            step's computation a Slurm job: :mod:`.slurm`), ``dask`` (each
                            step a task on a Dask cluster) or ``k8s`` (each step a Kubernetes
                            job; needs ``dagster-k8s``).
``FATEBIAS_SLURM``          With ``slurm``: YAML file holding the ``slurm:`` block (partition,
                            cores, memory, walltime, a ``gpu:`` pool; :mod:`.slurm.settings`).
``FATEBIAS_DASK_CLUSTER``   With ``dask``: YAML file holding the dagster-dask ``cluster`` block,
                            e.g. ``local: {n_workers: 2}`` or ``existing: {address:
                            tcp://host:8786}``. Default: a local cluster of 2 single-threaded
                            worker processes. (A ``slurm:`` block here is read as
                            ``FATEBIAS_EXECUTOR=slurm`` with this file, the earlier spelling.)
``FATEBIAS_GPU_REQUEST``    ``1``: the fit asks the executor for a GPU: on Slurm it runs in the
                            block's gpu pool, the Dask task needs a worker resource ``GPU=1``
                            and the Kubernetes executor's pod requests ``nvidia.com/gpu: 1``.
==========================  ==================================================================

The same assets run under every executor; only this configuration differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from fatebias_core.errors import ConfigError

EXECUTOR_ENV = "FATEBIAS_EXECUTOR"
SLURM_ENV = "FATEBIAS_SLURM"
DASK_CLUSTER_ENV = "FATEBIAS_DASK_CLUSTER"
GPU_REQUEST_ENV = "FATEBIAS_GPU_REQUEST"

DEFAULT_DASK_CLUSTER: dict[str, Any] = {"local": {"n_workers": 2, "processes": True}}

#: The Kubernetes executor/run launcher reads this op tag for the fit's pod.
K8S_GPU_TAG = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {"node_selector": {"nvidia.com/gpu.present": "true"}},
    }
}
#: The Dask executor submits the fit only to workers started with ``--resources GPU=1``.
DASK_GPU_TAG = {"dagster-dask/resource_requirements": json.dumps({"GPU": 1})}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def gpu_requested() -> bool:
    """Whether ``FATEBIAS_GPU_REQUEST`` asks for the fit to run on a GPU."""
    return _truthy(os.environ.get(GPU_REQUEST_ENV))


def slurm_file() -> Path | None:
    """The ``slurm:`` block's file of a Slurm deployment, or None.

    ``FATEBIAS_EXECUTOR=slurm`` reads ``FATEBIAS_SLURM``; ``FATEBIAS_EXECUTOR=dask`` with a
    ``slurm:`` block in ``FATEBIAS_DASK_CLUSTER`` (the earlier spelling) reads that file.
    """
    kind = executor_kind()
    if kind == "slurm":
        path = os.environ.get(SLURM_ENV)
        if not path:
            raise ConfigError(f"{EXECUTOR_ENV}=slurm needs {SLURM_ENV}: the YAML file of the slurm: block")
        if not Path(path).is_file():
            raise ConfigError(f"{SLURM_ENV}: file not found: {path}")
        return Path(path)
    if kind == "dask" and "slurm" in dask_cluster_config():
        return Path(os.environ[DASK_CLUSTER_ENV])
    return None


def dask_cluster_config() -> dict[str, Any]:
    """The dagster-dask ``cluster`` block from ``FATEBIAS_DASK_CLUSTER`` (or the local default)."""
    path = os.environ.get(DASK_CLUSTER_ENV)
    if not path:
        return DEFAULT_DASK_CLUSTER
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{DASK_CLUSTER_ENV}: file not found: {p}")
    raw = yaml.safe_load(p.read_text())
    raw = raw.get("cluster", raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(f"{p}: expected one cluster type, e.g. 'local: {{n_workers: 2}}' or 'slurm: {{...}}'")
    return raw


def executor_from_env() -> dg.ExecutorDefinition:
    """The deployment's executor (``FATEBIAS_EXECUTOR``)."""
    kind = executor_kind()
    if kind == "multiprocess" or slurm_file() is not None:
        # On Slurm the steps' processes here only wait for their jobs (resources/cluster.py).
        # forkserver with the chain's imports (torch, pyro) preloaded: steps start in
        # milliseconds rather than seconds.
        preload = ["dagster", "fatebias_dagster.assets.chain"]
        return dg.multiprocess_executor.configured(
            {"start_method": {"forkserver": {"preload_modules": preload}}}, name="multiprocess"
        )
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "dask":
        from dagster_dask import dask_executor

        return dask_executor.configured({"cluster": dask_cluster_config()}, name="dask")
    if kind == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError:
            raise ConfigError(
                f"{EXECUTOR_ENV}=k8s needs dagster-k8s: pip install dagster-k8s (the version paired with dagster)"
            ) from None
        return k8s_job_executor
    raise ConfigError(f"{EXECUTOR_ENV} must be multiprocess, in_process, slurm, dask or k8s, got {kind!r}")


def executor_kind() -> str:
    """``FATEBIAS_EXECUTOR``, lower-cased (default ``multiprocess``)."""
    return (os.environ.get(EXECUTOR_ENV) or "multiprocess").strip().lower()


def fit_pool() -> str | None:
    """The fit's concurrency pool: ``gpu``, except on a Dask cluster.

    On Dask the worker resource ``GPU`` decides where and how many fits run; and
    dagster-dask cannot hand a run whose plan has pools to its workers (dask parses the
    plan's pool record as a task argument and fails).
    """
    return None if executor_kind() == "dask" and slurm_file() is None else "gpu"


def fit_op_tags() -> dict[str, Any]:
    """Op tags of the fit: always ``gpu``; the executors' GPU requests when ``FATEBIAS_GPU_REQUEST`` is set."""
    tags: dict[str, Any] = {"gpu": "1"}
    if gpu_requested():
        tags.update(K8S_GPU_TAG)
        tags.update(DASK_GPU_TAG)
    return tags
