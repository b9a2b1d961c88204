"""The HTML report: sections, hits read from the ranked files, embedded figures, no external links,
escaping, templates shipped as package data, absent inputs, CLI, browser."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape
from scipy.stats import norm

from fatebias_core.checks.diagnostics import (
    DiagnosticsResult,
    HeldOutResult,
    PermutationResult,
    sanity_checks,
    score_heldout,
)
from fatebias_core.checks.ntc import NTCCheck
from fatebias_core.cli import main
from fatebias_core.config import FatebiasConfig, make_config
from fatebias_core.discovery.calls import rank_and_compare, rank_file, rank_hits
from fatebias_core.discovery.evaluate import evaluate_files
from fatebias_core.errors import InputDataError
from fatebias_core.io import write_csv, write_json, write_text
from fatebias_core.pipeline.graph import Manifest
from fatebias_core.pipeline.steps import report_step
from fatebias_core.report.build import build_report
from fatebias_core.report.render import PAGE_TEMPLATE, environment
from fatebias_core.types import LoadSummary

DAYS = ("d0", "d1", "d2", "d3")
N_GENES, GUIDES_PER_GENE = 30, 3
# A name that must be escaped; it is also a hit (the truth gives it a large effect).
ODD_GENE = 'G<b>&"30'
GENES = [f"G{i:02d}" for i in range(1, N_GENES)] + [ODD_GENE]
ACTIVE = {0: (1.0, [1, 2, 3]), 1: (-0.8, [0, 1]), 2: (0.6, [3]), 3: (-1.2, [2, 3]), N_GENES - 1: (0.9, [0, 1, 2, 3])}
#: Mean P(MES) of each day's cells: the baselines of the probability-scale effects.
BASELINE_MES = (0.2, 0.25, 0.3, 0.35)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _daywise(names: pd.DataFrame, truth: np.ndarray, se: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    betahat = truth + se * rng.standard_normal(truth.shape)
    cols = {f"betahat_{d}": betahat[:, j] for j, d in enumerate(DAYS)} | {f"se_{d}": se[:, j] for j, d in enumerate(DAYS)}
    return pd.concat([names.reset_index(drop=True), pd.DataFrame(cols)], axis=1)


def _mash_like(table: pd.DataFrame, shrink: float) -> pd.DataFrame:
    """A mash-shaped table: shrunken means, normal lfsr (exactly 0 for huge effects, as mash gives)."""
    out = table.copy()
    b = table[[f"betahat_{d}" for d in DAYS]].to_numpy()
    s = table[[f"se_{d}" for d in DAYS]].to_numpy()
    z = np.abs(b / s)
    mean = np.where(z > 2.5, b * shrink, b * 0.05)
    sd = s * shrink
    lfsr = np.where(z > 2.5, norm.cdf(-np.abs(mean) / sd), 0.6)
    lfsr = np.where(z > 30, 0.0, lfsr)
    for j, d in enumerate(DAYS):
        out[f"postmean_{d}"], out[f"postsd_{d}"], out[f"lfsr_{d}"] = mean[:, j], sd[:, j], lfsr[:, j]
    out["lfsr_min"] = lfsr.min(axis=1)
    out["best_day"] = lfsr.argmin(axis=1)
    return out


def _config(out: Path, **extra) -> FatebiasConfig:
    return make_config(
        {"out_dir": str(out), "adata_path": str(out.parent / "adata.h5ad"), "guide_map_csv": str(out.parent / "guide_map.csv"),
         "known_regulators": {"G01": 1, "G02": 1}, "num_steps": 120, **extra}
    )


def make_run_folder(out: Path) -> FatebiasConfig:
    """A small finished run, its files written by the project's own writers where they exist."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _config(out)
    write_text(cfg.to_yaml(), out / "config_used.yaml")
    summary = LoadSummary(
        source=cfg.adata_path, n_cells_in=1210, n_cells_kept=1200, dropped={"cells with more than Kmax=20 guides": 10},
        guides_per_cell={"mean": 3.1, "median": 3.0, "max": 9.0}, n_guides_matrix=100, n_guides_mapped=90, n_ntc_guides=10,
        unmapped_guides=("X_1",), guides_per_gene={"min": 3.0, "median": 3.0, "max": 3.0},
        fate_names_source="obs['term_states_fwd'] categories (CellRank 2)", cells_per_day=dict.fromkeys(DAYS, 300),
        fate_mean_by_day={d: {"EC": 0.5, "MES": BASELINE_MES[j], "NEU": 0.5 - BASELINE_MES[j]} for j, d in enumerate(DAYS)},
    )
    write_json(summary.to_dict(), out / "load_summary.json")
    loss = np.r_[np.full(30, 1.1), 40 + 5 * np.exp(-np.arange(90) / 20)] + 0.05 * rng.standard_normal(120)
    write_csv(pd.DataFrame({"step": np.arange(1, 121), "loss": loss * 1200}), out / "fit" / "elbo_trace.csv")
    info = {"steps": 120, "runtime_s": 3.2, "ms_per_step": 26.7, "device": "cpu", "n_cells": 1200, "batch_size": 1024,
            "converged": True, "steps_to_convergence": 100, "final_loss_per_cell": 40.1, "likelihood_weight": 41.0,
            "dispersion_final": 0.0244, "posterior_method": "laplace", "laplace_runtime_s": 0.8,
            "laplace_newton_iterations": 4, "laplace_converged": True, "weight_switch_step": 60,
            "weight_update_steps": [30, 60]}
    write_json({"format": 1, "family": "laplace", "fates": cfg.fates, "ref_fate": "EC", "info": info}, out / "fit" / "fit.json")

    truth = np.zeros((N_GENES, len(DAYS)))
    for g, (effect, days) in ACTIVE.items():
        truth[g, days] = effect
    write_csv(pd.DataFrame({"gene": GENES} | {f"true_{d}": truth[:, j] for j, d in enumerate(DAYS)}), out.parent / "truth_daywise.csv")
    gene_names = pd.DataFrame({"gene": GENES})
    guide_names = pd.DataFrame({
        "guide": [f"{g}_sg{k}" for g in GENES for k in range(1, GUIDES_PER_GENE + 1)],
        "gene": np.repeat(GENES, GUIDES_PER_GENE),
    })
    gene_se = np.full((N_GENES, len(DAYS)), 0.05)
    guide_truth = np.repeat(truth, GUIDES_PER_GENE, axis=0) + 0.05 * rng.standard_normal((len(guide_names), 1))
    gene_table = _daywise(gene_names, truth, gene_se, rng)
    guide_table = _daywise(guide_names, guide_truth, np.full(guide_truth.shape, 0.08), rng)
    write_csv(gene_table, out / "gene_daywise_for_mash.csv")
    write_csv(guide_table, out / "guide_daywise_for_mash.csv")
    for mode, shrink in (("conservative", 0.85), ("enriched", 0.95)):
        write_csv(_mash_like(gene_table, shrink), out / f"mash_gene_{mode}.csv")
        write_csv(_mash_like(guide_table, shrink), out / f"mash_guide_{mode}.csv")
    neu = _daywise(gene_names, np.roll(truth, 5, axis=0), gene_se, rng)
    write_csv(_mash_like(neu, 0.85), out / "mash_gene_conservative_NEU.csv")
    neu_guides = _daywise(guide_names, np.roll(guide_truth, 5 * GUIDES_PER_GENE, axis=0), np.full(guide_truth.shape, 0.08), rng)
    write_csv(_mash_like(neu_guides, 0.85), out / "mash_guide_conservative_NEU.csv")
    rank_and_compare({m: out / f"mash_gene_{m}.csv" for m in ("conservative", "enriched")}, out, cfg)
    # What the rank step writes for every other contrast.
    rank_file(out / "mash_gene_conservative_NEU.csv", out / "hits_ranked_NEU.csv", cfg, source="gene")
    for sfx in ("", "_NEU"):
        write_csv(pd.DataFrame({"gene": GENES, "n_guides": 3, "mean_delta": 1e-17 * rng.standard_normal(N_GENES)}),
                  out / f"qc_delta_mean_by_gene{sfx}.csv")
        write_csv(pd.DataFrame({"gene": GENES} | {f"offset_{d}": 1e-16 * rng.standard_normal(N_GENES) for d in DAYS}),
                  out / f"qc_theta_beta_offset_by_gene{sfx}.csv")

    n = 120
    p = rng.dirichlet(np.ones(3) * 20, n)
    day = np.repeat(np.arange(len(DAYS)), n // len(DAYS))
    scores = score_heldout(p, 0.9 * p + 0.1 / 3, np.full((n, 3), 1 / 3), day, list(DAYS))
    heldout = HeldOutResult(frac=0.1, seed=1, steps=120, n_train=1080, scores=scores, fit_info={})
    perm = PermutationResult(
        seed=2, n_units=310, n_clones=640, n_strata=32, n_cells_moved=1100,
        out_dir=out / "permutation", n_genes=N_GENES, n_hits=0, hit_genes=[], n_gene_days_called=0,
        hits_by_mode={"conservative": 0, "enriched": 1}, n_hits_real=len(ACTIVE), runtime_s=4.0,
        fixed={"sigma_guide": [0.0812, 0.0791], "weight": 50.0},
    )
    z = rng.standard_normal(120)
    ntc_table = pd.DataFrame({
        "half": 0, "pseudo_gene": np.repeat(np.arange(15), 8), "guides": "NTC_1;NTC_2", "fate": "MES",
        "day": np.tile(DAYS, 30)[:120], "estimate": 0.05 * z, "sd": 0.05, "z": z, "sd_model": 0.05 / 1.6,
        "z_model": 1.6 * z, "df": 40.0,
    })
    ntc = NTCCheck(ntc_table, statistic=float((z**2).sum()), dof=120, p_value=0.5,
                   coverage_90=float(np.mean(np.abs(z) < 1.6449)), n_ntc_guides=10, pseudo_gene_size=3,
                   uncertainty="cluster_robust")
    write_csv(ntc_table, out / "ntc_calibration.csv")
    write_json(ntc.to_dict(), out / "ntc_check.json")
    diag = DiagnosticsResult(heldout, perm, sanity_checks(cfg, out), out / "diagnostics.json", runtime_s=9.0,
                             ntc=ntc.to_dict())
    write_json(diag.to_dict(), out / "diagnostics.json")
    evaluate_files(out / "hits_ranked.csv", out.parent / "truth_daywise.csv", out, truth_thresh=0.2, config=cfg)

    manifest = Manifest.open(out)
    for step, files in (("fit", ["fit/fit.json"]), ("export", ["gene_daywise_for_mash.csv"]), ("mash", ["mash_gene_conservative.csv"]),
                        ("rank", ["hits_ranked.csv", "hits_ranked_NEU.csv"]), ("diagnostics", ["diagnostics.json"])):
        manifest.record(step, "v1", [out / f for f in files], {"converged": True} if step == "fit" else None)
    return cfg


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> tuple[Path, FatebiasConfig]:
    out = tmp_path_factory.mktemp("report") / "results"
    return out, make_run_folder(out)


@pytest.fixture(scope="module")
def report(run_folder):
    out, _ = run_folder
    result = build_report(out)
    return result, result.path.read_text()


def test_report_shows_every_section(report, run_folder):
    result, page = report
    out, _ = run_folder
    assert result.path == out / "report.html"
    for heading in ("1. The run", "2. The fit", "3. The answer", "4. Can we trust it?", "Held-out cross-entropy",
                    "Effects by gene and day: MES vs EC", "Per-day volcano plots: MES vs EC", "Guide concordance of the top hits: MES vs EC",
                    "NEU vs EC", "Effects by gene and day: NEU vs EC", "Per-day volcano plots: NEU vs EC",
                    "Guide concordance of the top hits: NEU vs EC",
                    "QC: guide deviations", "Permutation negative control", "Sanity checks", "mash modes",
                    "recovery of the truth", "Calibration on this data: non-targeting pseudo-genes"):
        assert heading in page, heading
    for part in ("load summary", "steps", "fit", "ELBO trace", "held-out cross-entropy", "hits table", "effect heatmap",
                 "volcano plots", "guide concordance", "hits table (NEU)", "effect heatmap (NEU)", "volcano plots (NEU)",
                 "guide concordance (NEU)", "QC offsets", "permutation control",
                 "sanity checks", "mode comparison", "recovery", "NTC calibration check"):
        assert part in result.sections, part
    # A run folder has no calibration study: the one part that says it is absent.
    assert list(result.absent) == ["calibration"]
    assert "no calibration study in this folder" in page
    # The run's facts.
    assert "1210 in, 1200 kept" in page and "10 cells with more than Kmax=20 guides" in page
    assert "mean 3.1, median 3, max 9" in page
    for version in ("torch", "pyro", "numpy", "python", "fatebias"):
        assert f"<th>{version}</th>" in page
    assert "full model better" in page and "passed: hits collapse" in page
    assert "the Laplace step alone, at the real run&#39;s sigma_guide, weight" in page
    assert "guide sets permuted among 310 units" in page and "1100 cells changed guides" in page
    assert re.search(r"\d+ in \d+ whole clones \(fraction 0\.1,", page)
    # The NTC check: its verdict, both SDs and the QQ plot.
    table = pd.read_csv(out / "ntc_calibration.csv")
    z_sd = float(np.sqrt(np.mean(table["z"] ** 2)))
    assert "calibrated: NTC pseudo-genes&#39; intervals cover 0 as often as they say" in page and f"{z_sd:.2f}" in page
    assert f"{np.mean(np.abs(table['z_model']) < 1.6449):.1%}" in page
    assert 'alt="NTC QQ plot"' in page


def test_report_lists_the_hits(report, run_folder):
    result, page = report
    out, cfg = run_folder
    hits = pd.read_csv(out / "hits_ranked.csv", dtype={"gene": str})
    hit_genes = hits.loc[hits["hit_anyday"], "gene"].tolist()
    assert len(hit_genes) >= 4
    table = page[page.index("id='hits-table-MES'"):]
    table = table[: table.index("</table>")]
    assert table.count('<tr class="hit"') == len(hit_genes)
    assert table.count("<tr class=") == N_GENES
    for gene in hit_genes:
        assert f"<td>{escape(gene)}</td>" in table
    # The strangely named gene is escaped everywhere, never written raw.
    assert ODD_GENE not in page and "G&lt;b&gt;&amp;&#34;30" in page
    # G01 is active on d1-d3 (positive): its called days read as labels.
    g01 = table[table.index("<td>G01</td>"):]
    assert g01[: g01.index("</tr>")].count("d1, d2, d3") == 1
    assert "table class='grid sortable hits'" in page and "addEventListener('click'" in page


def test_report_is_self_contained_and_small(report):
    result, page = report
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # ELBO, QC, NTC QQ, modes, recovery, and per contrast (MES, NEU): heatmap, volcano, concordance
    assert len(images) == result.n_figures == 11
    assert all(len(b) > 1000 for b in images)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, flags=re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    assert result.size_bytes == result.path.stat().st_size < 5 * 1024 * 1024
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_absent_inputs_are_said_not_fatal(run_folder, tmp_path):
    src, _ = run_folder
    out = tmp_path / "results"
    shutil.copytree(src, out)
    for name in ("diagnostics.json", "daywise_confusion.csv", "pred_call_summary.json", "mash_guide_conservative.csv",
                 "mash_mode_comparison.csv", "fit/elbo_trace.csv"):
        (out / name).unlink()
    (out / "load_summary.json").write_text("{not json")
    result = build_report(out)
    page = result.path.read_text()
    assert {"held-out cross-entropy", "permutation control", "sanity checks", "recovery", "guide concordance",
            "mode comparison", "ELBO trace", "load summary"} <= set(result.absent)
    assert "diagnostics.json not found" in page
    assert "mash_guide_conservative.csv not found" in page
    assert "load_summary.json could not be read" in page
    assert "hits table" in result.sections and "effect heatmap" in result.sections


def test_diagnostics_off_and_no_hits_table(run_folder, tmp_path):
    src, cfg = run_folder
    out = tmp_path / "results"
    out.mkdir()
    shutil.copy(src / "config_used.yaml", out)
    result = report_step(cfg.model_copy(update={"run_diagnostics": False}), out)
    page = result.path.read_text()
    assert "diagnostics were not run (run_diagnostics: false)" in page
    assert "hits_ranked.csv not found" in page
    assert result.n_figures == 0


def test_ash_discovery_takes_daywise_effects_from_mash(run_folder, tmp_path):
    src, _ = run_folder
    out = tmp_path / "results"
    shutil.copytree(src, out)
    mash = pd.read_csv(src / "mash_gene_conservative.csv", dtype={"gene": str})
    mean, sd = mash[[f"postmean_{d}" for d in DAYS]].mean(axis=1), mash[[f"postsd_{d}" for d in DAYS]].mean(axis=1) / 2
    lfsr = norm.cdf(-np.abs(mean) / sd)
    ash = pd.DataFrame({"gene": mash["gene"], "betahat": mean, "sebetahat": sd, "postmean": mean, "postsd": sd, "lfsr": lfsr, "qvalue": lfsr})
    cfg = _config(out, discovery_source="ash")
    write_csv(rank_hits(ash, cfg, source="ash"), out / "hits_ranked.csv")
    result = build_report(out, cfg)
    page = result.path.read_text()
    assert "hits from the across-day ash summary" in page
    assert {"hits table", "effect heatmap", "volcano plots"} <= set(result.sections)


def test_calibration_curves_when_present(run_folder, tmp_path):
    from fatebias_core.studies.calibration import LEVELS, LFSR_THRESHOLDS, summarise_calibration

    src, _ = run_folder
    out = tmp_path / "results"
    shutil.copytree(src, out)
    rows = []
    for scenario in ("baseline", "noisy"):
        for seed in (0, 1):
            for method in ("meanfield", "laplace"):
                base = {"scenario": scenario, "seed": seed, "method": method, "n": 100, "runtime_s": 1.0}
                rows += [{**base, "source": "model", "metric": "coverage", "group": group, "level": lev, "value": lev - 0.03 * seed}
                         for group in ("all", "effects", "nulls") for lev in LEVELS]
                rows += [{**base, "source": "mash:se_inflated:conservative", "metric": "fsr", "group": "calls", "level": lev,
                          "value": lev / 2} for lev in LFSR_THRESHOLDS]
    write_csv(summarise_calibration(pd.DataFrame(rows)), out / "calibration_summary.csv")
    result = build_report(out)
    assert "calibration" in result.sections and "calibration" not in result.absent
    assert result.n_figures == 13
    assert "Coverage of the credible intervals" in result.path.read_text()


def test_cli_report(run_folder, tmp_path, capsys):
    out, _ = run_folder
    assert main(["report", "--out", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["report", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a fatebias run folder" in err[0]
    assert not (tmp_path / "report.html").exists()
    with pytest.raises(InputDataError, match="is not a folder"):
        build_report(tmp_path / "missing")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    result, _ = report
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_screenshot.png"
    shot.unlink(missing_ok=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2400",
           result.path.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    # Not a blank page: text, tables and figures give many distinct shades.
    assert pixels.std() > 0.05
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]).round(2), axis=0)) > 50


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_hits_table_sorts_and_filters_in_chromium(report, tmp_path):
    """Click a header twice (descending) and untick "hits only" in the browser; read back the DOM."""
    result, page = report
    click = """<script>
    var th = document.querySelectorAll('#hits-table-MES th')[10]; th.click(); th.click();
    var box = document.querySelector('input.hits-only[data-table="hits-table-MES"]'); box.checked = false; box.dispatchEvent(new Event('change'));
    </script></body>"""
    copy = tmp_path / "clicked.html"
    copy.write_text(page.replace("</body>", click))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
           copy.as_uri()]
    dom = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout
    table = dom[dom.index('id="hits-table-MES"'):]
    rows = re.findall(r'<tr class="(?:hit|nohit)"([^>]*)>(.*?)</tr>', table[: table.index("</table>")])
    assert len(rows) == N_GENES and not any("hidden" in attrs for attrs, _ in rows)
    # data-v of rank, hit, best day, effect, 90% CI, probability change, lfsr, max |effect| (gene, day list and
    # direction cells have none)
    biggest = [float(re.findall(r'data-v="([^"]*)"', cells)[7]) for _, cells in rows]
    assert biggest == sorted(biggest, reverse=True)


def test_hit_table_gives_direction_interval_and_probability(report, run_folder):
    """The hit table: direction in words, the 90% credible interval, the change in P(MES) at the day's baseline."""
    from fatebias_core.discovery.answer import shifted_probability

    _, page = report
    out, _ = run_folder
    table = page[page.index("id='hits-table-MES'"):]
    table = table[: table.index("</table>")]
    for header in ("direction", "90% CI (logit)", "change in P(MES) at the day&#39;s baseline"):
        assert f"<th>{header}</th>" in table, header
    mash = pd.read_csv(out / "mash_gene_conservative.csv", dtype={"gene": str}).set_index("gene")
    # G02 is active on d0 and d1 with a negative effect: it moves cells towards EC.
    row = table[table.index("<td>G02</td>"):]
    row = row[: row.index("</tr>")]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    best = cells[3]
    j = DAYS.index(best)
    m, sd = mash.loc["G02", f"postmean_{best}"], mash.loc["G02", f"postsd_{best}"]
    assert cells[4] == "towards EC" and m < 0
    assert cells[6] == f"[{m - 1.645 * sd:+.2f}, {m + 1.645 * sd:+.2f}]"
    p1 = float(shifted_probability(BASELINE_MES[j], m))
    assert cells[7].startswith(f"{p1 - BASELINE_MES[j]:+.3f}<small>{BASELINE_MES[j]:.2f} &rarr; {p1:.2f}, 90% CI [")
    # Positive effects read "towards MES"; lfsr that underflows is a bound, never 0.
    assert "<td>towards MES</td>" in table
    assert "<small>0</small>" not in page and ">0</td>" not in table


def test_underflowed_lfsr_reads_as_a_bound(run_folder, tmp_path):
    out, _ = run_folder
    copy = tmp_path / "results"
    shutil.copytree(out, copy)
    hits = pd.read_csv(copy / "hits_ranked.csv", dtype={"gene": str, "active_days": str, "active_days_any": str})
    hits.loc[0, [f"lfsr_{d}" for d in DAYS]] = 0.0
    write_csv(hits, copy / "hits_ranked.csv")
    page = build_report(copy).path.read_text()
    table = page[page.index("id='hits-table-MES'"):]
    row = table[table.index('<tr class="hit"'):]
    row = row[: row.index("</tr>")]
    assert row.count("&lt; 1e-300") == 1 + len(DAYS)  # best day and every day
    assert "<small>0</small>" not in row


def test_loss_figure_marks_every_weight_change(report):
    from fatebias_core.report.context import weight_steps

    _, page = report
    assert "re-estimated once more, at steps 31 and 61 (dashed lines)" in page
    # Older fits recorded only the last change: the earlier one is derived from the settings.
    cfg = make_config()
    assert weight_steps({"steps": 4000, "weight_switch_step": 2000}, cfg) == [1000, 2000]
    assert weight_steps({"steps": 4000}, cfg) == []


def test_volcano_labels_never_overlap():
    """Hits piled at one spot (the old cap) get labels that do not overlap."""
    import matplotlib.pyplot as plt

    from fatebias_core.report.plots import place_labels, volcano_height

    fig, ax = plt.subplots(figsize=(3, 3))
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(0, 320)
    fig.canvas.draw()
    xs = np.r_[np.full(6, 1.0), np.full(4, -1.0)]
    ys = np.full(10, 300.0)
    labels = place_labels(ax, xs, ys, [f"GENE{i}" for i in range(10)])
    renderer = fig.canvas.get_renderer()
    # The text of each label where it was placed (an annotation's own extent includes its leader line).
    boxes = [ax.text(*t.xyann, t.get_text(), fontsize=t.get_fontsize(), ha=t.get_ha(), va=t.get_va()).get_window_extent(renderer)
             for t in labels]
    for i in range(len(boxes)):
        for k in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[k]), (labels[i].get_text(), labels[k].get_text())
    plt.close(fig)
    # Underflowed lfsr is placed by the normal approximation: strong hits stay apart, no cap.
    y = volcano_height(np.array([0.0, 0.0, 1e-12]), np.array([1.0, 2.0, 0.5]), np.array([0.05, 0.05, 0.07]))
    assert y[0] == pytest.approx(300.0) and y[1] > 340 and y[2] == pytest.approx(12.0)


def test_dropped_cells_are_counted_and_named(run_folder, tmp_path):
    """Cells dropped at load (drop_invalid_cells) show in the report by reason, and by name."""
    out, _ = run_folder
    copy = tmp_path / "results"
    shutil.copytree(out, copy)
    load = __import__("json").loads((copy / "load_summary.json").read_text())
    load["dropped"] = {"cells with more than Kmax=20 guides": 10, "cells with fate probabilities NaN or infinite": 3}
    write_json(load, copy / "load_summary.json")
    write_csv(pd.DataFrame({"cell": ["c1", "c4", "c7"] + [f"k{i}" for i in range(10)],
                            "reason": ["fate probabilities NaN or infinite"] * 3 + ["more than Kmax=20 guides"] * 10}),
              copy / "dropped_cells.csv")
    page = build_report(copy).path.read_text()
    assert "10 cells with more than Kmax=20 guides; 3 cells with fate probabilities NaN or infinite" in page
    assert "<th>dropped cells (dropped_cells.csv)</th><td>13: c1 (fate probabilities NaN or infinite), c4" in page
    assert "(+5 more)" in page


# --------------------------------------------------------------------------- templates, reading, escaping
RANKED_DTYPES = {"gene": str, "active_days": str, "active_days_any": str}


def _table_rows(page: str, fate: str) -> list[list[str]]:
    """The cells of every row of a contrast's hits table, as the page has them."""
    table = page[page.index(f"id='hits-table-{fate}'"):]
    table = table[: table.index("</table>")]
    rows = re.findall(r'<tr class="(?:hit|nohit)"[^>]*>(.*?)</tr>', table)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]


def test_hits_table_is_read_from_the_ranked_files_not_recomputed(run_folder, tmp_path):
    """Edit hits_ranked.csv (and hits_ranked_NEU.csv) by hand after the rank step: the page follows the files."""
    src, _ = run_folder
    out = tmp_path / "results"
    shutil.copytree(src, out)
    hits = pd.read_csv(out / "hits_ranked.csv", dtype=RANKED_DTYPES)
    # Reverse the ranking, make the last-ranked non-hit a hit and drop two rows: no ranking would give this.
    edited = hits.iloc[::-1].reset_index(drop=True).drop(index=[3, 4]).reset_index(drop=True)
    flip = edited.index[~edited["hit_anyday"].astype(bool)][0]
    edited.loc[flip, "hit_anyday"] = True
    write_csv(edited, out / "hits_ranked.csv")
    neu = pd.read_csv(out / "hits_ranked_NEU.csv", dtype=RANKED_DTYPES).iloc[:7]
    write_csv(neu, out / "hits_ranked_NEU.csv")

    page = build_report(out).path.read_text()
    for fate, table in (("MES", edited), ("NEU", neu)):
        rows = _table_rows(page, fate)
        assert [str(escape(g)) for g in table["gene"]] == [r[1] for r in rows], fate
        assert [("yes" if h else "no") for h in table["hit_anyday"].astype(bool)] == [r[2] for r in rows], fate
    assert f"{int(edited['hit_anyday'].sum())} hits of {len(edited)} genes" in page
    assert "7 hits of 7 genes" in page or f"{int(neu['hit_anyday'].sum())} hits of 7 genes" in page


def test_other_contrast_without_its_ranked_file_says_so(run_folder, tmp_path):
    """No hits_ranked_NEU.csv (a folder ranked before the rank step wrote it): the page says so, ranks nothing."""
    src, _ = run_folder
    out = tmp_path / "results"
    shutil.copytree(src, out)
    (out / "hits_ranked_NEU.csv").unlink()
    result = build_report(out)
    page = result.path.read_text()
    assert "hits_ranked_NEU.csv not found: the rank step writes it" in page
    assert "hits (NEU)" in result.absent and "hits table (NEU)" not in result.sections
    assert "hits table" in result.sections


def test_a_script_in_a_gene_name_is_escaped(run_folder, tmp_path):
    """Gene names come from the user's files: a <script> in one is shown as text, never run."""
    src, _ = run_folder
    out = tmp_path / "results"
    shutil.copytree(src, out)
    evil = '<script>alert("x")</script>'
    hits = pd.read_csv(out / "hits_ranked.csv", dtype=RANKED_DTYPES)
    hits.loc[0, "gene"] = evil
    write_csv(hits, out / "hits_ranked.csv")
    page = build_report(out).path.read_text()
    assert evil not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # the page's own script, at the end


def test_page_references_nothing_outside_itself(report):
    """No http(s) URL anywhere, no linked style sheet or script; images are data: URIs."""
    _, page = report
    assert not re.search(r"https?://", page, flags=re.IGNORECASE)
    targets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page, flags=re.IGNORECASE)
    assert targets and all(t.startswith(("data:", "#")) for t in targets), targets
    assert "<link" not in page and "@import" not in page and "<script src" not in page
    assert not re.search(r"url\((?!data:)", page)
    # The style sheet and the script are in the page itself.
    assert "table.sortable th.asc::after" in page and "querySelectorAll('table.sortable')" in page


def test_templates_and_static_files_ship_as_package_data():
    """The templates and static files are found through importlib.resources, and pyproject ships them."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    report = resources.files("fatebias_core.report")
    names = [f"templates/{t.name}" for t in report.joinpath("templates").iterdir() if t.name.endswith(".j2")]
    names += [f"static/{t.name}" for t in report.joinpath("static").iterdir() if t.is_file()]
    assert f"templates/{PAGE_TEMPLATE}" in names and "static/report.css" in names and "static/report.js" in names
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["fatebias_core"]
    for name in names:
        assert any(fnmatch.fnmatch(f"report/{name}", p) for p in patterns), name
    assert any(dep.startswith("jinja2") for dep in pyproject["project"]["dependencies"])
    env = environment()
    assert env.autoescape(PAGE_TEMPLATE) is True
    for name in names:
        if name.startswith("templates/"):
            env.get_template(name.removeprefix("templates/"))  # parses


def test_a_wheel_ships_the_templates(tmp_path):
    """A non-editable install (a wheel built from the package) renders the page's templates and static files."""
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for package in ("fatebias_core", "fatebias_dagster"):
        shutil.copytree(root / package, src / package, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("fatebias-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert f"fatebias_core/report/templates/{PAGE_TEMPLATE}" in names and "fatebias_core/report/static/report.js" in names
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    check = ("import fatebias_core.report.render as r; assert r.__file__.startswith(%r), r.__file__; "
             "env = r.environment(); [env.get_template(t) for t in env.list_templates()]; "
             "s = r.read_static(); assert 'table.sortable' in s.css and 'addEventListener' in s.js; print(len(env.list_templates()))")
    proc = subprocess.run([sys.executable, "-c", check % str(target)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 8
