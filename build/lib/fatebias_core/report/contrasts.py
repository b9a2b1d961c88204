"""Section 3 of the report, the answer: per contrast, the hits table, figures and guide concordance.

The hits are read, never recomputed: the primary contrast's from ``hits_ranked.csv``,
the others' from ``hits_ranked_<FATE>.csv`` (both written by the rank step), in the
order and with the calls those files hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from markupsafe import Markup

from fatebias_core.discovery.answer import ContrastAnswer, contrast_answer, ranked_hits_name
from fatebias_core.errors import FatebiasError
from fatebias_core.io import layout as names
from fatebias_core.io.tables import read_posterior
from fatebias_core.report.folder import RANKED_DTYPES, PageLog, RunFolder
from fatebias_core.report.parts import (
    FIG_DPI,
    Absent,
    Cell,
    Figure,
    Table,
    days_text,
    effect_style,
    p_text,
    signed,
)
from fatebias_core.report.plots import plot_effect_heatmap, plot_guide_concordance, plot_volcano

#: Rows of the hits table written into the page (the CSV has them all).
MAX_TABLE_ROWS = 1000
#: Rows of the effect heatmap: the hits, at most this many ...
HEATMAP_MAX_ROWS = 25
#: ... and at least this many top-ranked rows when there are fewer hits.
HEATMAP_MIN_ROWS = 10
#: Top hits whose guides are drawn beside the gene effect.
CONCORDANCE_GENES = 8


@dataclass
class HitRow:
    """A row of a hits table: hit or not, hidden while "hits only" is ticked, its cells."""

    hit: bool
    hidden: bool
    cells: list[Cell]


@dataclass
class HitsTable:
    """A contrast's sortable hits table and its "show hits only" toggle."""

    table_id: str
    header: list[str]
    rows: list[HitRow]
    hits_only: bool
    n_hits: int
    n_genes: int
    more: str


@dataclass
class Concordance:
    """Guide concordance of the top hits: a note when there are no hits, the figure, the table."""

    note: str | None
    figure: Figure
    table: Table


@dataclass
class ContrastPart:
    """One contrast (fate vs reference): its hits, or why they are absent."""

    fate: str
    label: str
    primary: bool
    absent: Absent | None = None
    note: str = ""
    table: HitsTable | None = None
    heatmap: Figure | None = None
    volcano: Figure | None = None
    concordance: Concordance | Absent | None = None


@dataclass
class HitsSection:
    """Section 3: how calls are made (``rule``, preformatted numbers) and every contrast."""

    ref: str
    fates: list[str]
    rule: dict[str, str]
    contrasts: list[ContrastPart]


def read_answers(run: RunFolder) -> dict[str, ContrastAnswer | None]:
    """Each contrast's ranked answer read from its ranked hits file (None when absent or unusable)."""
    return {fate: read_answer(run, fate) for fate in run.config.contrast_fates}


def read_answer(run: RunFolder, fate: str) -> ContrastAnswer | None:
    """One contrast's answer from ``hits_ranked.csv`` / ``hits_ranked_<FATE>.csv``; problems are noted."""
    name = ranked_hits_name(run.config, fate)

    def read(file: str) -> pd.DataFrame | None:
        cols = ["gene", "hit_anyday", "active_days"] if file == name else ["gene"]
        return run.csv(file, cols, dtype=RANKED_DTYPES)

    try:
        return contrast_answer(run.out, run.config, fate, read=read)
    except FatebiasError as exc:
        run.problems[name] = str(exc)
        return None


def hits_section(run: RunFolder, page: PageLog, answers: dict[str, ContrastAnswer | None]) -> HitsSection:
    """Section 3 (records, per contrast, the hits table, heatmap, volcano plots, guide concordance)."""
    cfg = run.config
    primary = answers.get(cfg.contrast_fate)
    n_days = len(primary.axis) if primary is not None else 0
    anyday = cfg.mash_lfsr_thresh_anyday / (n_days if cfg.mash_anyday_correction == "bonferroni" and n_days else 1)
    rule = {
        "lfsr_day": f"{cfg.mash_lfsr_thresh_day:g}", "eps": f"{cfg.effect_size_eps:g}",
        "prob_large": f"{cfg.effect_prob_large_min:g}", "min_days": str(cfg.min_active_days_for_hit_anyday),
        "lfsr_anyday": f"{anyday:.3g}", "correction": cfg.mash_anyday_correction,
    }
    contrasts = [contrast_part(run, page, fate, answers.get(fate), primary=k == 0)
                 for k, fate in enumerate(cfg.contrast_fates)]
    return HitsSection(ref=cfg.ref_fate, fates=list(cfg.contrast_fates), rule=rule, contrasts=contrasts)


def contrast_part(run: RunFolder, page: PageLog, fate: str, ans: ContrastAnswer | None, primary: bool) -> ContrastPart:
    """One contrast's hits table, heatmap, volcano plots and guide concordance."""
    cfg = run.config
    part = ContrastPart(fate=fate, label=f"{fate} vs {cfg.ref_fate}", primary=primary)
    sfx = "" if primary else f" ({fate})"
    name = ranked_hits_name(cfg, fate)
    if ans is None:
        why = (f"{name} not found: the chain did not reach hit calling" if primary
               else f"{name} not found: the rank step writes it (fatebias run --rerun rank)")
        part.absent = page.missing(f"hits{sfx}", run.why_absent(name, why))
        return part
    page.shown(f"hits table{sfx}")
    no_baseline = "" if ans.baseline is not None else f"; no per-day baseline in {names.LOAD_SUMMARY}, so no probability scale"
    part.note = f"{ans.n_hits} hits of {len(ans.genes)} genes. Effects from {ans.effects_from}{no_baseline}."
    part.table = hits_table(ans, f"hits-table-{fate}")
    top = ans.top_rows(HEATMAP_MIN_ROWS, HEATMAP_MAX_ROWS)
    if len(top):
        page.shown(f"effect heatmap{sfx}")
        part.heatmap = heatmap_figure(run, page, ans, top)
        page.shown(f"volcano plots{sfx}")
        part.volcano = volcano_figure(run, page, ans)
    part.concordance = concordance(run, page, ans, sfx)
    return part


def hits_table(ans: ContrastAnswer, table_id: str) -> HitsTable:
    """The first :data:`MAX_TABLE_ROWS` rows of the ranked table, in its order, as table cells."""
    prob = ans.baseline is not None
    header = ["rank", "gene", "hit", "called days", "best day", "direction", "effect (logit, best day)", "90% CI (logit)"]
    header += [f"change in P({ans.fate}) at the day's baseline"] if prob else []
    header += ["lfsr (best day)", "max |effect|"] + [f"{d}: effect, lfsr" for d in ans.day_labels]
    n = min(len(ans.genes), MAX_TABLE_ROWS)
    summary = ans.best()
    best = ans.best_day()
    vmax = float(np.abs(ans.mean).max()) if ans.mean.size else 1.0
    hide = ans.n_hits > 0
    rows = [HitRow(hit=bool(ans.hit[i]), hidden=hide and not ans.hit[i],
                   cells=hit_cells(ans, i, int(best[i]), summary.iloc[i], vmax, prob)) for i in range(n)]
    more = f" (first {MAX_TABLE_ROWS} of {len(ans.genes)} rows; all are in the CSV)" if len(ans.genes) > MAX_TABLE_ROWS else ""
    return HitsTable(table_id=table_id, header=header, rows=rows, hits_only=hide, n_hits=ans.n_hits,
                     n_genes=len(ans.genes), more=more)


def hit_cells(ans: ContrastAnswer, i: int, b: int, r: pd.Series, vmax: float, prob: bool) -> list[Cell]:
    """The cells of row ``i`` (best day ``b``, best-day summary ``r``); ``data-v`` holds sort keys."""
    m, s = float(ans.mean[i, b]), float(ans.lfsr[i, b])
    called = days_text(ans.hits["active_days"].iloc[i], ans.axis)
    biggest = float(np.abs(ans.mean[i]).max())
    cells = [
        Cell(i + 1, v=str(i + 1), cls="n"),
        Cell(ans.genes[i]),
        Cell("yes" if ans.hit[i] else "no", v=str(int(ans.hit[i]))),
        Cell(called or "–"),
        Cell(ans.day_labels[b], v=str(b)),
        Cell(r["direction"]),
        Cell(signed(m), v=f"{m:.6g}", cls="n", style=effect_style(m, vmax)),
        Cell(f"[{signed(r['lo90'], 2)}, {signed(r['hi90'], 2)}]", v=f"{r['lo90']:.6g}", cls="n"),
    ]
    if prob:
        cells.append(probability_cell(ans.fate, r))
    cells += [
        Cell(p_text(s), v=f"{max(s, 1e-300):.6g}", cls="n"),
        Cell(f"{biggest:.3f}", v=f"{biggest:.6g}", cls="n"),
    ]
    cells += [
        Cell(signed(x), v=f"{x:.6g}", cls="n day sig" if c else "n day", style=effect_style(x, vmax), small=p_text(q))
        for x, q, c in zip(ans.mean[i], ans.lfsr[i], ans.called[i], strict=True)
    ]
    return cells


def probability_cell(fate: str, r: pd.Series) -> Cell:
    """The change in P(fate) at the best day's baseline, with the baseline, the shifted value and the 90% CI."""
    small = Markup("{} &rarr; {}, 90% CI [{}, {}]").format(
        f"{r['p_baseline']:.2f}", f"{r['p_shifted']:.2f}", signed(r["dp_lo90"], 2), signed(r["dp_hi90"], 2))
    title = (f"P({fate}) {r['p_baseline']:.3f} to {r['p_shifted']:.3f}; "
             f"90% CI [{r['dp_lo90']:+.3f}, {r['dp_hi90']:+.3f}]")
    return Cell(signed(r["dp"]), v=f"{r['dp']:.6g}", cls="n", small=small, title=title)


def heatmap_figure(run: RunFolder, page: PageLog, ans: ContrastAnswer, top: np.ndarray) -> Figure:
    """Effects of the top-ranked genes by day, stars by lfsr, called days boxed."""
    ref = run.config.ref_fate
    label = f"{ans.fate} vs {ref}"
    genes = [str(g) for g in ans.genes[top]]
    return page.figure(
        lambda p: plot_effect_heatmap(
            ans.mean[top], ans.lfsr[top], genes, ans.day_labels, p, called=ans.called[top], emphasise=ans.hit[top],
            title=f"{label}: top {len(top)} genes by rank", dpi=FIG_DPI),
        f"heatmap of effects, {label}",
        f"Posterior mean effect (logit scale; red: towards {ans.fate}, blue: towards {ref}) of the {len(top)} "
        "top-ranked genes (hits in bold, other top-ranked genes grey). Stars: lfsr < 0.05 (*), < 0.01 (**), "
        "< 0.001 (***); boxed cells are called days.",
    )


def volcano_figure(run: RunFolder, page: PageLog, ans: ContrastAnswer) -> Figure:
    """Every gene on every day: effect against -log10 lfsr, called gene-days named."""
    cfg = run.config
    label = f"{ans.fate} vs {cfg.ref_fate}"
    return page.figure(
        lambda p: plot_volcano(
            ans.mean, ans.lfsr, ans.day_labels, p, called=ans.called, genes=[str(g) for g in ans.genes],
            sd=ans.sd, lfsr_thresh=cfg.mash_lfsr_thresh_day, eps=cfg.effect_size_eps,
            fate=ans.fate, ref=cfg.ref_fate, dpi=FIG_DPI),
        f"volcano plots, {label}",
        "Every gene on every day: effect against -log10 lfsr (a log scale, so that strong hits stay apart). "
        f"Called gene-days are coloured (red: towards {ans.fate}, blue: towards {cfg.ref_fate}) and named; dashed line: "
        f"the lfsr threshold; dotted lines: +/- {cfg.effect_size_eps:g}. Triangles: lfsr below 1e-300 (it "
        "underflows), drawn at 300 or, where higher, at the normal approximation -log10 P(Z > |mean| / SD).",
    )


def concordance(run: RunFolder, page: PageLog, ans: ContrastAnswer, sfx: str) -> Concordance | Absent:
    """Do the guides of the top hits agree with their gene? (``mash_guide_<mode>[_<FATE>].csv``)"""
    cfg = run.config
    part = f"guide concordance{sfx}"
    name = f"mash_guide_{cfg.mash_default_mode}{cfg.file_suffix(ans.fate)}.csv"
    guides = run.csv(name, ["guide", "gene"], dtype={"gene": str, "guide": str})
    if guides is None:
        return page.missing(part, run.why_absent(name, f"{name} not found: no guide-level posterior to compare"))
    try:
        gpost = read_posterior(guides, what=name)
    except FatebiasError as exc:
        return page.missing(part, str(exc))
    if gpost.axis.labels != ans.axis.labels:
        return page.missing(part, f"{name} has days {list(gpost.axis.labels)}, the hits {ans.day_labels}")
    n = min(ans.n_hits, CONCORDANCE_GENES) or min(4, len(ans.genes))
    top = np.arange(n)
    guide_gene = guides["gene"].astype(str).to_numpy()
    rows, titles = concordance_rows(ans, top, guide_gene, gpost.postmean)
    page.shown(part)
    figure = page.figure(
        lambda p: plot_guide_concordance(
            [str(g) for g in ans.genes[top]], ans.day_labels, ans.mean[top], ans.sd[top], guide_gene, gpost.postmean, p,
            titles=titles, dpi=FIG_DPI),
        f"guide concordance, {ans.fate} vs {cfg.ref_fate}",
        f"Each panel: the gene's posterior mean +/- 2 SD (black, grey band) and the mash posterior means of its guides "
        f"({name}, orange). Concordant guides move together with the gene; one guide far from the others suggests an "
        "off-target or inefficient guide.",
    )
    header = ["gene", "best day", "gene effect", "guides with the gene's sign", "guide effects that day", "guide SD"]
    note = None if ans.n_hits else f"No hits: showing the {n} top-ranked genes."
    return Concordance(note=note, figure=figure, table=Table(header, rows))


def concordance_rows(
    ans: ContrastAnswer, top: np.ndarray, guide_gene: np.ndarray, guide_mean: np.ndarray
) -> tuple[list[tuple], list[str]]:
    """Per top gene at its best day: its effect, how many guides share its sign, their effects and SD."""
    best = ans.best_day()[top]
    rows, titles = [], []
    for i, b in zip(top, best, strict=True):
        sel = guide_gene == ans.genes[i]
        g_eff = guide_mean[sel, b]
        sign = np.sign(ans.mean[i, b])
        agree = int((np.sign(g_eff) == sign).sum()) if sign != 0 else 0
        titles.append(f"{ans.genes[i]}: {agree}/{sel.sum()} guides agree on {ans.day_labels[b]}")
        rows.append((
            ans.genes[i], ans.day_labels[b], signed(ans.mean[i, b]), f"{agree} of {int(sel.sum())}",
            ", ".join(signed(x, 2) for x in g_eff) or "–",
            f"{g_eff.std():.3f}" if len(g_eff) > 1 else "–",
        ))
    return rows, titles
