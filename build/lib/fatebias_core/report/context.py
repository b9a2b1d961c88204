"""The context of the report's page: the run folder's files read into plain data.

:func:`build_context` reads everything the page shows (nothing is computed that the
run folder does not hold: the hits come from the ranked files) and returns a
:class:`ReportContext` for the templates. This module builds the cards at the top, the
run and the fit; :mod:`~fatebias_core.report.contrasts` the answer and
:mod:`~fatebias_core.report.trust` the checks.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from fatebias_core import __version__
from fatebias_core.config import FatebiasConfig
from fatebias_core.discovery.answer import ContrastAnswer
from fatebias_core.io import layout as names
from fatebias_core.report.contrasts import HitsSection, hits_section, read_answers
from fatebias_core.report.folder import PageLog, RunFolder, diagnostics_part
from fatebias_core.report.parts import (
    Absent,
    Badge,
    Figure,
    KeyValues,
    Table,
    count_and_names,
    num,
    setting,
)
from fatebias_core.report.plots import plot_elbo
from fatebias_core.report.trust import TrustSection, trust_section
from fatebias_core.types import guide_input_lines

#: Settings shown in the run section (all are in the collapsed config_used.yaml).
KEY_SETTINGS = (
    "fates", "ref_fate", "contrast_fate", "Kmax", "num_steps", "batch_size", "seed", "posterior_method",
    "likelihood_weight", "num_posterior_draws", "mash_backend", "mash_default_mode", "discovery_source",
    "mash_lfsr_thresh_day", "effect_size_eps", "effect_prob_large_min", "mash_anyday_correction",
    "mash_lfsr_thresh_anyday", "min_active_days_for_hit_anyday", "run_diagnostics", "drop_invalid_cells",
)


@dataclass
class Card:
    """A headline at the top of the page; ``ok`` colours its edge."""

    title: str
    value: str
    sub: str = ""
    ok: bool | None = None

    @property
    def cls(self) -> str:
        """The CSS classes of the card."""
        return "card" if self.ok is None else "card ok" if self.ok else "card bad"


@dataclass
class RunSection:
    """Section 1: inputs, cells and guides, settings, software, steps and runtime."""

    facts: KeyValues
    load: KeyValues | Absent
    settings: tuple[KeyValues, KeyValues]
    software: KeyValues
    config_text: str
    steps: Table | Absent
    seconds: str | None


@dataclass
class HeldOut:
    """The held-out cross-entropy check: its summary and the per-day table."""

    summary: KeyValues
    per_day: Table


@dataclass
class FitSection:
    """Section 2: the fit's facts, the loss trace and the held-out check."""

    summary: KeyValues | Absent
    elbo: Figure | Absent
    heldout: HeldOut | Absent


@dataclass
class ReportContext:
    """Everything the page shows, as the templates read it."""

    title: str
    folder: str
    stamp: str
    version: str
    cards: list[Card]
    alerts: list[str]
    run: RunSection
    fit: FitSection
    hits: HitsSection
    trust: TrustSection


def software_versions() -> dict[str, str]:
    """Versions of fatebias, Python and the numerical stack in the running environment."""
    out = {"fatebias": __version__, "python": platform.python_version()}
    for label, dist in (("torch", "torch"), ("pyro", "pyro-ppl"), ("numpy", "numpy"), ("pandas", "pandas"), ("matplotlib", "matplotlib")):
        try:
            out[label] = version(dist)
        except PackageNotFoundError:
            out[label] = "not installed"
    return out


def build_context(run: RunFolder, page: PageLog) -> ReportContext:
    """Read the run folder into the page's context (figures are drawn and embedded on the way).

    Parameters
    ----------
    run
        The run folder and its settings.
    page
        Records the parts shown and absent, and embeds the figures.

    Returns
    -------
    ReportContext
        The page's content, section by section.
    """
    cfg = run.config
    fit_info = (run.json(names.FIT_META_FILE) or {}).get("info") or {}
    answers = read_answers(run)
    cards = glance_cards(run, answers, fit_info)
    return ReportContext(
        title=f"fatebias report: {cfg.contrast_fate} vs {cfg.ref_fate}",
        folder=str(run.out.resolve()),
        stamp=time.strftime("%Y-%m-%d %H:%M"),
        version=__version__,
        cards=cards,
        alerts=alerts(run),
        run=run_section(run, page, fit_info),
        fit=fit_section(run, page, fit_info),
        hits=hits_section(run, page, answers),
        trust=trust_section(run, page),
    )


# --------------------------------------------------------------------------- cards
def alerts(run: RunFolder) -> list[str]:
    """The page's headline warnings: checks that say the results are not to be trusted."""
    out = []
    n = run.json(names.NTC_CHECK)
    if n is not None and n.get("calibrated") is False:
        out.append(
            f"The intervals are not trusted: in the NTC check, the 90% intervals of non-targeting pseudo-genes fitted "
            f"as genes covered 0 in {num(n.get('coverage_90'), '.1%')} of {n.get('n')} pseudo-gene/days (p "
            f"{num(n.get('p_value'), '.2g')}), so real genes' intervals are likely too narrow too and the hits may "
            "include false ones. Clones the analysis did not find are the usual cause: give lineage barcodes "
            "(clone_key) if the experiment has them."
        )
    p = (run.json(names.DIAGNOSTICS) or {}).get("permutation")
    if p and p.get("passed") is False:
        out.append(f"The permutation control failed: {p.get('n_hits')} hits survived reassigning guides to genes at random.")
    return out


def glance_cards(run: RunFolder, answers: dict[str, ContrastAnswer | None], fit_info: dict) -> list[Card]:
    """The headlines: hits per contrast, cells, fit, and the checks that ran."""
    cards = []
    for fate, ans in answers.items():
        title = f"hits: {fate} vs {run.config.ref_fate}"
        if ans is None:
            cards.append(Card(title, "–", "no hits table"))
            continue
        top = ", ".join(str(g) for g in ans.genes[ans.hit][:6]) + (" ..." if ans.n_hits > 6 else "")
        cards.append(Card(title, f"{ans.n_hits} of {len(ans.genes)} genes", top or "no gene passes the calls"))
    load = run.json(names.LOAD_SUMMARY) or {}
    if load:
        cards.append(Card("cells", f"{load.get('n_cells_kept')} kept",
                          f"of {load.get('n_cells_in')}; {len(load.get('cells_per_day') or {})} days"))
    if fit_info:
        how = (f"{fit_info.get('laplace_eb_updates')} empirical Bayes updates, {fit_info.get('posterior_method', '')} posterior"
               if fit_info.get("laplace_eb_updates") is not None and not fit_info.get("steps")
               else f"{fit_info.get('steps')} steps, {fit_info.get('posterior_method', '')} posterior")
        cards.append(Card("fit", "converged" if fit_info.get("converged") else "not converged", how,
                          bool(fit_info.get("converged"))))
    return cards + _check_cards(run)


def _check_cards(run: RunFolder) -> list[Card]:
    """Cards of the diagnostics that ran and of a simulation's recovery."""
    diag = run.json(names.DIAGNOSTICS) or {}
    cards = []
    if h := diag.get("heldout"):
        cards.append(Card("held-out fit", "full model better" if h.get("full_better") else "full model not better",
                          f"z = {num(h.get('difference_z'), '.1f')}", bool(h.get("full_better"))))
    if n := (run.json(names.NTC_CHECK) or diag.get("ntc_calibration")):
        cards.append(Card("NTC check", "intervals trusted" if n.get("calibrated") else "intervals NOT trusted",
                          f"90% intervals of NTC pseudo-genes cover 0 in {num(n.get('coverage_90'), '.1%')} "
                          f"(nominal 90%), p {num(n.get('p_value'), '.2g')}", bool(n.get("calibrated"))))
    if p := diag.get("permutation"):
        cards.append(Card("negative control", "passed" if p.get("passed") else "FAILED",
                          f"{p.get('n_hits')} hits after permutation", bool(p.get("passed"))))
    if summary := run.json(names.CALL_SUMMARY):
        scores = (summary.get("scores") or {}).get("anyday") or {}
        cards.append(Card("recovery (simulation)", f"F1 {num(scores.get('f1'), '.2f')}",
                          f"precision {num(scores.get('precision'), '.2f')}, recall {num(scores.get('recall'), '.2f')} (any day)"))
    return cards


# --------------------------------------------------------------------------- 1. the run
def run_section(run: RunFolder, page: PageLog, fit_info: dict) -> RunSection:
    """Section 1 (records "load summary", "steps" and "run")."""
    cfg = run.config
    facts = KeyValues([
        ("run folder", str(run.out.resolve())),
        ("AnnData", cfg.adata_path or "–"),
        ("guide map", cfg.guide_map_csv or "–"),
        ("contrast", f"{cfg.contrast_fate} vs {cfg.ref_fate} (fates {', '.join(cfg.fates)})"),
    ])
    load = load_facts(run, page)
    tips = {k: FatebiasConfig.model_fields[k].description or "" for k in KEY_SETTINGS}
    half = (len(KEY_SETTINGS) + 1) // 2
    settings = (
        KeyValues([(k, setting(getattr(cfg, k))) for k in KEY_SETTINGS[:half]], tips),
        KeyValues([(k, setting(getattr(cfg, k))) for k in KEY_SETTINGS[half:]], tips),
    )
    software = KeyValues([*software_versions().items(), ("device of the fit", fit_info.get("device", "–"))])
    section = RunSection(
        facts=facts, load=load, settings=settings, software=software,
        config_text=run.text(names.CONFIG_USED) or cfg.to_yaml(),
        steps=steps_table(run, page), seconds=runtime_text(run, fit_info),
    )
    page.shown("run")
    return section


def load_facts(run: RunFolder, page: PageLog) -> KeyValues | Absent:
    """Cells and guides from ``load_summary.json`` (records "load summary")."""
    load = run.json(names.LOAD_SUMMARY)
    if load is None:
        return page.missing("load summary", run.why_absent(names.LOAD_SUMMARY, f"{names.LOAD_SUMMARY} not found"))
    page.shown("load summary")
    dropped = {k: v for k, v in (load.get("dropped") or {}).items() if v}
    per_cell = load.get("guides_per_cell") or {}
    per_gene = load.get("guides_per_gene") or {}
    renormalised = f"; {load['n_renormalised']} rows renormalised" if load.get("n_renormalised") else ""
    return KeyValues([
        ("cells", f"{load.get('n_cells_in')} in, {load.get('n_cells_kept')} kept"),
        ("dropped", "; ".join(f"{v} {k}" for k, v in dropped.items()) or "none"),
        *dropped_cells(run),
        ("cells per day", ", ".join(f"{k}: {v}" for k, v in (load.get("cells_per_day") or {}).items())),
        ("guides per cell (NTCs count)", ", ".join(f"{k} {num(v)}" for k, v in per_cell.items())),
        ("guides", f"{load.get('n_guides_matrix')} in the matrix; {load.get('n_guides_mapped')} targeting and "
                   f"{load.get('n_ntc_guides')} non-targeting mapped"),
        ("guides per gene", ", ".join(f"{k} {num(v)}" for k, v in per_gene.items())),
        ("guides not in the map (ignored)", count_and_names(load.get("unmapped_guides") or [])),
        ("map guides absent from the matrix", count_and_names(load.get("map_guides_absent") or [])),
        ("fate names from", load.get("fate_names_source", "–") + renormalised),
        *guide_input_rows(load.get("guide_input") or {}),
    ])


def guide_input_rows(info: dict) -> list[tuple[str, str]]:
    """The guide source, its barcode matching, the assignment and its QC (``load_summary.json``'s ``guide_input``)."""
    rows = []
    for line in guide_input_lines(info):
        label, _, text = line.strip().partition(": ")
        if line.startswith("    "):  # a guide file's matching, under "guides from"
            label, text = "guide file", line.strip()
        rows.append((label, text))
    return rows


def dropped_cells(run: RunFolder, shown: int = 8) -> list[tuple[str, str]]:
    """The row naming dropped cells (``dropped_cells.csv``), when any were dropped."""
    table = run.csv(names.DROPPED_CELLS, ["cell", "reason"], dtype={"cell": str, "reason": str})
    if table is None or table.empty:
        return []
    first = ", ".join(f"{c} ({r})" for c, r in zip(table["cell"][:shown], table["reason"][:shown], strict=True))
    more = f" ... (+{len(table) - shown} more)" if len(table) > shown else ""
    return [(f"dropped cells ({names.DROPPED_CELLS})", f"{len(table)}: {first}{more}")]


def steps_table(run: RunFolder, page: PageLog) -> Table | Absent:
    """The manifest's steps: the version and engine that made each, when it finished, its outputs and metrics (records "steps")."""
    manifest = (run.json(names.MANIFEST) or {}).get("steps")
    if not manifest:
        return page.missing("steps", run.why_absent(
            names.MANIFEST, f"{names.MANIFEST} not found: the steps that made this folder are unknown"))
    page.shown("steps")
    rows = []
    for step, rec in manifest.items():
        metrics = ", ".join(f"{k} {num(v) if isinstance(v, float) else v}" for k, v in (rec.get("metrics") or {}).items())
        rows.append((step, rec.get("version", "–"), rec.get("engine", "local"), rec.get("finished", "–"),
                     len(rec.get("outputs", [])), metrics or "–"))
    return Table(["step", "version", "engine", "finished", "outputs", "metrics"], rows)


def runtime_text(run: RunFolder, fit_info: dict) -> str | None:
    """``Seconds: fit (SVI) 3.2; ...`` of the steps that recorded their runtime."""
    svi = fit_info.get("runtime_s") if fit_info.get("steps") else None
    seconds = {
        "fit (SVI)": svi,
        "Laplace step with empirical Bayes": fit_info.get("laplace_runtime_s"),
        "diagnostics": (run.json(names.DIAGNOSTICS) or {}).get("runtime_s"),
    }
    if all(v is None for v in seconds.values()):
        return None
    return "Seconds: " + "; ".join(f"{k} {num(v, '.1f')}" for k, v in seconds.items() if v is not None) + "."


# --------------------------------------------------------------------------- 2. the fit
def fit_section(run: RunFolder, page: PageLog, fit_info: dict) -> FitSection:
    """Section 2 (records "fit", "ELBO trace", "held-out cross-entropy")."""
    return FitSection(summary=fit_facts(run, page, fit_info), elbo=elbo_figure(run, page, fit_info),
                      heldout=heldout(run, page))


def fit_facts(run: RunFolder, page: PageLog, fit_info: dict) -> KeyValues | Absent:
    """Steps, convergence, loss, likelihood weight and posterior of the fit (``fit/fit.json``)."""
    if not fit_info:
        return page.missing("fit", run.why_absent(names.FIT_META_FILE, f"{names.FIT_META_FILE} not found"))
    page.shown("fit")
    conv = fit_info.get("steps_to_convergence")
    converged = bool(fit_info.get("converged"))
    newton = (f" (Newton converged: {fit_info.get('laplace_converged')}, {fit_info.get('laplace_newton_iterations')} iterations)"
              if "laplace_converged" in fit_info else "")
    rows: list[tuple] = []
    if fit_info.get("steps"):
        rows += [
            ("SVI steps", f"{fit_info.get('steps')} ({num(fit_info.get('ms_per_step'), '.1f')} ms per step, batch "
                          f"{fit_info.get('batch_size')} of {fit_info.get('n_cells')} cells)"),
            ("converged", Badge(converged, f"yes, at step {conv}" if converged else "no: consider more num_steps")),
        ]
    else:
        rows.append(("converged", Badge(converged, "yes" if converged else "no: the empirical Bayes updates did not settle")))
    if fit_info.get("laplace_eb_updates") is not None:
        rows.append(("empirical Bayes", f"{fit_info['laplace_eb_updates']} updates of "
                                        f"{', '.join(fit_info.get('estimated') or []) or 'nothing (all fixed)'}"))
    rows += [
        ("loss per cell", num(fit_info.get("final_loss_per_cell"), ".5g")),
        ("likelihood weight", f"{num(fit_info.get('likelihood_weight'), '.4g')} (dispersion {num(fit_info.get('dispersion_final'), '.4g')})"),
    ]
    if fit_info.get("sigma_guide") is not None:
        rows.append(("spread of guide deviations (sigma_guide)", ", ".join(num(v, ".3g") for v in fit_info["sigma_guide"])))
    cov = fit_info.get("clone_cov")
    if cov:
        sd = [num(float(cov[k][k]) ** 0.5, ".3g") for k in range(len(cov))]
        rows.append(("clone effect SD (per contrast)", ", ".join(sd) + f" over {fit_info.get('n_clusters')} clones"))
    elif fit_info.get("clone_effects") is False:
        rows.append(("clone effect", "none (fewer than 20 clones of two cells or more, or clone_effects: false)"))
    rows.append(("posterior", f"{fit_info.get('posterior_method', '–')}, {fit_info.get('uncertainty', 'model')} covariance" + newton))
    return KeyValues(rows)


def elbo_figure(run: RunFolder, page: PageLog, fit_info: dict) -> Figure | Absent:
    """The loss by step (``fit/elbo_trace.csv``), marking where the likelihood weight changed."""
    elbo = run.csv(names.FIT_ELBO_FILE, ["loss"])
    if elbo is None or not len(elbo):
        return page.missing("ELBO trace", run.why_absent(names.FIT_ELBO_FILE, f"{names.FIT_ELBO_FILE} not found"))
    page.shown("ELBO trace")
    loss = elbo["loss"].to_numpy(dtype=float)
    if not fit_info.get("steps"):
        return page.figure(
            lambda p: plot_elbo(loss, p, n_cells=None), "ELBO trace",
            "The negative log posterior per cell at the mode after each empirical Bayes update of the "
            "hyperparameters (sigma_guide, the clone covariance, the likelihood weight). A new weight rescales it; "
            "the last updates should change it little.",
        )
    switch = fit_info.get("weight_switch_step")
    changes = weight_steps(fit_info, run.config)
    marks = " and ".join(str(s + 1) for s in changes)
    caption = (
        "The loss SVI minimised (negative ELBO per cell) by step. With likelihood_weight: auto the first "
        f"{run.config.dispersion_warmup_frac:.0%} of the steps fit with weight 1; the weight is then set from the "
        f"dispersion of the fate probabilities, and re-estimated once more, at steps {marks} (dashed lines). Each "
        "change rescales the loss, so it jumps there; that is expected. The right panel shows the steps after the "
        "last change: the loss should fall and flatten."
        if changes else
        "The loss SVI minimised (negative ELBO per cell) by step; the right panel zooms into the second half. "
        "It should fall and flatten."
    )
    return page.figure(
        lambda p: plot_elbo(loss, p, n_cells=fit_info.get("n_cells"), switch_step=switch, weight_steps=changes),
        "ELBO trace", caption,
    )


def weight_steps(fit_info: dict, config: FatebiasConfig) -> list[int]:
    """Steps at which the likelihood weight changed (recorded by the fit, else derived from its settings)."""
    if fit_info.get("weight_update_steps") is not None:
        return [int(s) for s in fit_info["weight_update_steps"]]
    if fit_info.get("weight_switch_step") is None:
        return []
    steps = int(fit_info.get("steps") or config.num_steps)
    frac = float((fit_info.get("settings") or {}).get("dispersion_warmup_frac", config.dispersion_warmup_frac))
    warmup = max(1, int(steps * frac))
    return sorted({warmup, min(2 * warmup, steps - 1)})


def _refit(h: dict) -> str:
    """How the held-out check refitted the models, in words."""
    if h.get("method") == "mode":
        its = "/".join(str((h.get("fits") or {}).get(m, {}).get("newton_iterations")) for m in ("full", "nuisance"))
        return f"refitted at the mode, {its} Newton iterations"
    return f"{h.get('steps')} SVI steps"


def _clones(h: dict) -> str:
    """The held-out clones, in words (older diagnostics files held out cells, not clones)."""
    n = h.get("n_heldout_clones")
    return "drawn by cell" if n is None else f"in {n} whole clones"


def heldout(run: RunFolder, page: PageLog) -> HeldOut | Absent:
    """Held-out cross-entropy of the full model against the nuisance-only model (``diagnostics.json``)."""
    h = diagnostics_part(run, page, "heldout", "held-out cross-entropy")
    if isinstance(h, Absent):
        return h
    better = bool(h.get("full_better"))
    summary = KeyValues([
        ("held-out cells", f"{h.get('n_heldout')} {_clones(h)} (fraction {h.get('heldout_frac')}, "
                           f"{h.get('n_train')} cells trained on, {_refit(h)})"),
        ("cross-entropy, full model", num(h.get("ce_full"), ".5f")),
        ("cross-entropy, nuisance only", num(h.get("ce_nuisance"), ".5f")),
        ("difference (nuisance - full)", f"{num(h.get('difference'), '.5f')} +/- {num(h.get('difference_se'), '.5f')} (z = {num(h.get('difference_z'), '.1f')})"),
        ("floor (entropy of the data)", num(h.get("entropy_floor"), ".5f")),
        ("share of the excess over the floor removed", num(h.get("explained_fraction"), ".1%")),
        ("verdict", Badge(better, "full model better" if better else "full model NOT better")),
    ])
    per_day = Table(["day", "cells", "full", "nuisance only", "difference"], [
        (d.get("day"), d.get("n_cells"), num(d.get("ce_full"), ".5f"), num(d.get("ce_nuisance"), ".5f"), num(d.get("difference"), "+.5f"))
        for d in h.get("per_day") or []
    ])
    return HeldOut(summary, per_day)
