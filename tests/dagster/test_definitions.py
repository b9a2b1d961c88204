"""The code locations: assets, descriptions, code versions, graph shape, deployment settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from fatebias_core.errors import ConfigError
from fatebias_dagster.definitions import build_definitions
from fatebias_dagster.executors import (
    dask_cluster_config,
    executor_from_env,
    fit_op_tags,
    fit_pool,
    slurm_file,
)
from fatebias_dagster.resources import ExperimentConfig, StudyConfig
from fatebias_dagster.study import build_study_definitions

from .conftest import subprocess_env, write_tiny_sim_config

ROOT = Path(__file__).parents[2]
CHAIN = ["filtered_cells", "guide_embeddings", "fitted_posterior", "daywise_exports", "mash_outputs",
         "aggregated_genes", "ranked_hits", "diagnostics", "report"]


def nodes(defs: dg.Definitions) -> dict[str, object]:
    return {n.key.to_user_string(): n for n in defs.resolve_asset_graph().asset_nodes}


def parents(node) -> set[str]:
    return {k.to_user_string() for k in node.parent_keys}


@pytest.mark.usefixtures("clean_env")
def test_real_experiment_graph(tiny_experiment: Path) -> None:
    """A configuration naming files: the experiment is an observable source upstream of the chain."""
    got = nodes(build_definitions(ExperimentConfig(config_path=str(tiny_experiment))))
    assert set(CHAIN) <= set(got)
    assert got["experiment"].is_observable and not got["experiment"].is_materializable
    assert "simulated_experiment" not in got
    assert parents(got["filtered_cells"]) == {"experiment", "settings/load"}
    assert parents(got["fitted_posterior"]) == {"filtered_cells", "guide_embeddings", "settings/fit"}
    assert parents(got["ranked_hits"]) == {"mash_outputs", "aggregated_genes", "daywise_exports", "settings/rank"}
    assert parents(got["diagnostics"]) == {"filtered_cells", "guide_embeddings", "ranked_hits", "settings/diagnostics"}
    assert parents(got["report"]) == {"ranked_hits", "diagnostics"}
    assert {got[k].group_name for k in CHAIN} == {"chain"}


@pytest.mark.usefixtures("clean_env")
def test_demo_graph_and_every_asset_documented(tmp_path: Path) -> None:
    """No experiment named: the demo's simulated_experiment feeds the chain. Every asset of both
    code locations has a description and a code version."""
    exp = ExperimentConfig(config_path=str(write_tiny_sim_config(tmp_path)), demo_dir=str(tmp_path / "demo"))
    main = nodes(build_definitions(exp))
    assert parents(main["filtered_cells"]) == {"simulated_experiment", "settings/load"}
    assert parents(main["simulated_experiment"]) == {"settings/simulation"}
    study = nodes(build_study_definitions(StudyConfig(experiment=exp)))
    assert parents(study["recovery_summary"]) == {"study/recovery_scores"}
    assert parents(study["study/recovery_scores"]) == {"study/ranked_hits", "study/simulated_experiment"}
    for key, node in {**main, **study}.items():
        assert node.description and len(node.description) > 40, key
        assert node.code_version, key


@pytest.mark.usefixtures("clean_env")
def test_fit_is_the_gpu_op(tiny_experiment: Path, clean_env: pytest.MonkeyPatch) -> None:
    """The fit carries the gpu tag and pool; executor GPU requests only when asked for."""
    defs = build_definitions(ExperimentConfig(config_path=str(tiny_experiment)))
    fit = defs.resolve_assets_def("fitted_posterior")
    assert fit.op.tags["gpu"] == "1" and fit.op.pool == "gpu"
    assert "dagster-k8s/config" not in fit_op_tags()
    clean_env.setenv("FATEBIAS_GPU_REQUEST", "1")
    tags = fit_op_tags()
    assert tags["dagster-k8s/config"]["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert tags["dagster-dask/resource_requirements"] == '{"GPU": 1}'
    assert defs.resolve_job_def("fatebias_chain").tags["gpu"] == "1"


def test_executor_from_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert executor_from_env().name == "multiprocess"
    clean_env.setenv("FATEBIAS_EXECUTOR", "in_process")
    assert executor_from_env().name == "in_process"
    clean_env.setenv("FATEBIAS_EXECUTOR", "dask")
    assert executor_from_env().name == "dask"
    assert dask_cluster_config() == {"local": {"n_workers": 2, "processes": True}}
    cluster = tmp_path / "slurm.yaml"
    cluster.write_text(yaml.safe_dump({"cluster": {"slurm": {"cores": 8, "memory": "32GB"}}}))
    clean_env.setenv("FATEBIAS_DASK_CLUSTER", str(cluster))
    assert dask_cluster_config() == {"slurm": {"cores": 8, "memory": "32GB"}}
    # The earlier spelling of a Slurm deployment: Dagster's multiprocess executor, steps as Slurm jobs.
    assert executor_from_env().name == "multiprocess" and slurm_file() == cluster and fit_pool() == "gpu"
    clean_env.delenv("FATEBIAS_DASK_CLUSTER")
    assert fit_pool() is None  # a Dask cluster: its GPU resource places the fit
    clean_env.setenv("FATEBIAS_EXECUTOR", "slurm")
    with pytest.raises(ConfigError, match="FATEBIAS_EXECUTOR=slurm needs FATEBIAS_SLURM"):
        executor_from_env()
    clean_env.setenv("FATEBIAS_SLURM", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="FATEBIAS_SLURM: file not found: .*missing.yaml"):
        executor_from_env()
    clean_env.setenv("FATEBIAS_SLURM", str(cluster))
    assert executor_from_env().name == "multiprocess" and slurm_file() == cluster
    clean_env.setenv("FATEBIAS_EXECUTOR", "spark")
    with pytest.raises(ConfigError, match="multiprocess, in_process, slurm, dask or k8s"):
        executor_from_env()


def test_study_partitions_and_folders(tmp_path: Path) -> None:
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", "seeds": [3, 4], "scenarios": {"base": {}, "noisy": {"sim_concentration": 9.0}}}))
    exp = ExperimentConfig(config_path=str(write_tiny_sim_config(tmp_path)), demo_dir=str(tmp_path / "demo"))
    study = StudyConfig(experiment=exp, study=str(spec), root=str(tmp_path / "study"))
    assert sorted(study.load().partitions_def().get_partition_keys()) == ["base|3", "base|4", "noisy|3", "noisy|4"]
    cfg, folder = study.simulation_target("noisy|4")
    assert (cfg.sim_concentration, cfg.sim_seed, cfg.sim_n_cells) == (9.0, 4, 1500)
    assert folder == tmp_path / "study" / "noisy" / "seed_4"
    run = study.run_folder("noisy|4")
    assert run.out_dir == folder / "results" and run.config.adata_path == str(folder / "adata.h5ad")
    assert run.lineage_db == (tmp_path / "demo" / "results" / "lineage.duckdb").resolve()


@pytest.mark.slow
def test_dagster_definitions_validate() -> None:
    """``dagster definitions validate`` on workspace.yaml (both code locations)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "All code locations passed validation" in proc.stdout + proc.stderr


@pytest.mark.usefixtures("clean_env")
def test_checks_are_asset_checks(tiny_experiment: Path) -> None:
    """The NTC calibration check is a blocking asset check of the exports; the diagnostics' three are checks of theirs."""
    defs = build_definitions(ExperimentConfig(config_path=str(tiny_experiment)))
    specs = {
        (spec.asset_key.to_user_string(), spec.name): spec.blocking
        for asset in defs.assets
        if isinstance(asset, dg.AssetsDefinition)
        for spec in asset.check_specs
    }
    assert specs == {
        ("daywise_exports", "ntc_calibration"): True,
        ("diagnostics", "heldout_fit"): False,
        ("diagnostics", "permutation_control"): False,
        ("diagnostics", "sanity_checks"): False,
    }
