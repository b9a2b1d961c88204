"""The chain on a real local Dask cluster (dagster-dask), launched from Dagster's own CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fatebias_dagster.lineage import PROVENANCE_SQL, LineageDB

from .conftest import subprocess_env, write_debug_instance_yaml

ROOT = Path(__file__).parents[2]
CHAIN = {"filtered_cells", "guide_embeddings", "fitted_posterior", "daywise_exports", "mash_outputs",
         "aggregated_genes", "ranked_hits"}


@pytest.mark.slow
def test_dagster_cli_materializes_chain_on_local_dask_cluster(tmp_path: Path, tiny_experiment: Path) -> None:
    """``dagster asset materialize -m fatebias_dagster --select '*'`` with FATEBIAS_CONFIG set and the
    Dask executor: every step is a task on a LocalCluster of two worker processes."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    write_debug_instance_yaml(home)  # the step pids are read from the events
    cluster = tmp_path / "dask_cluster.yaml"
    cluster.write_text(yaml.safe_dump({"local": {"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                                 "dashboard_address": ":0"}}))
    env = subprocess_env(FATEBIAS_CONFIG=str(tiny_experiment), FATEBIAS_EXECUTOR="dask",
                         FATEBIAS_DASK_CLUSTER=str(cluster), DAGSTER_HOME=str(home))
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "fatebias_dagster", "--select", "*"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "RUN_SUCCESS" in log
    # Steps ran in the Dask workers: each step's process is not the run's own process.
    step_pids = {line.split(" - ")[5] for line in log.splitlines() if "STEP_SUCCESS" in line}
    run_pid = next(line.split(" - ")[5] for line in log.splitlines() if "RUN_START" in line)
    assert step_pids and run_pid not in step_pids and len(step_pids) <= 2, log[-3000:]

    db = LineageDB(tiny_experiment.parent / "results" / "lineage.duckdb")
    rows = db.query("SELECT asset_key, run_id FROM materializations")
    assert set(rows["asset_key"]) == CHAIN | {"report"} and rows["run_id"].nunique() == 1
    assert set(db.query(PROVENANCE_SQL)["asset_key"]) == CHAIN
