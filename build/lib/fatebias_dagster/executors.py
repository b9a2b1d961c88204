"""The executor and GPU request of a deployment, chosen by environment variables.

==========================  ==================================================================
``FATEBIAS_EXECUTOR``       ``multiprocess`` (default: one process per step on this machine),
                            ``in_process``, ``dask`` (each step a task on a Dask cluster) or
                            ``k8s`` (each step a Kubernetes job; needs ``dagster-k8s``).
``FATEBIAS_DASK_CLUSTER``   YAML file holding the dagster-dask ``cluster`` block, e.g.
                            ``local: {n_workers: 2}``, ``existing: {address: tcp://host:8786}``
                            or ``slurm: {cores: 8, memory: 32GB, ...}`` (dask-jobqueue; run by
                            :mod:`.slurm`: worker jobs in a cpu and an optional gpu pool).
                            Default: a local cluster of 2 single-threaded worker processes.
``FATEBIAS_GPU_REQUEST``    ``1``: the fit asks the executor for a GPU: the Dask task needs a
                            worker resource ``GPU=1`` and the Kubernetes executor's pod
                            requests ``nvidia.com/gpu: 1``.
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
    if kind == "multiprocess":
        # forkserver with the chain's imports (torch, pyro) preloaded: steps start in
        # milliseconds rather than seconds.
        preload = ["dagster", "fatebias_dagster.assets.chain"]
        return dg.multiprocess_executor.configured(
            {"start_method": {"forkserver": {"preload_modules": preload}}}, name="multiprocess"
        )
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "dask":
        cluster = dask_cluster_config()
        if "slurm" in cluster:
            # dagster-dask's own executor never scales a SLURMCluster and has one job template.
            from .slurm import parse_slurm_block, slurm_dask_executor

            parse_slurm_block(cluster["slurm"])  # a bad block fails when the code location loads
            return slurm_dask_executor.configured({"cluster": cluster}, name="dask")
        from dagster_dask import dask_executor

        return dask_executor.configured({"cluster": cluster}, name="dask")
    if kind == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError:
            raise ConfigError(
                f"{EXECUTOR_ENV}=k8s needs dagster-k8s: pip install dagster-k8s (the version paired with dagster)"
            ) from None
        return k8s_job_executor
    raise ConfigError(f"{EXECUTOR_ENV} must be multiprocess, in_process, dask or k8s, got {kind!r}")


def executor_kind() -> str:
    """``FATEBIAS_EXECUTOR``, lower-cased (default ``multiprocess``)."""
    return (os.environ.get(EXECUTOR_ENV) or "multiprocess").strip().lower()


def fit_pool() -> str | None:
    """The fit's concurrency pool: ``gpu``, except on Dask.

    On Dask the worker resource ``GPU`` decides where and how many fits run; and
    dagster-dask cannot hand a run whose plan has pools to its workers (dask parses the
    plan's pool record as a task argument and fails).
    """
    return None if executor_kind() == "dask" else "gpu"


def fit_op_tags() -> dict[str, Any]:
    """Op tags of the fit: always ``gpu``; the executors' GPU requests when ``FATEBIAS_GPU_REQUEST`` is set."""
    tags: dict[str, Any] = {"gpu": "1"}
    if _truthy(os.environ.get(GPU_REQUEST_ENV)):
        tags.update(K8S_GPU_TAG)
        tags.update(DASK_GPU_TAG)
    return tags
