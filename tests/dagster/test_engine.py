"""``fatebias run``/``demo`` through Dagster: two runs at once, the lineage query, reuse after a threshold edit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from fatebias_core.config import load_config
from fatebias_core.pipeline.chain import run_chain as local_run_chain
from fatebias_dagster.definitions import build_definitions
from fatebias_dagster.engine import run_chain
from fatebias_dagster.lineage import PROVENANCE_SQL, LineageDB
from fatebias_dagster.resources import ExperimentConfig

from .conftest import TINY, subprocess_env, write_tiny_sim_config

ROOT = Path(__file__).parents[2]
CHAIN_ROWS = {"filtered_cells", "guide_embeddings", "fitted_posterior", "daywise_exports", "mash_outputs",
              "aggregated_genes", "ranked_hits", "report"}


@pytest.mark.slow
def test_demo_and_run_at_once_then_threshold_edit(tmp_path: Path, tiny_experiment: Path, clean_env) -> None:
    """``fatebias demo`` and ``fatebias run`` (engine auto = dagster) write one lineage database at
    the same time; no row is lost; the README query answers; then only ranking reruns after a
    threshold edit."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_experiment.parent, run_dir, ignore=shutil.ignore_patterns("results"))
    db_path = tmp_path / "lineage.duckdb"
    env = subprocess_env(FATEBIAS_LINEAGE_DB=str(db_path))
    cli = [sys.executable, "-m", "fatebias_core.cli"]
    demo = subprocess.Popen([*cli, "demo", "--out", str(tmp_path / "demo"), "--config", str(write_tiny_sim_config(tmp_path))],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = subprocess.Popen([*cli, "run", "--config", str(run_dir / "config.yaml")],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outs = [p.communicate(timeout=420)[0] for p in (demo, run)]
    assert [demo.returncode, run.returncode] == [0, 0], "\n".join(o[-3000:] for o in outs)
    for out in outs:
        assert "ran: fit, export, mash, aggregate, rank, report" in out and "Dagster run" in out, out[-2000:]
        # the answer of every contrast, and where the report is, with the dagster engine too
        assert "MES vs EC:" in out and "NEU vs EC:" in out and "report: " in out and "report.html" in out, out[-2000:]
    assert "next: fatebias run" not in outs[0]  # the demo runs it itself
    for folder in (tmp_path / "demo" / "results", run_dir / "results"):
        # the one record of what is current, kept by both engines
        steps = json.loads((folder / "fatebias_manifest.json").read_text())["steps"]
        assert sorted(steps) == sorted(["load", "fit", "export", "mash", "aggregate", "rank", "report"])
        assert {rec["engine"] for rec in steps.values()} == {"dagster"}

    db = LineageDB(db_path)
    rows = db.query("SELECT out_dir, asset_key, run_id FROM materializations")
    assert set(rows["out_dir"]) == {str(tmp_path / "demo" / "results"), str(run_dir / "results")}
    for _, one in rows.groupby("out_dir"):
        assert sorted(one["asset_key"]) == sorted(CHAIN_ROWS) and one["run_id"].nunique() == 1
    assert db.query("SELECT count(DISTINCT run_id) AS runs, count(*) AS n FROM hits").iloc[0].tolist() == [2, 2 * TINY["sim_n_genes"]]

    prov = db.query(PROVENANCE_SQL)
    assert set(prov["asset_key"]) == CHAIN_ROWS - {"report"}  # what the hit list was built from, along the edges
    assert prov["run_id"].nunique() == 1  # each experiment has its own instance: no crossed edges
    load = prov.set_index("asset_key").loc["filtered_cells"]
    assert load["input_files"][0].endswith("adata.h5ad") and load["input_files"][1].endswith("guide_map.csv")
    assert prov.set_index("asset_key").loc["ranked_hits", "settings"]

    # Only ranking (and aggregation, which calls days with the same thresholds) reruns: the
    # run folder's persistent instance holds the data versions the subprocess recorded.
    assert (run_dir / "results" / "dagster_home" / "dagster.yaml").is_file()
    cfg_path = run_dir / "config.yaml"
    data = yaml.safe_load(cfg_path.read_text())
    cfg_path.write_text(yaml.safe_dump({**data, "mash_lfsr_thresh_day": 0.01}))
    clean_env.setenv("FATEBIAS_LINEAGE_DB", str(db_path))
    result = run_chain(load_config(cfg_path))
    assert result.ran == ["aggregate", "rank", "report"]
    assert result.reused == ["fit", "export", "mash"]
    assert result.hits is not None and len(result.hits) == TINY["sim_n_genes"]
    latest = db.query(
        "SELECT asset_key FROM materializations WHERE run_id = "
        "(SELECT run_id FROM materializations WHERE asset_key = 'ranked_hits' ORDER BY finished_at DESC LIMIT 1)"
    )
    assert set(latest["asset_key"]) == {"aggregated_genes", "ranked_hits", "report"}  # nothing logged for current steps
    prov = db.query(PROVENANCE_SQL).set_index("asset_key")
    assert prov.loc["ranked_hits", "run_id"] != prov.loc["fitted_posterior", "run_id"]  # the new hit list, the old fit
    assert '"mash_lfsr_thresh_day": 0.01' in prov.loc["ranked_hits", "settings"]

    # Nothing changed: no Dagster run at all.
    again = run_chain(load_config(cfg_path))
    assert again.ran == [] and again.reused == ["fit", "export", "mash", "aggregate", "rank", "report"]
    forced = run_chain(load_config(cfg_path), rerun="rank")  # fatebias run --rerun rank
    assert forced.ran == ["rank", "report"] and forced.reused == ["fit", "export", "mash", "aggregate"]

    # One record for both engines: the local engine finds the Dagster-made folder current,
    # and Dagster finds what the local engine remade current.
    local = local_run_chain(load_config(cfg_path))
    assert local.ran == [] and local.reused == ["fit", "export", "mash", "aggregate", "rank", "report"]
    local = local_run_chain(load_config(cfg_path), rerun="aggregate")
    assert local.ran == ["aggregate", "rank", "report"]
    steps = json.loads((run_dir / "results" / "fatebias_manifest.json").read_text())["steps"]
    assert steps["rank"]["engine"] == "local" and steps["fit"]["engine"] == "dagster"
    again = run_chain(load_config(cfg_path))
    assert again.ran == [] and again.reused == ["fit", "export", "mash", "aggregate", "rank", "report"]
    html = (run_dir / "results" / "report.html").read_text()
    assert "not found: the steps that made this folder are unknown" not in html and steps["fit"]["version"] in html

    # The values handed between assets are rebuilt from the run folder's files (no pickles): a
    # fresh instance materializes daywise_exports alone from the fit's npz.
    defs = build_definitions(ExperimentConfig(config_path=str(cfg_path)), executor=dg.in_process_executor)
    with dg.DagsterInstance.ephemeral() as instance:
        alone = defs.resolve_job_def("fatebias_chain").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("daywise_exports")]
        )
    assert alone.success and len(alone.get_asset_materialization_events()) == 1
    assert not list((run_dir / "results").rglob("*.pkl"))


def test_engine_reports_bad_input_in_one_line(tmp_path: Path, clean_env) -> None:
    """A configuration naming a missing file fails with the loader's one-line error, not a Dagster trace."""
    from fatebias_core.config import make_config
    from fatebias_core.errors import FatebiasError

    cfg = make_config(adata_path=str(tmp_path / "missing.h5ad"), guide_map_csv=str(tmp_path / "map.csv"),
                      out_dir=str(tmp_path / "out"))
    with pytest.raises(FatebiasError, match="^adata_path: file not found: .*missing.h5ad; guide_map_csv: file not found: .*map.csv$"):
        run_chain(cfg)
    # Validation fails before Dagster starts: no run folder, lineage database or lock is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_failed_blocking_check_stops_what_follows(tmp_path: Path, tiny_experiment: Path, clean_env) -> None:
    """The NTC check is a blocking asset check: failed with ``on_failed_calibration: stop``, Dagster skips mash and
    everything after it, and the run ends with the check's one-line error."""
    from fatebias_core.checks.ntc import CalibrationFailed
    from fatebias_core.checks.verdicts import Verdict
    from fatebias_dagster.assets import chain as chain_assets

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_experiment.parent, run_dir, ignore=shutil.ignore_patterns("results"))
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({**yaml.safe_load(cfg_path.read_text()), "on_failed_calibration": "stop"}))
    failed = Verdict("ntc_calibration", False, True, "90% intervals of 40 NTC pseudo-gene/days cover 0 in 60.0%, p 1e-05")
    clean_env.setattr(chain_assets, "step_verdicts", lambda step, out, config: [failed] if step == "export" else [])
    with pytest.raises(CalibrationFailed, match="^the ntc_calibration check failed .*cover 0 in 60.0%.*on_failed_calibration: stop"):
        run_chain(load_config(cfg_path))
    steps = json.loads((run_dir / "results" / "fatebias_manifest.json").read_text())["steps"]
    assert sorted(steps) == ["export", "fit", "load"]  # nothing after the exports ran
