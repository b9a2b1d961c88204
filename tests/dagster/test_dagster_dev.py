"""``dagster dev`` end to end: the UI's asset graph, a run launched through GraphQL, reruns of stale
assets through the daemon, and a simulation backfill.

One server (webserver + daemon, loopback, its own DAGSTER_HOME with the repository's dagster.yaml)
serves these tests (session-scoped: with ``-n 2 --dist loadfile`` they share one); each test also
works alone (it materializes what it needs first).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fatebias_dagster.lineage import PROVENANCE_SQL, LineageDB

from .conftest import TINY, simulate_tiny, subprocess_env
from .devserver import ROOT, DagsterDev

pytestmark = pytest.mark.slow

#: The assets the hit list is built from (its provenance), then everything downstream of it.
BUILT_FROM = ["filtered_cells", "guide_embeddings", "fitted_posterior", "daywise_exports", "mash_outputs",
              "aggregated_genes", "ranked_hits"]
CHAIN = [*BUILT_FROM, "diagnostics", "report"]
ARTIFACTS = ROOT / "test-artifacts"
GRAPH_PAGE = "locations/fatebias/asset-groups/chain/lineage"


class Deployment:
    """The server and the files it works on."""

    def __init__(self, server: DagsterDev, config: Path, study_dir: Path):
        self.server = server
        self.config = config
        self.study_dir = study_dir

    @property
    def out_dir(self) -> Path:
        return self.config.parent / "results"

    def edit_config(self, **settings: object) -> None:
        data = yaml.safe_load(self.config.read_text())
        self.config.write_text(yaml.safe_dump({**data, **settings}))

    def ensure_chain(self) -> None:
        """Materialize the chain unless some run already did."""
        if not (self.out_dir / "hits_ranked.csv").exists():
            run_id = self.server.launch_job("fatebias", "fatebias_chain")
            assert self.server.wait_run(run_id) == "SUCCESS", self.server.log()

    def wait_fresh(self, keys: list[str], timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.server.stale_status(*keys)
            if set(status.values()) == {"FRESH"} or time.monotonic() > deadline:
                return status
            time.sleep(1)


@pytest.fixture(scope="session")  # one server per pytest worker, whatever order its tests come in
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("dagster_dev")
    config = simulate_tiny(base / "experiment", num_steps=80)  # the server's runs show the platform, not the fit
    study = base / "study.yaml"
    # The backfill shows partitions, the gpu pool and the summary; smaller simulations do.
    sim_settings = {**{k: v for k, v in TINY.items() if k != "run_diagnostics"}, "sim_n_cells": 1000, "num_steps": 60}
    study.write_text(yaml.safe_dump(
        {"name": "test", "seeds": [0], "scenarios": {"baseline": {}, "noisy": {"sim_concentration": 10.0}}, **sim_settings}
    ))
    env = subprocess_env(
        FATEBIAS_CONFIG=str(config), FATEBIAS_STUDY=str(study), FATEBIAS_STUDY_DIR=str(base / "study"),
        FATEBIAS_OBSERVE_INTERVAL="2", FATEBIAS_AUTOMATION_INTERVAL="3",
    )
    server = DagsterDev(base / "dagster_home", env)
    try:
        server.start()
        yield Deployment(server, config, base / "study")
    finally:
        server.stop()


def chromium(url: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    profile = ARTIFACTS / ".chromium-profile"
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=20000", *args, url],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.browser
def test_ui_shows_asset_graph_and_runs_the_chain(deployment: Deployment) -> None:
    """Headless Chromium sees the chain's asset graph; a run launched through GraphQL succeeds."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    server = deployment.server
    ARTIFACTS.mkdir(exist_ok=True)
    server.graphql("mutation { setNuxSeen }")  # the first-visit newsletter dialog would cover the graph
    url = f"{server.url}/{GRAPH_PAGE}"
    dom = chromium(url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    missing = [name for name in CHAIN if name not in dom.stdout]
    assert not missing, f"asset graph lacks {missing}"
    shot = chromium(url, f"--screenshot={ARTIFACTS / 'dagster_asset_graph.png'}")
    assert shot.returncode == 0 and (ARTIFACTS / "dagster_asset_graph.png").stat().st_size > 20_000, shot.stderr[-2000:]

    run_id = server.launch_job("fatebias", "fatebias_chain")
    assert server.wait_run(run_id) == "SUCCESS", server.log()
    assert deployment.wait_fresh(CHAIN) == dict.fromkeys(CHAIN, "FRESH")
    chromium(url, f"--screenshot={ARTIFACTS / 'dagster_asset_graph_materialized.png'}")

    db = LineageDB(deployment.out_dir / "lineage.duckdb")
    prov = db.query(PROVENANCE_SQL)
    assert set(prov["asset_key"]) == set(BUILT_FROM) and set(prov["run_id"]) == {run_id}


def rerun_assets(server: DagsterDev, known: set[str], expected: set[str], timeout: float = 120) -> set[str]:
    """The assets of the runs started after ``known``, once they cover ``expected`` and all succeeded.

    The daemon may split a rerun over several runs (one automation tick can see some of a
    sensor tick's observations before the rest); what matters is which assets reran.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in server.runs() if r["runId"] not in known]
        assets = {"/".join(a["path"]) for r in runs for a in (r["assetSelection"] or [])}
        finished = all(r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs)
        if runs and finished and (assets >= expected or any(r["status"] != "SUCCESS" for r in runs)):
            assert all(r["status"] == "SUCCESS" for r in runs), server.log()
            time.sleep(4)  # more than an automation tick: nothing else may follow
            later = [r for r in server.runs() if r["runId"] not in known]
            return {"/".join(a["path"]) for r in later for a in (r["assetSelection"] or [])}
        time.sleep(1)
    raise TimeoutError(f"the daemon did not rerun {sorted(expected)} within {timeout:.0f} s:\n{server.log()}")


def _rerun_done(server: DagsterDev, known: set[str], keys: set[str]) -> bool:
    """Whether runs launched since ``known`` have successfully remade every asset of ``keys``."""
    done = [r for r in server.runs() if r["runId"] not in known and r["status"] == "SUCCESS"]
    return keys <= {"/".join(a["path"]) for r in done for a in (r["assetSelection"] or [])}


def test_edits_rerun_only_stale_assets_through_daemon(deployment: Deployment) -> None:
    """A threshold edit makes only aggregation, ranking and what follows them (diagnostics, which read
    the calls settings, and the report) stale and the daemon reruns just those; new experiment data
    reruns the whole chain."""
    server = deployment.server
    deployment.ensure_chain()
    assert deployment.wait_fresh(CHAIN) == dict.fromkeys(CHAIN, "FRESH")

    # 1. Edit a ranking threshold. The change sensor reports the new settings versions within
    #    seconds; until the daemon's rerun lands, the UI shows exactly what is stale.
    known = {r["runId"] for r in server.runs()}
    deployment.edit_config(mash_lfsr_thresh_day=0.01)
    expected = {"aggregated_genes", "ranked_hits", "diagnostics", "report"}
    # Collect every asset seen stale until all expected ones have been, or the daemon's rerun of
    # the rest has finished: the report turns stale only when the rerun has remade diagnostics, and
    # the rerun may remake it before a poll sees it. Nothing else may ever be stale, and the edited
    # steps are stale until the daemon reruns them.
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while not seen >= expected and time.monotonic() < deadline:
        seen |= {k for k, v in server.stale_status(*CHAIN).items() if v == "STALE"}
        if _rerun_done(server, known, expected - seen):
            break
        time.sleep(0.3)
    assert {"aggregated_genes", "ranked_hits"} <= seen <= expected
    assert rerun_assets(server, known, expected) == expected
    assert deployment.wait_fresh(CHAIN) == dict.fromkeys(CHAIN, "FRESH")

    # 2. New data (another simulation's AnnData): every chain asset reruns.
    known = {r["runId"] for r in server.runs()}
    fresh = simulate_tiny(deployment.config.parent.parent / "new_data", sim_seed=7)
    shutil.copy(fresh.parent / "adata.h5ad", deployment.config.parent / "adata.h5ad")
    assert rerun_assets(server, known, set(CHAIN), timeout=240) == set(CHAIN)
    db = LineageDB(deployment.out_dir / "lineage.duckdb")
    latest = db.query(PROVENANCE_SQL).set_index("asset_key")
    assert not set(latest["run_id"]) & known  # the hit list now comes from the reruns only
    assert latest.loc["ranked_hits", "settings"] and '"mash_lfsr_thresh_day": 0.01' in latest.loc["ranked_hits", "settings"]


def test_simulation_backfill_over_two_partitions(deployment: Deployment) -> None:
    """A backfill of the study over two scenario partitions simulates, analyses and scores both;
    recovery_summary then gathers them into one table and figure."""
    server = deployment.server
    backfill, run_ids = server.launch_job_backfill("fatebias_study", "simulation_study", ["baseline|0", "noisy|0"])
    assert len(run_ids) == 2
    assert [server.wait_run(r, timeout=300) for r in run_ids] == ["SUCCESS", "SUCCESS"], server.log()
    run_id = server.launch_assets("fatebias_study", ["recovery_summary"])
    assert server.wait_run(run_id) == "SUCCESS", server.log()

    summary = pd.read_csv(deployment.study_dir / "recovery_summary.csv")
    assert sorted(summary["partition"]) == ["baseline|0", "noisy|0"]
    assert summary[["anyday_recall", "daywise_precision"]].notna().all().all()
    assert (deployment.study_dir / "recovery_summary.png").stat().st_size > 10_000
    db = LineageDB(deployment.out_dir / "lineage.duckdb")
    scores = db.query("SELECT DISTINCT partition_key FROM materializations WHERE asset_key = 'study/recovery_scores'")
    assert sorted(scores["partition_key"]) == ["baseline|0", "noisy|0"]
    assert db.query("SELECT count(*) AS n FROM recovery_summary")["n"][0] == 2
    tags = {t["key"]: t["value"] for r in server.runs() if r["runId"] == run_ids[0] for t in r["tags"]}
    assert tags["dagster/backfill"] == backfill
