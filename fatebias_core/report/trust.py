"""Section 4 of the report, can we trust it: QC identities, NTC calibration, the permutation
control, known regulators, mash modes, and for simulations and studies recovery and calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fatebias_core.io import layout as names
from fatebias_core.report.folder import PageLog, RunFolder, diagnostics_part
from fatebias_core.report.parts import (
    FIG_DPI,
    Absent,
    Badge,
    Figure,
    KeyValues,
    Table,
    num,
    p_text,
    score,
    signed,
)
from fatebias_core.report.plots import (
    plot_calibration_coverage,
    plot_calibration_fsr,
    plot_mode_comparison,
    plot_ntc_qq,
    plot_qc_offsets,
    plot_recovery,
)

QC_DELTA = "mean guide deviation per gene"
QC_OFFSET = "theta - mean beta per gene and day"


@dataclass
class QCPart:
    """The two identities that hold by construction, against their tolerance."""

    tol: str
    figure: Figure
    table: Table


@dataclass
class NTCPart:
    """NTC pseudo-genes tested like genes: the QQ plot (when the table is there) and the verdict."""

    figure: Figure | None
    summary: KeyValues


@dataclass
class SanityPart:
    """Known regulators against the gene posterior."""

    source: str
    lfsr_from: str
    lfsr_thresh: str
    table: Table
    note: str | None


@dataclass
class ModesPart:
    """The two mash modes compared."""

    default_mode: str
    figure: Figure
    table: Table


@dataclass
class RecoveryPart:
    """A simulation scored against its truth."""

    truth_thresh: str
    n_gene_days: str
    n_genes: str
    figure: Figure
    table: Table


@dataclass
class TrustSection:
    """Section 4: each check, or why it is absent."""

    qc: QCPart | Absent
    ntc: NTCPart | Absent
    permutation: KeyValues | Absent
    sanity: SanityPart | Absent
    modes: ModesPart | Absent
    recovery: RecoveryPart | Absent
    calibration: list[Figure] | Absent


def trust_section(run: RunFolder, page: PageLog) -> TrustSection:
    """Section 4, in page order."""
    return TrustSection(
        qc=qc_part(run, page), ntc=ntc_part(run, page), permutation=permutation_part(run, page),
        sanity=sanity_part(run, page), modes=modes_part(run, page), recovery=recovery_part(run, page),
        calibration=calibration_part(run, page),
    )


def qc_part(run: RunFolder, page: PageLog) -> QCPart | Absent:
    """Guide deviations and theta-beta offsets of every contrast (``qc_*.csv``), records "QC offsets"."""
    cfg = run.config
    tol = cfg.qc_offset_tol
    values: dict[str, list[np.ndarray]] = {QC_DELTA: [], QC_OFFSET: []}
    rows, missing = [], []
    for fate in cfg.contrast_fates:
        sfx = cfg.file_suffix(fate)
        for key, name, cols in ((QC_DELTA, names.EXPORT_FILES["qc_delta"].format(sfx=sfx), ["mean_delta"]),
                                (QC_OFFSET, names.EXPORT_FILES["qc_offset"].format(sfx=sfx), None)):
            df = run.csv(name, cols or [])
            if df is None:
                missing.append(run.why_absent(name, f"{name} not found"))
                continue
            v = df[cols or [c for c in df.columns if str(c).startswith("offset_")]].to_numpy(dtype=float)
            values[key].append(v.ravel())
            worst = float(np.nanmax(np.abs(v))) if v.size else float("nan")
            rows.append((name, v.size, num(worst, ".2g"), int((np.abs(v) > tol).sum()),
                         Badge(bool(worst <= tol), "within tolerance" if worst <= tol else "above tolerance")))
    if not rows:
        return page.missing("QC offsets", "; ".join(missing) or "no QC files")
    page.shown("QC offsets")
    data = {k: np.concatenate(v) for k, v in values.items() if v}
    figure = page.figure(lambda p: plot_qc_offsets(data, tol, p, dpi=FIG_DPI), "QC offsets")
    return QCPart(f"{tol:g}", figure, Table(["file", "values", "max |value|", "above tolerance", ""], rows))


def ntc_part(run: RunFolder, page: PageLog) -> NTCPart | Absent:
    """The NTC check (``ntc_check.json``, made before ranking) and the QQ plot of ``ntc_calibration.csv``."""
    label = "NTC calibration check"
    n = run.json(names.NTC_CHECK)
    if n is None:
        why = ("the check is off (ntc_check: false)" if not run.config.ntc_check
               else run.why_absent(names.NTC_CHECK, f"{names.NTC_CHECK} not found (fewer than four NTC guides, or not a Laplace fit)"))
        return page.missing(label, why)
    page.shown(label)
    table = run.csv(names.NTC_TABLE, ["z", "z_model"])
    ok = n.get("calibrated")
    summary = KeyValues([
        ("verdict", Badge(None if ok is None else bool(ok),
                          "calibrated: NTC pseudo-genes' intervals cover 0 as often as they say" if ok
                          else "NOT calibrated: the intervals are too narrow for these data and are not trusted")),
        ("90% intervals covering 0 (the run's, as exported)", f"{num(n.get('coverage_90'), '.1%')} (nominal 90%)"),
        ("90% intervals covering 0, model-based covariance", f"{num(n.get('coverage_90_model'), '.1%')}"),
        ("SD of z (the run's intervals)", f"{num(n.get('z_sd'), '.2f')} (expected at most 1)"),
        ("test", f"sum of z^2 {num(n.get('statistic'), '.1f')}, scaled chi-square on {n.get('dof')} df, p {num(n.get('p_value'), '.2g')} "
                            f"(fails below {n.get('alpha')})"),
        ("pseudo-genes", f"{n.get('n_pseudo_genes')} of {n.get('pseudo_gene_size')} NTC guides each, fitted as genes "
                         f"(from {n.get('n_ntc_guides')} NTC guides; half of them the baseline, then the other half), "
                         f"{n.get('n')} pseudo-gene/days x contrasts"),
    ])
    figure = None if table is None else page.figure(
        lambda p: plot_ntc_qq(table, p, dpi=FIG_DPI), "NTC QQ plot",
        "NTC pseudo-gene z-scores against N(0, 1) quantiles (dashed: calibrated).")
    return NTCPart(figure, summary)


def permutation_part(run: RunFolder, page: PageLog) -> KeyValues | Absent:
    """The permutation negative control of ``diagnostics.json``."""
    p = diagnostics_part(run, page, "permutation", "permutation control")
    if isinstance(p, Absent):
        return p
    passed = p.get("passed")
    real = p.get("n_hits_real")
    by_mode = ", ".join(f"{m}: {n}" for m, n in (p.get("hits_by_mode") or {}).items())
    hit_genes = p.get("hit_genes") or []
    return KeyValues([
        ("hits, real data", "–" if real is None else real),
        ("hits, guides permuted", f"{p.get('n_hits')} of {p.get('n_genes')} genes ({p.get('n_gene_days_called')} gene-days called)"),
        ("hits by mash mode (permuted)", by_mode or "–"),
        ("allowed (5% of real hits, at least 1)", p.get("allowed_hits", "–")),
        ("verdict", Badge(None if passed is None else bool(passed), "passed: hits collapse" if passed else "FAILED: hits survive permutation")),
        ("permuted hits", ", ".join(hit_genes[:30]) + (" ..." if len(hit_genes) > 30 else "") or "none"),
        ("permutation", f"guide sets permuted among {p.get('n_units')} units (cells linked by shared guides far more "
                        f"loosely than the run's {p.get('n_clones')} clones, so a split clone stays one unit) within "
                        f"{p.get('n_strata')} replicate x burden strata; {p.get('n_cells_moved')} cells changed guides, "
                        f"seed {p.get('seed')}"),
        ("fit of the permuted data", _permuted_fit(p)),
    ])


def _permuted_fit(p: dict) -> str:
    """How the permuted data were fitted, in words."""
    fixed = p.get("fixed") or {}
    if not fixed:
        return "its own empirical Bayes fit"
    return "the Laplace step alone, at the real run's " + ", ".join(sorted(fixed))


def sanity_part(run: RunFolder, page: PageLog) -> SanityPart | Absent:
    """The known-regulator checks of ``diagnostics.json`` (absent when none are configured)."""
    s = diagnostics_part(run, page, "sanity", "sanity checks")
    if isinstance(s, Absent):
        return s
    checks = s.get("checks") or []
    if not checks:
        page.sections.remove("sanity checks")
        return page.missing("sanity checks", s.get("note") or "no known_regulators configured")
    rows = []
    for c in checks:
        best = c.get("best_day")
        mean = (c.get("postmean") or {}).get(best) if best else None
        rows.append((c.get("gene"), f"{c.get('expected_sign'):+d}", Badge(bool(c.get("passed")), c.get("status", "–")),
                     best or "–", p_text(c.get("min_lfsr")), "–" if mean is None else signed(mean),
                     ", ".join(c.get("significant_days") or []) or "–"))
    table = Table(["gene", "expected sign", "status", "best day", "lfsr", "effect", "significant days"], rows)
    return SanityPart(str(s.get("source")), str(s.get("lfsr_from")), str(s.get("lfsr_thresh")), table, s.get("note") or None)


def modes_part(run: RunFolder, page: PageLog) -> ModesPart | Absent:
    """The conservative and enriched mash modes compared (``mash_mode_comparison.csv``)."""
    cmp_ = run.csv(names.MODE_COMPARISON, ["mode", "n_rows", "n_hits", "n_shared_hits", "jaccard_hits"])
    if cmp_ is None or cmp_.empty:
        return page.missing("mode comparison", run.why_absent(names.MODE_COMPARISON, f"{names.MODE_COMPARISON} not found"))
    page.shown("mode comparison")
    rows = [
        (r["mode"], r["n_rows"], r["n_hits"], score(r.get("median_score")), num(r.get("median_n_active_days"), ".2g"),
         num(r.get("n_shared_hits"), ".0f"), num(r.get("jaccard_hits"), ".2f"),
         f"{num(r.get('top_overlap'), '.0f')} of {num(r.get('top_n'), '.0f')}")
        for r in cmp_.to_dict("records")
    ]
    figure = page.figure(lambda p: plot_mode_comparison(cmp_, p, dpi=FIG_DPI), "mode comparison")
    header = ["mode", "genes", "hits", "median -log10 lfsr", "median called days", "shared hits", "Jaccard", "top-N overlap"]
    return ModesPart(run.config.mash_default_mode, figure, Table(header, rows))


def recovery_part(run: RunFolder, page: PageLog) -> RecoveryPart | Absent:
    """A simulation's calls scored against its truth (``daywise_confusion.csv``)."""
    conf = run.csv(names.DAYWISE_CONFUSION, ["level", "tp", "fp", "fn", "tn", "precision", "recall", "f1", "fpr"])
    if conf is None or conf.empty:
        return page.missing("recovery", run.why_absent(
            names.DAYWISE_CONFUSION, "no daywise_confusion.csv: not a simulation scored against its truth (fatebias demo, or fatebias evaluate, writes it)"))
    page.shown("recovery")
    summary = run.json(names.CALL_SUMMARY) or {}
    counts = summary.get("counts") or {}
    figure = page.figure(lambda p: plot_recovery(conf, p, dpi=FIG_DPI), "recovery of the truth")
    rows = [(r["level"], r["tp"], r["fp"], r["fn"], r["tn"], num(r["precision"], ".3f"), num(r["recall"], ".3f"),
             num(r["f1"], ".3f"), num(r["fpr"], ".3f")) for r in conf.to_dict("records")]
    return RecoveryPart(
        truth_thresh=str(summary.get("truth_thresh", "–")), n_gene_days=str(counts.get("n_true_active_gene_days", "–")),
        n_genes=str(counts.get("n_true_active_genes", "–")), figure=figure,
        table=Table(["level", "TP", "FP", "FN", "TN", "precision", "recall", "F1", "FPR"], rows),
    )


def calibration_part(run: RunFolder, page: PageLog) -> list[Figure] | Absent:
    """Coverage and false-sign-rate curves of a calibration study (``calibration_summary.csv``)."""
    summ = run.csv(names.CALIBRATION_SUMMARY, ["metric", "source", "group", "method", "scenario", "level", "value"])
    if summ is None or summ.empty:
        return page.missing("calibration", run.why_absent(
            names.CALIBRATION_SUMMARY, "no calibration study in this folder (fatebias calibrate --out DIR runs one)"))
    page.shown("calibration")
    out = []
    if (summ["metric"] == "coverage").any():
        out.append(page.figure(lambda p: plot_calibration_coverage(summ, p), "interval coverage",
                               "Coverage of the credible intervals against their nominal level (dashed: perfect)."))
    if (summ["metric"] == "fsr").any():
        out.append(page.figure(lambda p: plot_calibration_fsr(summ, p), "false sign rate",
                               "Realised false sign rate of lfsr calls against the threshold (dashed: the threshold)."))
    return out
