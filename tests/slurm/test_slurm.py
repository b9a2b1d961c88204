"""The asset graph on a real one-node Slurm cluster (``FATEBIAS_EXECUTOR=slurm``, a ``slurm:`` block).

Every test launches Dagster's own CLI; each step's computation runs as a Slurm job of its own,
submitted through Dagster Pipes (``scontrol``, the jobs' scripts and their logs show it). The tests
share one cluster and run one after the other (one module: ``--dist loadfile`` keeps them on one
pytest worker).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fatebias_dagster.lineage import PROVENANCE_SQL, LineageDB
from fatebias_dagster.slurm import SlurmClusterError
from tests.dagster.conftest import TINY, PipesCall, simulate_tiny, subprocess_env

from .conftest import RAN_IN, ROOT, batch_script, make_deployment, materialize, scontrol_job, slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

CHAIN = {"filtered_cells", "guide_embeddings", "fitted_posterior", "daywise_exports", "mash_outputs",
         "aggregated_genes", "ranked_hits"}
ASSETS = CHAIN | {"diagnostics", "report"}
#: Assets that write a lineage row (diagnostics is disabled in the tiny configuration: no row).
RECORDED = CHAIN | {"report"}
#: The chain's steps (``load_experiment`` makes filtered_cells and guide_embeddings).
STEPS = {"load_experiment", "fitted_posterior", "daywise_exports", "mash_outputs", "aggregated_genes", "ranked_hits",
         "diagnostics", "report"}
#: The steps that compute (diagnostics is switched off in the tiny configuration: no job).
COMPUTED = STEPS - {"diagnostics"}
#: Tables of the run folder compared between executors.
TABLES = ["hits_ranked.csv", "gene_daywise_for_mash.csv", "guide_daywise_for_mash.csv", "mash_mode_comparison.csv"]


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny simulated experiment (its folder; copied for every run)."""
    return simulate_tiny(tmp_path_factory.mktemp("slurm_sim") / "sim").parent


def copy_experiment(src: Path, dst: Path, **settings: object) -> Path:
    """A fresh copy of the experiment (no results) with ``settings``; return its configuration."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("results"))
    config = dst / "config.yaml"
    if settings:
        config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), **settings}))
    return config


def ran_in(log: str) -> dict[str, tuple[str, str]]:
    """step -> (Slurm job id, pool), from the executor's engine events."""
    return {m.group(1): (m.group(2), m.group(3)) for m in RAN_IN.finditer(log)}


def run_events(home: Path, run_id: str, event_type: str | None = None) -> list:
    """The run's events of one type (None: every entry, its log lines too), from the instance in ``home``."""
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        if event_type is None:
            return list(instance.all_logs(run_id))
        return list(instance.all_logs(run_id, of_type=DagsterEventType[event_type]))


def started_in(err_file: Path) -> set[str]:
    """The steps a job's log says it started."""
    return set(re.findall(r"fatebias: step (\w+) started in Slurm job", err_file.read_text(errors="replace")))


def one_row_per_asset(db: LineageDB, recorded: set[str] = RECORDED) -> str:
    """The single run in ``db``, whose lineage rows cover every recorded asset exactly once."""
    rows = db.query("SELECT asset_key, run_id FROM materializations")
    assert rows["run_id"].nunique() == 1, rows
    assert Counter(rows["asset_key"]) == Counter(recorded), rows["asset_key"].tolist()
    return rows["run_id"].iloc[0]


def test_chain_on_slurm_with_a_gpu_pool_equals_the_default_executor(sim_dir: Path, tmp_path: Path) -> None:
    """``dagster asset materialize -m fatebias_dagster --select '*'`` with FATEBIAS_EXECUTOR=slurm, a slurm
    block with a cpu and a gpu pool, and FATEBIAS_GPU_REQUEST=1: every step computes in a Slurm job of its
    own, the fit alone in the gpu pool's (which asked Slurm for --gres=gpu:1), every lineage row reaches
    DuckDB once, and the tables equal those of the default executor."""
    default_cfg = copy_experiment(sim_dir, tmp_path / "default")
    dep_default = make_deployment(tmp_path / "dep_default")
    proc, t_default = materialize(subprocess_env(FATEBIAS_CONFIG=str(default_cfg), DAGSTER_HOME=str(dep_default.home)),
                                  tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    cfg = copy_experiment(sim_dir, tmp_path / "slurm")
    dep = make_deployment(tmp_path / "dep_slurm")
    dep.write_cluster(gpu={"job_extra_directives": ["--gres=gpu:1"]})
    proc, t_slurm = materialize(dep.env(FATEBIAS_CONFIG=str(cfg), FATEBIAS_GPU_REQUEST="1"), tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "RUN_SUCCESS" in log, log[-4000:]

    # Each step computed in a Slurm job of its own: the fit in the gpu pool's, every other step in the cpu pool's.
    ran = ran_in(log)
    assert set(ran) == COMPUTED, log[-4000:]
    gpu_job = ran["fitted_posterior"][0]
    assert ran["fitted_posterior"][1] == "gpu"
    cpu_jobs = {step: job for step, (job, pool) in ran.items() if pool == "cpu"}
    assert set(cpu_jobs) == COMPUTED - {"fitted_posterior"} and len(set(cpu_jobs.values())) == len(cpu_jobs)
    assert gpu_job not in cpu_jobs.values()
    cpu_job = cpu_jobs["daywise_exports"]

    # Slurm gave the gpu pool's job a GPU, and the cpu pool's none: its record and the script it ran.
    gpu_rec, cpu_rec = scontrol_job(gpu_job), scontrol_job(cpu_job)
    assert gpu_rec["TresPerNode"] == "gres:gpu:1" and "gres" not in cpu_rec.get("TresPerNode", "")
    assert gpu_rec["JobName"] == "fatebias-gpu" and cpu_rec["JobName"] == "fatebias-cpu"
    assert {gpu_rec["JobState"], cpu_rec["JobState"]} == {"COMPLETED"}
    gpu_script, cpu_script = batch_script(gpu_job), batch_script(cpu_job)
    assert "#SBATCH --gres=gpu:1" in gpu_script and "gres" not in cpu_script
    for script in (gpu_script, cpu_script):
        assert "-m fatebias_dagster.slurm.remote" in script and "export DAGSTER_PIPES_CONTEXT=" in script
    # ... the scripts that `python -m fatebias_dagster.slurm` prints before anything runs.
    shown = subprocess.run([sys.executable, "-m", "fatebias_dagster.slurm", str(dep.cluster_yaml)],
                           capture_output=True, text=True, check=True).stdout
    gpu_shown = shown.split("the gpu pool's job script")[1]
    for line in gpu_script.splitlines():
        if line.startswith("#SBATCH"):
            assert line in gpu_shown

    # The jobs' own logs: the fit started in the gpu job, each other step in its cpu job.
    assert started_in(dep.logs / f"fatebias-gpu-{gpu_job}.err") == {"fitted_posterior"}
    for step, job in cpu_jobs.items():
        assert started_in(dep.logs / f"fatebias-cpu-{job}.err") == {step}
    # The task folders are gone from the run folder; nothing else of Slurm's is left there.
    assert not list((cfg.parent / "results" / ".slurm_jobs").glob("*"))

    # Lineage: one row per asset, all from this run; Dagster recorded each asset once.
    db = LineageDB(cfg.parent / "results" / "lineage.duckdb")
    run_id = one_row_per_asset(db)
    assert set(db.query(PROVENANCE_SQL)["asset_key"]) == CHAIN
    mats = Counter(e.dagster_event.asset_key.to_user_string() for e in run_events(dep.home, run_id, "ASSET_MATERIALIZATION"))
    assert mats == Counter(ASSETS)
    # No job is left behind.
    assert slurm("squeue", "-h", "-o", "%i").strip() == ""

    # The same seed gives the same tables as the default executor.
    for name in TABLES:
        a = pd.read_csv(default_cfg.parent / "results" / name)
        b = pd.read_csv(cfg.parent / "results" / name)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, obj=name)

    timing = {"default_executor_s": round(t_default, 1), "slurm_executor_s": round(t_slurm, 1)}
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "slurm_chain_timing.json").write_text(json.dumps(timing, indent=1))
    print(f"chain wall time: {timing}")


def test_simulation_backfill_of_two_partitions_runs_as_slurm_jobs(tmp_path: Path) -> None:
    """A backfill of the study over 2 of its 4 scenario x seed partitions, launched by ``dagster job backfill`` and
    run by ``dagster-daemon``, with the block's ``steps`` sending the simulation, the fit and the scoring to Slurm:
    each partition's run computes those three in Slurm jobs of its own, and the other steps on the submit host;
    ``recovery_summary`` (a gathering of small files, computed in its asset's process) gathers both."""
    dep = make_deployment(tmp_path / "dep")
    dep.write_cluster(steps=["simulate", "fit", "evaluate"])  # the light steps compute on the submit host
    sim = {**{k: v for k, v in TINY.items() if k != "run_diagnostics"}, "sim_n_cells": 600, "num_steps": 40,
           "num_posterior_draws": 50}
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(
        {"name": "slurm", "seeds": [0, 1], "scenarios": {"baseline": {}, "noisy": {"sim_concentration": 10.0}}, **sim}
    ))
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(TINY))
    study_dir, lineage = tmp_path / "study", tmp_path / "lineage.duckdb"
    env = dep.env(FATEBIAS_CONFIG=str(base), FATEBIAS_STUDY=str(study), FATEBIAS_STUDY_DIR=str(study_dir),
                  FATEBIAS_LINEAGE_DB=str(lineage))
    partitions = ["baseline|0", "noisy|1"]  # two scenarios, two seeds

    bindir = Path(sys.executable).parent
    # The backfill's runs wait in the instance's queue until the daemon launches them (started second,
    # so that the two never create the fresh instance's storage at the same time).
    proc = subprocess.run(
        [str(bindir / "dagster"), "job", "backfill", "-m", "fatebias_dagster.study", "-j", "simulation_study",
         "--partitions", ",".join(partitions), "--noprompt"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0 and "Launched backfill job" in proc.stdout, proc.stdout + proc.stderr
    daemon = subprocess.Popen([str(bindir / "dagster-daemon"), "run", "-m", "fatebias_dagster.study"], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        runs = wait_runs(dep.home, len(partitions), timeout=300)
    finally:
        stop_group(daemon)
    assert sorted(r.tags["dagster/partition"] for r in runs) == partitions
    assert {r.status.value for r in runs} == {"SUCCESS"}, [(r.tags["dagster/partition"], r.status) for r in runs]
    jobs: dict[str, set[str]] = {}
    for run in runs:
        messages = "\n".join(e.message for e in run_events(dep.home, run.run_id))
        ran = ran_in(messages)
        assert set(ran) == {"study__simulated_experiment", "study__fitted_posterior", "study__recovery_scores"}, messages
        assert {pool for _, pool in ran.values()} == {"cpu"} and len({job for job, _ in ran.values()}) == len(ran)
        jobs[run.tags["dagster/partition"]] = {job for job, _ in ran.values()}
    assert not set.intersection(*jobs.values())  # each partition's run has jobs of its own
    for job in set.union(*jobs.values()):
        rec = scontrol_job(job)
        assert rec["JobName"] == "fatebias-cpu" and rec["JobState"] == "COMPLETED"

    proc, _ = materialize(env, tmp_path, select="recovery_summary", module="fatebias_dagster.study", timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert ran_in(log) == {}
    summary = pd.read_csv(study_dir / "recovery_summary.csv")
    assert sorted(summary["partition"]) == partitions
    db = LineageDB(lineage)
    scores = db.query("SELECT partition_key FROM materializations WHERE asset_key = 'study/recovery_scores'")
    assert sorted(scores["partition_key"]) == partitions


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started in a session of its own and everything it started (the daemon's code
    servers and runs; an interrupted run cancels its Slurm jobs)."""
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)


def wait_runs(home: Path, n: int, timeout: float) -> list:
    """The instance's ``n`` runs once all have finished."""
    from dagster import DagsterInstance

    deadline = time.monotonic() + timeout
    while True:
        with DagsterInstance.from_config(str(home)) as instance:
            runs = list(instance.get_runs())
        if len(runs) >= n and all(r.is_finished for r in runs):
            return runs
        assert time.monotonic() < deadline, [(r.tags.get("dagster/partition"), r.status) for r in runs]
        time.sleep(2)


def test_scancel_of_the_fits_job_runs_it_again_in_a_new_job(sim_dir: Path, tmp_path: Path) -> None:
    """``scancel`` of the fit's job while the fit runs: the fit's computation runs again in a new job, and the run
    (the fit and what it reads) succeeds with every asset materialized once, the fit's Dagster step started
    once, and one lineage row per asset."""
    cfg = copy_experiment(sim_dir, tmp_path / "exp", num_steps=600)
    dep = make_deployment(tmp_path / "dep")
    dep.write_cluster()
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "fatebias_dagster", "--select", "+fitted_posterior"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=dep.env(FATEBIAS_CONFIG=str(cfg)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        killed = None
        deadline = time.monotonic() + 240
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            for err in dep.logs.glob("fatebias-cpu-*.err"):
                if started_in(err) == {"fitted_posterior"}:
                    killed = err.stem.rsplit("-", 1)[1]
                    slurm("scancel", killed)
                    break
            time.sleep(0.2)
        log, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "the fit never started"
    assert proc.returncode == 0 and "RUN_SUCCESS" in log, log[-4000:]
    assert scontrol_job(killed)["JobState"] == "CANCELLED"
    again = re.search(rf"\(Slurm job {killed}\) was lost \(CANCELLED\); started Slurm job (\d+)", log)
    assert again, log[-4000:]
    ran = ran_in(log)
    assert set(ran) == {"load_experiment", "fitted_posterior"} and ran["fitted_posterior"][0] == again.group(1) != killed
    assert started_in(dep.logs / f"fatebias-cpu-{again.group(1)}.err") == {"fitted_posterior"}
    assert "fatebias: step fitted_posterior finished" not in (dep.logs / f"fatebias-cpu-{killed}.err").read_text()

    made = {"filtered_cells", "guide_embeddings", "fitted_posterior"}
    db = LineageDB(cfg.parent / "results" / "lineage.duckdb")
    run_id = one_row_per_asset(db, made)
    starts = Counter(e.step_key for e in run_events(dep.home, run_id, "STEP_START"))
    assert starts == Counter({"load_experiment": 1, "fitted_posterior": 1}), starts
    mats = Counter(e.dagster_event.asset_key.to_user_string() for e in run_events(dep.home, run_id, "ASSET_MATERIALIZATION"))
    assert mats == Counter(made)


def test_a_partition_slurm_refuses_fails_the_run_with_slurms_words(sim_dir: Path, tmp_path: Path) -> None:
    """The whole chain through Dagster's CLI with a partition that does not exist: the run fails at its first
    step, saying what sbatch said, and leaves no job."""
    cfg = copy_experiment(sim_dir, tmp_path / "exp")
    dep = make_deployment(tmp_path / "dep")
    dep.write_cluster(queue="nope")
    proc, seconds = materialize(dep.env(FATEBIAS_CONFIG=str(cfg)), tmp_path, timeout=180)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "RUN_FAILURE" in log, log[-4000:]
    assert "SlurmClusterError" in log and "Invalid partition name specified" in log, log[-4000:]
    assert seconds < 120
    assert slurm("squeue", "-h", "-o", "%i").strip() == ""


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"queue": "down", "start_timeout": 3}, r"waited \d+ s in the queue \(start_timeout 3 s\): PENDING \(reason: PartitionDown\)"),
        ({"job_script_prologue": ["echo no python here >&2", "exit 3"], "max_start_failures": 2},
         r"ended \(FAILED\) before its step started; the end of its log:\nno python here\n\(2 such jobs in a row"),
    ],
    ids=["partition-down", "step-never-starts"],
)
def test_jobs_that_cannot_start_fail_the_step_with_slurms_reason(tmp_path: Path, settings: dict, says: str) -> None:
    """A job that stays queued (its partition is down) fails its step after start_timeout, with Slurm's pending
    reason; jobs that end before their step starts fail it after max_start_failures, with the end of the job's
    log. Each leaves no job (the client's own calls, on the real cluster)."""
    dep = make_deployment(tmp_path / "dep")
    block = yaml.safe_load(dep.write_cluster(**settings).read_text())["slurm"]
    with pytest.raises(SlurmClusterError, match=says):
        PipesCall(block)(pool="cpu", label="load_experiment", workdir=tmp_path / "run", fn=abs, args=(0,))
    assert slurm("squeue", "-h", "-o", "%i").strip() == ""
