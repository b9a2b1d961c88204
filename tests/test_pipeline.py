"""The whole chain: fatebias run end to end, step reuse, interrupted fits, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fatebias_core.cli import main
from fatebias_core.config import load_config
from fatebias_core.pipeline.chain import run_chain

from .conftest import TINY_FIT, TINY_SIM

RUN_SETTINGS = {k: v for k, v in TINY_FIT.items() if k != "device"}


@pytest.fixture(scope="module")
def sim_folder(tmp_path_factory) -> Path:
    from fatebias_core.config import make_config
    from fatebias_core.data.simulate import simulate

    folder = tmp_path_factory.mktemp("sim")
    simulate(make_config(**TINY_SIM), folder)
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    cfg.update(RUN_SETTINGS)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return folder


CONSOLE: list[str] = []


@pytest.fixture(scope="module")
def chain(sim_folder):
    import contextlib
    import io

    cfg = load_config(sim_folder / "config.yaml")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", "--config", str(sim_folder / "config.yaml"), "--engine", "local"]) == 0
    CONSOLE.append(buf.getvalue())
    return cfg


def test_console_answer_in_plain_terms(chain):
    """The run's answer: hits of every contrast, direction in words, interval, probability change, the report."""
    import re

    text = CONSOLE[0]
    hits = pd.read_csv(Path(chain.out_dir) / "hits_ranked.csv", dtype={"gene": str})
    n_hits = int(hits["hit_anyday"].sum())
    assert n_hits > 0
    assert f"MES vs EC: {n_hits} hits of {len(hits)} genes" in text
    assert re.search(r"NEU vs EC: \d+ hits of \d+ genes", text)
    lines = [ln for ln in text.splitlines() if " on d" in ln and "logit" in ln]
    assert len(lines) >= n_hits
    for ln in lines:
        assert re.search(r"towards (MES|EC|NEU) +on d\d: logit [+-]\d\.\d\d \[90% CI [+-]\d\.\d\d, [+-]\d\.\d\d\]; "
                         r"P\((MES|NEU)\) 0\.\d\d -> 0\.\d\d \([+-]0\.\d\d\); lfsr (< 1e-300|\d)", ln), ln
        assert "lfsr 0 " not in ln and not ln.endswith("lfsr 0")
    # a positive effect reads "towards MES", a negative one "towards EC"
    for ln in lines:
        sign = re.search(r"logit ([+-])", ln).group(1)
        if "P(MES)" in ln:
            assert ("towards MES" in ln) == (sign == "+")
    assert f"report: {(Path(chain.out_dir) / 'report.html').resolve()}" in text


def test_run_writes_every_output_with_the_seed_names(chain, sim_folder):
    out = Path(chain.out_dir)
    for name in [
        "gene_daywise_for_mash.csv", "guide_daywise_for_mash.csv", "theta_posterior_summary.npz",
        "delta_posterior_summary.npz", "qc_delta_mean_by_gene.csv", "qc_theta_beta_offset_by_gene.csv",
        "gene_summary_for_ash.csv", "ash_gene_summary.csv", "mash_gene_conservative.csv", "mash_gene_enriched.csv",
        "mash_guide_conservative.csv", "mash_guide_enriched.csv", "gene_from_guide_mash_conservative.csv",
        "gene_from_guide_mash_enriched.csv", "hits_ranked.csv", "mash_mode_comparison.csv", "report.html",
        "gene_daywise_for_mash_NEU.csv", "mash_gene_conservative_NEU.csv", "fit/fit.json", "elbo_trace.png",
    ]:
        assert (out / name).exists(), name
    gene = pd.read_csv(out / "gene_daywise_for_mash.csv")
    assert list(gene.columns) == ["gene"] + [f"betahat_d{d}" for d in range(4)] + [f"se_d{d}" for d in range(4)]
    mash = pd.read_csv(out / "mash_gene_conservative.csv")
    assert {"postmean_d0", "postsd_d3", "lfsr_d2", "lfsr_min", "best_day"} <= set(mash.columns)
    # The QC files, checked against the guide map and the other exports rather than against zero.
    gmap = pd.read_csv(sim_folder / "guide_map.csv")
    per_gene = gmap[gmap["is_ntc"] == 0].groupby("gene_name").size()
    qc_delta = pd.read_csv(out / "qc_delta_mean_by_gene.csv").set_index("gene")
    assert qc_delta["n_guides"].to_dict() == per_gene.loc[qc_delta.index].to_dict()
    guides = pd.read_csv(out / "guide_daywise_for_mash.csv")
    days = [f"d{d}" for d in range(4)]
    mean_beta = guides.groupby("gene")[[f"betahat_{s}" for s in days]].mean()
    theta = gene.set_index("gene")[[f"betahat_{s}" for s in days]]
    qc_offset = pd.read_csv(out / "qc_theta_beta_offset_by_gene.csv").set_index("gene")
    expected = theta.to_numpy() - mean_beta.loc[theta.index].to_numpy()
    assert np.allclose(qc_offset.loc[theta.index, [f"offset_{s}" for s in days]].to_numpy(), expected, atol=1e-5)


def test_run_finds_the_true_hits(chain, sim_folder):
    from fatebias_core.discovery.evaluate import score_calls

    hits = pd.read_csv(Path(chain.out_dir) / "hits_ranked.csv")
    truth = pd.read_csv(sim_folder / "truth_daywise.csv")
    ev = score_calls(hits, truth, 0.2)
    assert ev.summary["anyday_precision"] == 1.0
    assert ev.summary["anyday_recall"] >= 0.75
    # hits first, then by lfsr among active days
    flags = hits["hit_anyday"].to_numpy()
    assert not np.any(~flags[:-1] & flags[1:])


def test_rerun_reuses_every_step(chain):
    res = run_chain(chain)
    assert res.ran == []
    assert {"fit", "export", "mash", "aggregate", "rank"} <= set(res.reused)


def test_changing_a_threshold_reruns_ranking_not_the_fit(chain):
    cfg = chain.model_copy(update={"mash_lfsr_thresh_day": 0.01})
    fit_json = Path(cfg.out_dir) / "fit" / "fit.json"
    before = fit_json.stat().st_mtime_ns
    res = run_chain(cfg)
    assert {"aggregate", "rank", "report"} <= set(res.ran)
    assert {"fit", "export", "mash"} <= set(res.reused)
    assert fit_json.stat().st_mtime_ns == before


def test_rerun_flag_remakes_the_step_and_what_follows(chain, sim_folder, capsys):
    fit_json = Path(chain.out_dir) / "fit" / "fit.json"
    before = fit_json.stat().st_mtime_ns
    mash_csv = Path(chain.out_dir) / "mash_gene_conservative.csv"
    mash_before = mash_csv.stat().st_mtime_ns
    args = ["run", "--config", str(sim_folder / "config.yaml"), "--engine", "local", "--rerun", "mash"]
    assert main(args) == 0
    assert "rerunning mash, aggregate, rank" in capsys.readouterr().err
    assert fit_json.stat().st_mtime_ns == before
    assert mash_csv.stat().st_mtime_ns > mash_before
    assert run_chain(chain).ran == []  # and the remade steps are current again
    assert main(["run", "--config", str(sim_folder / "config.yaml"), "--rerun", "fitt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'fitt' is not a step (one of: fit, export" in err[0]


def test_forget_steps_reaches_the_permutation_run(chain, tmp_path):
    from fatebias_core.pipeline.chain import forget_steps
    from fatebias_core.pipeline.graph import Manifest

    out = tmp_path / "run"
    (out / "permutation" / "fit").mkdir(parents=True)
    manifest = json.loads((Path(chain.out_dir) / "fatebias_manifest.json").read_text())
    for folder in (out, out / "permutation"):
        (folder / "fatebias_manifest.json").write_text(json.dumps(manifest))
    (out / "permutation" / "fit" / "checkpoint.pt").write_bytes(b"x")
    cfg = chain.model_copy(update={"out_dir": str(out)})
    assert forget_steps(cfg, "aggregate") == ["aggregate", "rank", "report"]
    assert set(Manifest.open(out / "permutation").steps) == {"fit", "export", "mash"}
    assert (out / "permutation" / "fit" / "checkpoint.pt").exists()
    assert forget_steps(cfg, "fit") == ["fit", "export", "mash"]
    assert not Manifest.open(out / "permutation").steps
    assert not (out / "permutation" / "fit" / "checkpoint.pt").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, sim_folder, capsys):
    cfg = yaml.safe_load((sim_folder / "config.yaml").read_text())
    cfg.update(adata_path=str(tmp_path / "missing.h5ad"), guide_map_csv=str(sim_folder / "guide_map.csv"), out_dir=str(tmp_path / "out"))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", "--config", str(path), "--engine", "local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.h5ad" in err[0]
    assert not (tmp_path / "out").exists()


def _fit_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "fatebias_core.cli", "fit", "--config", str(config)]


def test_a_killed_fit_resumes_with_the_same_numbers(tmp_path, sim_folder):
    cfg = yaml.safe_load((sim_folder / "config.yaml").read_text())
    base = {**cfg, "adata_path": str(sim_folder / cfg["adata_path"]), "guide_map_csv": str(sim_folder / cfg["guide_map_csv"]),
            "num_steps": 600, "checkpoint_every": 50, "posterior_method": "meanfield", "num_posterior_draws": 50}
    killed, clean = tmp_path / "killed.yaml", tmp_path / "clean.yaml"
    killed.write_text(yaml.safe_dump({**base, "out_dir": str(tmp_path / "killed")}))
    clean.write_text(yaml.safe_dump({**base, "out_dir": str(tmp_path / "clean")}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_fit_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "fit" / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint appeared"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "fit" / "fit.json").exists()
    assert subprocess.run(_fit_cmd(killed), env=env, capture_output=True).returncode == 0
    assert subprocess.run(_fit_cmd(clean), env=env, capture_output=True).returncode == 0
    a = json.loads((tmp_path / "killed" / "fit" / "fit.json").read_text())
    b = json.loads((tmp_path / "clean" / "fit" / "fit.json").read_text())
    assert a["info"]["resumed_from"] >= 50 and b["info"]["resumed_from"] == 0
    ta = pd.read_csv(tmp_path / "killed" / "gene_daywise_for_mash.csv")
    tb = pd.read_csv(tmp_path / "clean" / "gene_daywise_for_mash.csv")
    pd.testing.assert_frame_equal(ta, tb, rtol=1e-5)
