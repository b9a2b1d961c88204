"""Figures: ELBO trace, effects by day, heatmaps, volcanoes and the other plots a person looks at.

Two layers, so that the same drawing serves a notebook and the run folder:

* **Axes functions** (:func:`elbo`, :func:`effects_by_day`, :func:`effect_heatmap`,
  :func:`volcano`, :func:`guide_concordance`, :func:`qc_offsets`, :func:`ntc_qq`,
  :func:`mode_comparison`, :func:`recovery_rates`, :func:`recovery_counts`,
  :func:`calibration_coverage`, :func:`calibration_fsr`) draw one panel on the
  matplotlib ``Axes`` they are given and return it. With ``ax=None`` they open a new
  pyplot figure, as scanpy's plotting functions do, so in Jupyter it shows inline.
  They save nothing.
* **File functions** (``plot_*``) build a :class:`matplotlib.figure.Figure` with an Agg
  canvas of its own (no pyplot, no backend chosen for the process), draw the panels with
  the Axes functions, write a PNG atomically and return its path. The run folder's
  figures and the HTML report use these.

Importing this module changes no global state: it never calls ``matplotlib.use``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Annotation
from matplotlib.ticker import MaxNLocator
from scipy.stats import norm

from fatebias_core.io import atomic_path

__all__ = [
    "STAR_LEVELS",
    "calibration_coverage",
    "calibration_fsr",
    "concordance_legend",
    "effect_heatmap",
    "effects_by_day",
    "elbo",
    "file_figure",
    "guide_concordance",
    "label_volcano",
    "lfsr_stars",
    "mode_comparison",
    "ntc_qq",
    "place_labels",
    "plot_calibration_coverage",
    "plot_calibration_fsr",
    "plot_effect_heatmap",
    "plot_effects_by_day",
    "plot_elbo",
    "plot_guide_concordance",
    "plot_mode_comparison",
    "plot_ntc_qq",
    "plot_qc_offsets",
    "plot_recovery",
    "plot_volcano",
    "qc_offsets",
    "recovery_counts",
    "recovery_rates",
    "volcano",
    "volcano_height",
]


# --------------------------------------------------------------------------- figures and files
def file_figure(figsize: tuple[float, float]) -> Figure:
    """A figure for writing to a file: its own Agg canvas, unknown to pyplot (never shown)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """``ax``, or the Axes of a new pyplot figure of ``figsize`` (shown inline in Jupyter)."""
    if ax is not None:
        return ax
    _, new = plt.subplots(figsize=figsize)
    return new


def _renderer(fig: Figure):
    """The renderer of ``fig``'s canvas (Agg-based canvases have one; otherwise matplotlib's own)."""
    get = getattr(fig.canvas, "get_renderer", None)
    return get() if get is not None else fig._get_renderer()


def _save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically; release it if pyplot manages it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)  # a no-op for figures pyplot does not know
    return path


# --------------------------------------------------------------------------- ELBO
def _running_mean(y: np.ndarray) -> tuple[np.ndarray, int]:
    """Running mean of ``y`` over a window of 1/50 of its length, and the window."""
    w = max(len(y) // 50, 1)
    return np.convolve(y, np.ones(w) / w, mode="valid"), w


def elbo(
    loss: np.ndarray,
    *,
    n_cells: int | None = None,
    start: int = 0,
    weight_steps: Sequence[int] | None = None,
    title: str | None = "SVI loss (negative ELBO)",
    ax: Axes | None = None,
) -> Axes:
    """The loss trace from step ``start + 1`` with its running mean; per cell when ``n_cells`` is given.

    ``weight_steps`` (0-based steps at which ``likelihood_weight: auto`` set the weight)
    are marked and labelled, and a positive trace is drawn on a log scale.
    """
    ax = _axes(ax, (5, 3.4))
    loss = np.asarray(loss, dtype=float)
    if loss.size == 0:  # a fit at fixed hyperparameters (fixed_sigma_guide) runs no SVI
        ax.text(0.5, 0.5, "no SVI steps", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=10)
        return ax
    y = loss / n_cells if n_cells else loss
    steps = np.arange(1, len(y) + 1)
    smooth, w = _running_mean(y)
    ax.plot(steps[start:], y[start:], lw=0.5, color="0.7", label="per step")
    s0 = max(start - w + 1, 0) if start == 0 else start
    ax.plot(steps[w - 1 :][s0:], smooth[s0:], lw=1.5, color="C0", label=f"running mean ({w})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per cell" if n_cells else "loss")
    for k, s in enumerate(sorted(weight_steps or [])):
        what = "likelihood weight set" if k == 0 else "weight re-estimated"
        ax.axvline(s + 1, color="C3", lw=0.9, ls="--", label="likelihood weight changes" if k == 0 else None)
        ax.annotate(f"{what} (step {s + 1})", (s + 1, 1.0 - 0.09 * k), xycoords=("data", "axes fraction"),
                    xytext=(3, -3), textcoords="offset points", fontsize=7, color="C3", va="top")
    if weight_steps and np.all(y[np.isfinite(y)] > 0):
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_elbo(
    loss: np.ndarray,
    path: str | Path,
    n_cells: int | None = None,
    switch_step: int | None = None,
    title: str = "SVI loss (negative ELBO)",
    weight_steps: list[int] | None = None,
) -> Path:
    """Write the loss trace (left) and its tail (right) as a PNG; see :func:`elbo`.

    ``weight_steps`` are the steps at which ``likelihood_weight: auto`` set the weight
    (each rescales the loss): every one is marked and labelled. ``switch_step`` (the
    last of them) starts the right panel; without it the right panel is the second half.
    """
    n = len(np.asarray(loss))
    weight_steps = sorted(weight_steps or ([switch_step] if switch_step else []))
    switch_step = switch_step or (weight_steps[-1] if weight_steps else None)
    fig = file_figure((10, 3.4))
    left, right = fig.subplots(1, 2)
    elbo(loss, n_cells=n_cells, weight_steps=weight_steps, title=title, ax=left)
    tail = "after the last weight change" if weight_steps else "second half"
    elbo(loss, n_cells=n_cells, start=switch_step if switch_step else n // 2, title=tail, ax=right)
    if n:
        left.legend(frameon=False, fontsize=8, loc="center right")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- effects by day
def effects_by_day(
    mean: np.ndarray,
    sd: np.ndarray,
    genes: Sequence[str],
    days: Sequence[str],
    *,
    top: int = 12,
    title: str = "Gene effects by day (posterior mean +/- 2 SD)",
    ax: Axes | None = None,
) -> Axes:
    """Posterior effects by day for the ``top`` genes with the largest |mean|/sd on any day.

    ``mean`` and ``sd`` are (n_genes, n_days); error bars are +/- 2 SD.
    """
    ax = _axes(ax, (7, 4))
    mean, sd = np.asarray(mean), np.asarray(sd)
    score = np.max(np.abs(mean) / np.maximum(sd, 1e-12), axis=1)
    order = np.argsort(-score, kind="stable")[:top]
    x = np.arange(len(days))
    for i, g in enumerate(order):
        ax.errorbar(x + (i - len(order) / 2) * 0.02, mean[g], yerr=2 * sd[g], marker="o", ms=3, lw=1, capsize=2, label=genes[g])
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xticks(x, list(days))
    ax.set_xlabel("day")
    ax.set_ylabel("effect (logit scale)")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    return ax


def plot_effects_by_day(
    mean: np.ndarray,
    sd: np.ndarray,
    genes: list[str],
    days: list[str],
    path: str | Path,
    top: int = 12,
    title: str = "Gene effects by day (posterior mean +/- 2 SD)",
) -> Path:
    """Write :func:`effects_by_day` as a PNG."""
    fig = file_figure((7, 4))
    effects_by_day(mean, sd, genes, days, top=top, title=title, ax=fig.add_subplot())
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- calibration
def _method_colors(summary: pd.DataFrame) -> dict[str, str]:
    """One colour per inference method, the same in every panel and figure."""
    return {m: f"C{i}" for i, m in enumerate(dict.fromkeys(summary["method"]))}


def _scenario_lines(ax: Axes, rows: pd.DataFrame, color: str) -> None:
    """One thin line per scenario of ``rows`` (value against level)."""
    for _, sc in rows.groupby("scenario"):
        sc = sc.sort_values("level")
        ax.plot(sc["level"], sc["value"], color=color, lw=0.6, alpha=0.35)


def calibration_coverage(summary: pd.DataFrame, group: str = "all", source: str = "model", *, ax: Axes | None = None) -> Axes:
    """Interval coverage against the nominal level for one truth ``group``, a line per method.

    ``summary`` is the calibration study's summary table; thin lines are single
    scenarios, thick lines their mean.
    """
    ax = _axes(ax, (4.2, 3.8))
    df = summary[(summary["metric"] == "coverage") & (summary["source"] == source) & (summary["group"] == group)]
    colors = _method_colors(summary)
    for method, m in df.groupby("method", sort=False):
        _scenario_lines(ax, m, colors[method])
        mean = m.groupby("level")["value"].mean()
        ax.plot(mean.index, mean.values, color=colors[method], lw=2, marker="o", ms=3, label=method)
    ax.plot([0.45, 1], [0.45, 1], color="0.4", ls="--", lw=0.8)
    ax.set_xlim(0.45, 1)
    ax.set_ylim(0.2, 1.01)
    ax.set_xlabel("nominal level")
    ax.set_title(f"{source}: {group}")
    return ax


def plot_calibration_coverage(summary: pd.DataFrame, path: str | Path, source: str = "model") -> Path:
    """Write :func:`calibration_coverage` for every truth group (all, effects, nulls) side by side."""
    df = summary[(summary["metric"] == "coverage") & (summary["source"] == source)]
    groups = [g for g in ("all", "effects", "nulls") if g in set(df["group"])]
    fig = file_figure((4.2 * max(len(groups), 1), 3.8))
    axes = fig.subplots(1, max(len(groups), 1), squeeze=False)[0]
    for ax, group in zip(axes, groups, strict=False):
        calibration_coverage(summary, group, source, ax=ax)
    axes[0].set_ylabel("coverage")
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def calibration_fsr(summary: pd.DataFrame, source: str, *, ax: Axes | None = None) -> Axes:
    """Realised false sign rate of lfsr calls against the threshold for one mash ``source``.

    Thin lines are single scenarios (pooled over seeds), thick lines all scenarios pooled.
    """
    ax = _axes(ax, (3.6, 3.6))
    df = summary[(summary["metric"] == "fsr") & (summary["source"] == source)]
    colors = _method_colors(summary)
    for method, m in df.groupby("method", sort=False):
        _scenario_lines(ax, m, colors[method])
        pooled = m.assign(w=m["value"] * m["n"]).groupby("level")[["w", "n"]].sum()
        ax.plot(pooled.index, pooled["w"] / pooled["n"], color=colors[method], lw=2, marker="o", ms=3, label=method)
    ax.plot([0, 0.1], [0, 0.1], color="0.4", ls="--", lw=0.8)
    ax.set_xlabel("lfsr threshold")
    ax.set_title(source.removeprefix("mash:"), fontsize=9)
    return ax


def plot_calibration_fsr(summary: pd.DataFrame, path: str | Path) -> Path:
    """Write :func:`calibration_fsr` for every mash source side by side."""
    sources = sorted(set(summary.loc[summary["metric"] == "fsr", "source"]))
    fig = file_figure((3.6 * max(len(sources), 1), 3.6))
    axes = fig.subplots(1, max(len(sources), 1), squeeze=False, sharey=True)[0]
    for ax, source in zip(axes, sources, strict=False):
        calibration_fsr(summary, source, ax=ax)
    axes[0].set_ylabel("realised false sign rate")
    axes[0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- report figures
#: lfsr levels of the stars drawn on effect heatmaps: * < 0.05, ** < 0.01, *** < 0.001.
STAR_LEVELS = (0.05, 0.01, 0.001)


def lfsr_stars(lfsr: np.ndarray, levels: tuple[float, ...] = STAR_LEVELS) -> np.ndarray:
    """``"*"`` per level of ``levels`` that ``lfsr`` is strictly below (``""``, ``"*"``, ...)."""
    lfsr = np.asarray(lfsr, dtype=float)
    n = sum((lfsr < lev).astype(int) for lev in levels)
    return np.array(["*" * k for k in range(len(levels) + 1)], dtype=object)[n]


def _heatmap_size(n_rows: int, n_days: int) -> tuple[float, float]:
    return (1.0 * n_days + 3.2, 0.3 * n_rows + 1.6)


def effect_heatmap(
    mean: np.ndarray,
    lfsr: np.ndarray,
    genes: Sequence[str],
    days: Sequence[str],
    *,
    called: np.ndarray | None = None,
    emphasise: np.ndarray | None = None,
    title: str = "Posterior effects by gene and day",
    colorbar: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Genes x days heatmap of posterior mean effects, diverging colours centred at 0.

    Each cell shows the mean and lfsr stars (:data:`STAR_LEVELS`); cells of ``called``
    (n, D) gene-days are outlined. Gene labels of ``emphasise`` (n,) rows are bold, the
    others grey (hits vs top-ranked non-hits).
    """
    mean, lfsr = np.asarray(mean, dtype=float), np.asarray(lfsr, dtype=float)
    n, n_days = mean.shape
    ax = _axes(ax, _heatmap_size(n, n_days))
    vmax = float(np.nanmax(np.abs(mean))) if mean.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    im = ax.imshow(mean, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    stars = lfsr_stars(lfsr)
    shown = np.where(np.abs(mean) < 0.005, 0.0, mean)  # no "-0.00"
    for (i, j), m in np.ndenumerate(shown):
        ax.text(j, i, f"{m:+.2f}{stars[i, j]}" if m else "0", ha="center", va="center", fontsize=7,
                color="white" if abs(m) > 0.6 * vmax else "black")
    if called is not None:
        for i, j in zip(*np.nonzero(np.asarray(called, dtype=bool)), strict=True):
            ax.add_patch(Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, lw=1.4, ec="black"))
    ax.set_xticks(np.arange(n_days), list(days))
    ax.set_yticks(np.arange(n), list(genes), fontsize=8)
    if emphasise is not None:
        for lab, strong in zip(ax.get_yticklabels(), np.asarray(emphasise, dtype=bool), strict=True):
            lab.set_fontweight("bold" if strong else "normal")
            lab.set_color("black" if strong else "0.45")
    ax.tick_params(length=0)
    ax.set_xlabel("day")
    ax.set_title(title, fontsize=10)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=min(1.0, 6 / max(n, 1) + 0.3), label="posterior mean (logit scale)")
    return ax


def plot_effect_heatmap(
    mean: np.ndarray,
    lfsr: np.ndarray,
    genes: list[str],
    days: list[str],
    path: str | Path,
    called: np.ndarray | None = None,
    emphasise: np.ndarray | None = None,
    title: str = "Posterior effects by gene and day",
    dpi: int = 110,
) -> Path:
    """Write :func:`effect_heatmap` as a PNG."""
    fig = file_figure(_heatmap_size(*np.shape(mean)))
    effect_heatmap(mean, lfsr, genes, days, called=called, emphasise=emphasise, title=title, ax=fig.add_subplot())
    fig.tight_layout()
    return _save(fig, path, dpi=dpi)


def volcano_height(lfsr: np.ndarray, mean: np.ndarray, sd: np.ndarray | None = None, floor: float = 1e-300) -> np.ndarray:
    """-log10 lfsr, and where lfsr underflows (< ``floor``) the normal approximation -log10 P(Z > |mean| / SD).

    Such points are drawn at least at ``-log10 floor`` (their lfsr is below it), higher where
    the approximation says so, so that the strongest effects stay apart.
    """
    lfsr, mean = np.asarray(lfsr, dtype=float), np.asarray(mean, dtype=float)
    y = -np.log10(np.maximum(lfsr, floor))
    under = lfsr < floor
    if sd is not None and under.any():
        z = np.abs(mean) / np.maximum(np.asarray(sd, dtype=float), 1e-300)
        approx = -norm.logsf(z) / np.log(10.0)
        y = np.where(under, np.maximum(approx, -np.log10(floor)), y)
    return y


def _free_spot(placed: list[tuple[float, float, float, float]], x0: float, y0: float, w: float, h: float, pad: float) -> float:
    """The highest y0 at or below ``y0`` where a w x h box at x0 overlaps none of ``placed``."""
    moved = True
    while moved:
        moved = False
        for a0, a1, b0, b1 in placed:
            if x0 < a1 + pad and x0 + w > a0 - pad and y0 < b1 + pad and y0 + h > b0 - pad:
                # A hundredth of a pixel more: exactly ``b0 - pad - h`` can round back into overlap
                # (y0 + h > b0 - pad by one ulp) and loop forever.
                y0 = b0 - pad - h - 0.01
                moved = True
    return y0


def place_labels(ax: Axes, xs: np.ndarray, ys: np.ndarray, labels: list[str], fontsize: float = 7, pad_px: float = 1.5) -> list[Annotation]:
    """Name points without overlapping labels: each label starts beside its point and moves down past any it would hit.

    Labels are placed in order of decreasing height; a label that moved gets a thin line to its point.
    Labels right of the axes' centre are written to the left of their point.

    Returns
    -------
    list of matplotlib.text.Annotation
        The labels, in the order of ``labels``.
    """
    renderer = _renderer(ax.figure)
    to_disp = ax.transData
    x_mid = float(np.mean(ax.get_xlim()))
    placed: list[tuple[float, float, float, float]] = []  # x0, x1, y0, y1 in display pixels
    out: list = [None] * len(labels)
    for k in np.argsort(-np.asarray(ys, dtype=float), kind="stable"):
        x, y = float(xs[k]), float(ys[k])
        px, py = to_disp.transform((x, y))
        left = x > x_mid
        probe = ax.text(0, 0, labels[k], fontsize=fontsize)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        w, h = bb.width, bb.height
        x0 = px - 5 - w if left else px + 5
        y0 = _free_spot(placed, x0, py - h / 2, w, h, pad_px)
        placed.append((x0, x0 + w, y0, y0 + h))
        tx, ty = to_disp.inverted().transform((x0 + (w if left else 0), y0 + h / 2))
        shifted = abs((y0 + h / 2) - py) > 1
        out[k] = ax.annotate(
            labels[k], (x, y), xytext=(tx, ty), textcoords="data", fontsize=fontsize, va="center",
            ha="right" if left else "left", annotation_clip=False, zorder=4,
            bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none", alpha=0.8),
            arrowprops=dict(arrowstyle="-", lw=0.4, color="0.45", shrinkA=0, shrinkB=2) if shifted else None,
        )
    return out


def volcano(
    mean: np.ndarray,
    lfsr: np.ndarray,
    *,
    day: str = "",
    called: np.ndarray | None = None,
    genes: Sequence[str] | None = None,
    sd: np.ndarray | None = None,
    lfsr_thresh: float = 0.05,
    eps: float = 0.2,
    label_top: int = 8,
    fate: str | None = None,
    ref: str | None = None,
    limits: tuple[float, float] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """One day's volcano: posterior mean against -log10 lfsr on a log scale.

    ``mean``, ``lfsr``, ``called`` and ``sd`` are (n,) for the day. Called genes are
    coloured by sign; with ``genes``, up to ``label_top`` of them (smallest lfsr first) are
    named. Dashed line: the lfsr threshold; dotted lines: the effect size ``eps`` of the
    probability gate. Underflowed lfsr (< 1e-300) is a triangle at the height of
    :func:`volcano_height`. ``limits`` = (x half-width, y top) shares axes across days.
    """
    ax = _axes(ax, (3.6, 4.0))
    mean, lfsr = np.asarray(mean, dtype=float), np.asarray(lfsr, dtype=float)
    called = np.zeros(mean.shape, dtype=bool) if called is None else np.asarray(called, dtype=bool)
    y = volcano_height(lfsr, mean, sd)
    xmax, top = limits or _volcano_limits(mean, y, lfsr_thresh, eps)
    colour = np.where(~called, "0.7", np.where(mean > 0, "#b2182b", "#2166ac"))
    under = lfsr < 1e-300
    for shape, sel in (("o", ~under), ("^", under)):
        ax.scatter(mean[sel], y[sel], c=colour[sel], s=np.where(called[sel], 22, 10), marker=shape, lw=0, zorder=3)
    ax.axhline(-np.log10(lfsr_thresh), color="0.3", ls="--", lw=0.8)
    for x in (-eps, eps):
        ax.axvline(x, color="0.3", ls=":", lw=0.8)
    ax.set_xlim(-xmax, xmax)
    ax.set_yscale("symlog", linthresh=1.0, linscale=0.6)
    ax.set_ylim(-0.08, top)
    ax.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))
    ax.grid(axis="y", color="0.92", lw=0.6)
    ax.set_title(f"{day}: {int(called.sum())} called" if day else f"{int(called.sum())} called", fontsize=9)
    ax.set_xlabel(f"\u2190 {ref}   effect (logit)   {fate} \u2192" if fate and ref else "posterior mean (logit)", fontsize=8)
    ax.set_ylabel("-log10 lfsr (log scale)")
    if genes is not None:
        label_volcano(ax, mean, lfsr, called, genes, sd=sd, label_top=label_top)
    return ax


def _volcano_limits(mean: np.ndarray, y: np.ndarray, lfsr_thresh: float, eps: float) -> tuple[float, float]:
    """x half-width and y top that fit every point of ``mean`` / ``y`` (any shape)."""
    top = max(float(y.max()) if y.size else 1.0, -np.log10(lfsr_thresh)) * 1.6
    xmax = max(float(np.abs(mean).max()) if mean.size else 0.0, 2 * eps) * 1.25
    return xmax, top


def label_volcano(
    ax: Axes, mean: np.ndarray, lfsr: np.ndarray, called: np.ndarray, genes: Sequence[str],
    sd: np.ndarray | None = None, label_top: int = 8,
) -> list[Annotation]:
    """Name up to ``label_top`` called genes of one day's volcano (smallest lfsr first), without overlaps."""
    y = volcano_height(lfsr, mean, sd)
    idx = np.flatnonzero(np.asarray(called, dtype=bool))
    idx = idx[np.lexsort((-y[idx], np.asarray(lfsr)[idx]))][:label_top]
    if not idx.size:
        return []
    ax.figure.canvas.draw()
    return place_labels(ax, np.asarray(mean)[idx], y[idx], [str(genes[i]) for i in idx])


def plot_volcano(
    mean: np.ndarray,
    lfsr: np.ndarray,
    days: list[str],
    path: str | Path,
    called: np.ndarray | None = None,
    genes: list[str] | None = None,
    sd: np.ndarray | None = None,
    lfsr_thresh: float = 0.05,
    eps: float = 0.2,
    label_top: int = 8,
    fate: str | None = None,
    ref: str | None = None,
    dpi: int = 110,
) -> Path:
    """Write one :func:`volcano` panel per day, sharing axes; arrays are (n, D)."""
    mean, lfsr = np.asarray(mean, dtype=float), np.asarray(lfsr, dtype=float)
    called = np.zeros(mean.shape, dtype=bool) if called is None else np.asarray(called, dtype=bool)
    limits = _volcano_limits(mean, volcano_height(lfsr, mean, sd), lfsr_thresh, eps)
    n_days = mean.shape[1]
    fig = file_figure((3.3 * n_days + 0.6, 4.0))
    axes = fig.subplots(1, n_days, sharey=True, squeeze=False)[0]
    for j, ax in enumerate(axes):
        volcano(mean[:, j], lfsr[:, j], day=days[j], called=called[:, j], sd=None if sd is None else np.asarray(sd)[:, j],
                lfsr_thresh=lfsr_thresh, eps=eps, fate=fate, ref=ref, limits=limits, ax=ax)
        if j:
            ax.set_ylabel("")
    fig.tight_layout(w_pad=1.5)
    if genes is not None:
        for j, ax in enumerate(axes):
            label_volcano(ax, mean[:, j], lfsr[:, j], called[:, j], genes, sd=None if sd is None else np.asarray(sd)[:, j],
                          label_top=label_top)
    return _save(fig, path, dpi=dpi)


def guide_concordance(
    gene_mean: np.ndarray,
    gene_sd: np.ndarray,
    guide_mean: np.ndarray,
    days: Sequence[str],
    *,
    title: str = "",
    ax: Axes | None = None,
) -> Axes:
    """One gene: its guides' effects by day (orange) beside the gene's mean (black) +/- 2 SD (grey).

    ``gene_mean`` and ``gene_sd`` are (D,), ``guide_mean`` (n_guides, D).
    """
    ax = _axes(ax, (3.1, 2.5))
    gene_mean, gene_sd = np.asarray(gene_mean, dtype=float), np.asarray(gene_sd, dtype=float)
    rows = np.atleast_2d(np.asarray(guide_mean, dtype=float)) if np.size(guide_mean) else np.empty((0, len(days)))
    x = np.arange(len(days))
    ax.fill_between(x, gene_mean - 2 * gene_sd, gene_mean + 2 * gene_sd, color="0.85", lw=0)
    offsets = np.linspace(-0.12, 0.12, len(rows)) if len(rows) > 1 else np.zeros(len(rows))
    if len(rows):
        ax.plot((x[None, :] + offsets[:, None]).T, rows.T, "-o", lw=0.8, ms=3, alpha=0.8, color="C1")
    ax.plot(x, gene_mean, "-o", color="black", lw=1.8, ms=4)
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_xticks(x, list(days), fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=8.5)
    return ax


def concordance_legend() -> list:
    """Legend handles of :func:`guide_concordance`."""
    return [
        Line2D([], [], color="black", marker="o", lw=1.8, ms=4, label="gene: posterior mean"),
        Rectangle((0, 0), 1, 1, color="0.85", label="gene: +/- 2 SD"),
        Line2D([], [], color="C1", marker="o", lw=0.8, ms=3, label="its guides: posterior mean"),
    ]


def plot_guide_concordance(
    genes: list[str],
    days: list[str],
    gene_mean: np.ndarray,
    gene_sd: np.ndarray,
    guide_gene: np.ndarray,
    guide_mean: np.ndarray,
    path: str | Path,
    titles: list[str] | None = None,
    ncols: int = 4,
    dpi: int = 110,
) -> Path:
    """Write a grid of :func:`guide_concordance` panels, one per gene.

    Parameters
    ----------
    genes
        Genes to draw, one panel each.
    days
        Day labels.
    gene_mean, gene_sd
        (len(genes), D) posterior mean and SD of each gene.
    guide_gene
        (G,) gene of each guide.
    guide_mean
        (G, D) posterior mean of each guide; guides of genes not drawn are ignored.
    titles
        Panel titles (default: the gene names).
    """
    guide_gene, guide_mean = np.asarray(guide_gene).astype(str), np.asarray(guide_mean, dtype=float)
    k = len(genes)
    ncols = max(1, min(ncols, k))
    nrows = -(-k // ncols)
    fig = file_figure((3.1 * ncols, 2.5 * nrows + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (i, gene) in zip(axes.flat, enumerate(genes), strict=False):
        guide_concordance(np.asarray(gene_mean)[i], np.asarray(gene_sd)[i], guide_mean[guide_gene == gene], days,
                          title=titles[i] if titles else gene, ax=ax)
    for ax in list(axes.flat)[k:]:
        ax.set_visible(False)
    fig.legend(handles=concordance_legend(), loc="upper center", ncol=3, frameon=False, fontsize=8)
    fig.supylabel("effect (logit scale)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.5 * nrows + 0.4)))
    return _save(fig, path, dpi=dpi)


# --------------------------------------------------------------------------- QC and checks
def qc_offsets(values: np.ndarray, tol: float, name: str = "", *, floor: float = 1e-18, ax: Axes | None = None) -> Axes:
    """Histogram of log10 |value| of one QC quantity, with the tolerance marked.

    Exact zeros and values below ``floor`` are drawn at the floor.
    """
    ax = _axes(ax, (4.2, 2.9))
    lo = np.log10(floor)
    v = np.abs(np.asarray(values, dtype=float).ravel())
    v = v[np.isfinite(v)]
    logv = np.log10(np.maximum(v, floor))
    hi = max(float(logv.max()) if v.size else lo, np.log10(tol)) + 1
    ax.hist(logv, bins=np.linspace(lo - 0.5, hi, 40), color="C0")
    ax.axvline(np.log10(tol), color="#b2182b", lw=1.2, ls="--", label=f"tolerance {tol:g}")
    ax.set_xlabel("log10 |value|")
    ax.set_title(f"{name}: {int((v > tol).sum())} of {v.size} above tolerance", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_qc_offsets(offsets: dict[str, np.ndarray], tol: float, path: str | Path, floor: float = 1e-18, dpi: int = 110) -> Path:
    """Write one :func:`qc_offsets` histogram per quantity of ``offsets`` (name -> values, any shape)."""
    names = list(offsets)
    fig = file_figure((4.2 * max(len(names), 1), 2.9))
    axes = fig.subplots(1, max(len(names), 1), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        qc_offsets(offsets[name], tol, name, floor=floor, ax=ax)
    axes[0].set_ylabel("count")
    fig.tight_layout()
    return _save(fig, path, dpi=dpi)


def ntc_qq(table: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """QQ plot of NTC pseudo-gene z-scores against N(0, 1): model-based and the run's (exported) intervals.

    ``table`` is ``ntc_calibration.csv`` (columns ``z_model``, ``z``). Points on
    the diagonal mean calibrated standard errors; a line steeper than it means SEs that
    are too small (intervals too narrow, too many calls).
    """
    ax = _axes(ax, (4.4, 4.0))
    lim = 0.0
    for col, label, color in (("z_model", "model-based SE", "#b2182b"), ("z", "the run's SE", "#2166ac")):
        z = np.sort(np.asarray(table[col], dtype=float))
        z = z[np.isfinite(z)]
        if not z.size:
            continue
        q = norm.ppf((np.arange(1, z.size + 1) - 0.5) / z.size)
        sd = float(np.sqrt(np.mean(z**2)))
        ax.plot(q, z, ".", ms=3, color=color, label=f"{label} (SD {sd:.2f})")
        lim = max(lim, float(np.abs(z).max()), float(np.abs(q).max()))
    lim = max(lim, 3.0) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="0.4", ls="--", lw=0.8)
    for v in (-1.96, 1.96):
        ax.axhline(v, color="0.8", lw=0.6)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("N(0, 1) quantile")
    ax.set_ylabel("NTC pseudo-gene z")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    return ax


def plot_ntc_qq(table: pd.DataFrame, path: str | Path, dpi: int = 110) -> Path:
    """Write :func:`ntc_qq` as a PNG."""
    fig = file_figure((4.4, 4.0))
    ntc_qq(table, ax=fig.add_subplot())
    fig.tight_layout()
    return _save(fig, path, dpi=dpi)


def mode_comparison(comparison: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Hits per mash mode (``mash_mode_comparison.csv``), with the hits both modes share."""
    df = comparison.reset_index(drop=True)
    ax = _axes(ax, (1.6 * len(df) + 2.4, 3.0))
    x = np.arange(len(df))
    n_hits = df["n_hits"].to_numpy(dtype=float)
    shared = np.nan_to_num(df["n_shared_hits"].to_numpy(dtype=float))
    ax.bar(x, n_hits, width=0.6, color="0.8", label="hits")
    ax.bar(x, shared, width=0.6, color="C0", label="hits shared with the other mode")
    for xi, n in zip(x, n_hits, strict=True):
        ax.text(xi, n, f"{int(n)}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, [f"{m}\n({int(r)} rows)" for m, r in zip(df["mode"], df["n_rows"], strict=True)])
    ax.set_ylabel("genes")
    ax.set_ylim(0, max(float(n_hits.max()) if len(df) else 1.0, 1.0) * 1.45)
    jac = df["jaccard_hits"].to_numpy(dtype=float)
    ax.set_title("Hits by mash mode" + (f" (Jaccard {jac[0]:.2f})" if len(jac) and np.isfinite(jac[0]) else ""), fontsize=10)
    ax.legend(frameon=False, fontsize=8, loc="upper center", ncol=2)
    return ax


def plot_mode_comparison(comparison: pd.DataFrame, path: str | Path, dpi: int = 110) -> Path:
    """Write :func:`mode_comparison` as a PNG."""
    fig = file_figure((1.6 * len(comparison) + 2.4, 3.0))
    mode_comparison(comparison, ax=fig.add_subplot())
    fig.tight_layout()
    return _save(fig, path, dpi=dpi)


# --------------------------------------------------------------------------- recovery of a simulation's truth
def recovery_rates(confusion: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Precision, recall and F1 per level of ``daywise_confusion.csv`` (n/a where undefined)."""
    df = confusion.reset_index(drop=True)
    ax = _axes(ax, (2.2 + 0.55 * len(df), 3.2))
    x = np.arange(len(df))
    for k, (col, colour) in enumerate((("precision", "C0"), ("recall", "C2"), ("f1", "C4"))):
        vals = df[col].to_numpy(dtype=float)
        ax.bar(x + (k - 1) * 0.26, np.nan_to_num(vals), width=0.26, color=colour, label=col)
        for xi in x[np.isnan(vals)]:
            ax.text(xi + (k - 1) * 0.26, 0.02, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_ylim(0, 1.25)
    ax.set_xticks(x, df["level"])
    ax.set_title("precision, recall, F1", fontsize=10)
    ax.legend(frameon=False, fontsize=8, ncol=3, loc="upper center")
    return ax


def recovery_counts(confusion: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """True positives, false positives and false negatives per level of ``daywise_confusion.csv``, stacked."""
    df = confusion.reset_index(drop=True)
    ax = _axes(ax, (2.2 + 0.55 * len(df), 3.2))
    x = np.arange(len(df))
    bottom = np.zeros(len(df))
    for col, colour in (("tp", "C2"), ("fp", "#b2182b"), ("fn", "0.6")):
        vals = df[col].to_numpy(dtype=float)
        ax.bar(x, vals, bottom=bottom, width=0.6, color=colour, label=col.upper())
        bottom += vals
    ax.set_xticks(x, df["level"])
    ax.set_title("true positives, false positives, false negatives", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_recovery(confusion: pd.DataFrame, path: str | Path, dpi: int = 110) -> Path:
    """Write :func:`recovery_rates` and :func:`recovery_counts` side by side as a PNG."""
    fig = file_figure((4.5 + 1.1 * len(confusion), 3.2))
    left, right = fig.subplots(1, 2)
    recovery_rates(confusion, ax=left)
    recovery_counts(confusion, ax=right)
    fig.tight_layout()
    return _save(fig, path, dpi=dpi)
