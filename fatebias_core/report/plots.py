"""Figures: ELBO trace, effects by day, and the other plots a person looks at.

Every function draws with matplotlib's non-interactive Agg backend, writes a PNG
atomically, and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fatebias_core.io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_elbo(
    loss: np.ndarray,
    path: str | Path,
    n_cells: int | None = None,
    switch_step: int | None = None,
    title: str = "SVI loss (negative ELBO)",
    weight_steps: list[int] | None = None,
) -> Path:
    """The loss trace with a running mean; per cell when ``n_cells`` is given.

    ``weight_steps`` are the steps at which ``likelihood_weight: auto`` set the weight
    (each rescales the loss): every one is marked and labelled. ``switch_step`` (the
    last of them) starts the right panel; without it the right panel is the second half.
    """
    loss = np.asarray(loss, dtype=float)
    y = loss / n_cells if n_cells else loss
    steps = np.arange(1, len(y) + 1)
    w = max(len(y) // 50, 1)
    smooth = np.convolve(y, np.ones(w) / w, mode="valid")
    weight_steps = sorted(weight_steps or ([switch_step] if switch_step else []))
    switch_step = switch_step or (weight_steps[-1] if weight_steps else None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    zoom = switch_step if switch_step else len(y) // 2
    for ax, start in zip(axes, (0, zoom), strict=True):
        ax.plot(steps[start:], y[start:], lw=0.5, color="0.7", label="per step")
        s0 = max(start - w + 1, 0) if start == 0 else start
        ax.plot(steps[w - 1 :][s0:], smooth[s0:], lw=1.5, color="C0", label=f"running mean ({w})")
        ax.set_xlabel("step")
        ax.set_ylabel("loss per cell" if n_cells else "loss")
    if weight_steps:
        for k, s in enumerate(weight_steps):
            what = "likelihood weight set" if k == 0 else "weight re-estimated"
            axes[0].axvline(s + 1, color="C3", lw=0.9, ls="--", label="likelihood weight changes" if k == 0 else None)
            axes[0].annotate(f"{what} (step {s + 1})", (s + 1, 1.0 - 0.09 * k), xycoords=("data", "axes fraction"),
                             xytext=(3, -3), textcoords="offset points", fontsize=7, color="C3", va="top")
        if np.all(y[np.isfinite(y)] > 0):
            axes[0].set_yscale("log")
        axes[1].set_title("after the last weight change", fontsize=10)
    else:
        axes[1].set_title("second half", fontsize=10)
    axes[0].set_title(title, fontsize=10)
    axes[0].legend(frameon=False, fontsize=8, loc="center right")
    fig.tight_layout()
    return _save(fig, path)


def plot_effects_by_day(
    mean: np.ndarray,
    sd: np.ndarray,
    genes: list[str],
    days: list[str],
    path: str | Path,
    top: int = 12,
    title: str = "Gene effects by day (posterior mean +/- 2 SD)",
) -> Path:
    """Posterior effects by day for the genes with the largest |mean|/sd on any day."""
    mean, sd = np.asarray(mean), np.asarray(sd)
    score = np.max(np.abs(mean) / np.maximum(sd, 1e-12), axis=1)
    order = np.argsort(-score, kind="stable")[:top]
    x = np.arange(len(days))
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, g in enumerate(order):
        ax.errorbar(x + (i - len(order) / 2) * 0.02, mean[g], yerr=2 * sd[g], marker="o", ms=3, lw=1, capsize=2, label=genes[g])
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xticks(x, days)
    ax.set_xlabel("day")
    ax.set_ylabel("effect (logit scale)")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def _method_colors(summary) -> dict[str, str]:
    """One colour per inference method, the same in every panel and figure."""
    return {m: f"C{i}" for i, m in enumerate(dict.fromkeys(summary["method"]))}


def plot_calibration_coverage(summary, path: str | Path, source: str = "model") -> Path:
    """Interval coverage against the nominal level, one panel per truth group, a line per method.

    Thin lines are single scenarios, thick lines their mean.
    """
    df = summary[(summary["metric"] == "coverage") & (summary["source"] == source)]
    colors = _method_colors(summary)
    groups = [g for g in ("all", "effects", "nulls") if g in set(df["group"])]
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4.2 * max(len(groups), 1), 3.8), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=False):
        sub = df[df["group"] == group]
        for method, m in sub.groupby("method", sort=False):
            color = colors[method]
            _scenario_lines(ax, m, color)
            mean = m.groupby("level")["value"].mean()
            ax.plot(mean.index, mean.values, color=color, lw=2, marker="o", ms=3, label=method)
        ax.plot([0.45, 1], [0.45, 1], color="0.4", ls="--", lw=0.8)
        ax.set_xlim(0.45, 1)
        ax.set_ylim(0.2, 1.01)
        ax.set_xlabel("nominal level")
        ax.set_title(f"{source}: {group}")
    axes[0][0].set_ylabel("coverage")
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _scenario_lines(ax, rows, color) -> None:
    """One thin line per scenario of ``rows`` (value against level)."""
    for _, sc in rows.groupby("scenario"):
        sc = sc.sort_values("level")
        ax.plot(sc["level"], sc["value"], color=color, lw=0.6, alpha=0.35)


def plot_calibration_fsr(summary, path: str | Path) -> Path:
    """Realised false sign rate of lfsr calls against the threshold, a panel per mash source.

    Thin lines are single scenarios (pooled over seeds), thick lines all scenarios pooled.
    """
    df = summary[summary["metric"] == "fsr"]
    colors = _method_colors(summary)
    sources = sorted(set(df["source"]))
    fig, axes = plt.subplots(1, max(len(sources), 1), figsize=(3.6 * max(len(sources), 1), 3.6), squeeze=False, sharey=True)
    for ax, source in zip(axes[0], sources, strict=False):
        sub = df[df["source"] == source]
        for method, m in sub.groupby("method", sort=False):
            color = colors[method]
            _scenario_lines(ax, m, color)
            pooled = m.assign(w=m["value"] * m["n"]).groupby("level")[["w", "n"]].sum()
            ax.plot(pooled.index, pooled["w"] / pooled["n"], color=color, lw=2, marker="o", ms=3, label=method)
        ax.plot([0, 0.1], [0, 0.1], color="0.4", ls="--", lw=0.8)
        ax.set_xlabel("lfsr threshold")
        ax.set_title(source.removeprefix("mash:"), fontsize=9)
    axes[0][0].set_ylabel("realised false sign rate")
    axes[0][0].legend(frameon=False, fontsize=7)
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
    """Genes x days heatmap of posterior mean effects, diverging colours centred at 0.

    Each cell shows the mean and lfsr stars (:data:`STAR_LEVELS`); cells of ``called``
    (n, D) gene-days are outlined. Gene labels of ``emphasise`` (n,) rows are bold, the
    others grey (hits vs top-ranked non-hits).
    """
    mean, lfsr = np.asarray(mean, dtype=float), np.asarray(lfsr, dtype=float)
    n, n_days = mean.shape
    vmax = float(np.nanmax(np.abs(mean))) if mean.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    fig, ax = plt.subplots(figsize=(1.0 * n_days + 3.2, 0.3 * n + 1.6))
    im = ax.imshow(mean, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    stars = lfsr_stars(lfsr)
    shown = np.where(np.abs(mean) < 0.005, 0.0, mean)  # no "-0.00"
    for (i, j), m in np.ndenumerate(shown):
        ax.text(j, i, f"{m:+.2f}{stars[i, j]}" if m else "0", ha="center", va="center", fontsize=7,
                color="white" if abs(m) > 0.6 * vmax else "black")
    if called is not None:
        for i, j in zip(*np.nonzero(np.asarray(called, dtype=bool)), strict=True):
            ax.add_patch(plt.Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, lw=1.4, ec="black"))
    ax.set_xticks(np.arange(n_days), days)
    ax.set_yticks(np.arange(n), genes, fontsize=8)
    if emphasise is not None:
        for lab, strong in zip(ax.get_yticklabels(), np.asarray(emphasise, dtype=bool), strict=True):
            lab.set_fontweight("bold" if strong else "normal")
            lab.set_color("black" if strong else "0.45")
    ax.tick_params(length=0)
    ax.set_xlabel("day")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=min(1.0, 6 / max(n, 1) + 0.3), label="posterior mean (logit scale)")
    fig.tight_layout()
    return _save(fig, path, dpi=dpi)


def volcano_height(lfsr: np.ndarray, mean: np.ndarray, sd: np.ndarray | None = None, floor: float = 1e-300) -> np.ndarray:
    """-log10 lfsr, and where lfsr underflows (< ``floor``) the normal approximation -log10 P(Z > |mean| / SD).

    Such points are drawn at least at ``-log10 floor`` (their lfsr is below it), higher where
    the approximation says so, so that the strongest effects stay apart.
    """
    from scipy.stats import norm

    lfsr, mean = np.asarray(lfsr, dtype=float), np.asarray(mean, dtype=float)
    y = -np.log10(np.maximum(lfsr, floor))
    under = lfsr < floor
    if sd is not None and under.any():
        z = np.abs(mean) / np.maximum(np.asarray(sd, dtype=float), 1e-300)
        approx = -norm.logsf(z) / np.log(10.0)
        y = np.where(under, np.maximum(approx, -np.log10(floor)), y)
    return y


def place_labels(ax: plt.Axes, xs: np.ndarray, ys: np.ndarray, labels: list[str], fontsize: float = 7, pad_px: float = 1.5) -> list:
    """Name points without overlapping labels: each label starts beside its point and moves down past any it would hit.

    Labels are placed in order of decreasing height; a label that moved gets a thin line to its point.
    Labels right of the axes' centre are written to the left of their point.

    Returns
    -------
    list of matplotlib.text.Annotation
        The labels, in the order of ``labels``.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
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
        y0 = py - h / 2
        moved = True
        while moved:
            moved = False
            for a0, a1, b0, b1 in placed:
                if x0 < a1 + pad_px and x0 + w > a0 - pad_px and y0 < b1 + pad_px and y0 + h > b0 - pad_px:
                    y0 = b0 - pad_px - h
                    moved = True
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
    """One panel per day: posterior mean against -log10 lfsr on a log scale.

    Called gene-days (``called``, (n, D)) are coloured by sign and up to ``label_top`` per
    day (smallest lfsr first) are named with labels that do not overlap; dashed lines mark
    the lfsr threshold, dotted ones the effect size ``eps`` of the probability gate. lfsr
    that underflows (< 1e-300) is drawn as a triangle at the height of the normal
    approximation from ``sd`` (:func:`volcano_height`), so strong hits stay apart.
    """
    mean, lfsr = np.asarray(mean, dtype=float), np.asarray(lfsr, dtype=float)
    called = np.zeros(mean.shape, dtype=bool) if called is None else np.asarray(called, dtype=bool)
    y = volcano_height(lfsr, mean, sd)
    under = lfsr < 1e-300
    top = max(float(y.max()) if y.size else 1.0, -np.log10(lfsr_thresh)) * 1.6
    xmax = max(float(np.abs(mean).max()) if mean.size else 0.0, 2 * eps) * 1.25
    n_days = mean.shape[1]
    fig, axes = plt.subplots(1, n_days, figsize=(3.3 * n_days + 0.6, 4.0), sharey=True, squeeze=False)
    for j, ax in enumerate(axes[0]):
        colour = np.where(~called[:, j], "0.7", np.where(mean[:, j] > 0, "#b2182b", "#2166ac"))
        for shape, sel in (("o", ~under[:, j]), ("^", under[:, j])):
            ax.scatter(mean[sel, j], y[sel, j], c=colour[sel], s=np.where(called[sel, j], 22, 10), marker=shape, lw=0, zorder=3)
        ax.axhline(-np.log10(lfsr_thresh), color="0.3", ls="--", lw=0.8)
        for x in (-eps, eps):
            ax.axvline(x, color="0.3", ls=":", lw=0.8)
        ax.set_xlim(-xmax, xmax)
        ax.set_yscale("symlog", linthresh=1.0, linscale=0.6)
        ax.set_ylim(-0.08, top)
        ax.xaxis.set_major_locator(plt.MaxNLocator(5, symmetric=True))
        ax.grid(axis="y", color="0.92", lw=0.6)
        ax.set_title(f"{days[j]}: {int(called[:, j].sum())} called", fontsize=9)
        ax.set_xlabel(f"\u2190 {ref}   effect (logit)   {fate} \u2192" if fate and ref else "posterior mean (logit)", fontsize=8)
    axes[0][0].set_ylabel("-log10 lfsr (log scale)")
    fig.tight_layout(w_pad=1.5)
    if genes is not None:
        fig.canvas.draw()
        for j, ax in enumerate(axes[0]):
            idx = np.flatnonzero(called[:, j])
            idx = idx[np.lexsort((-y[idx, j], lfsr[idx, j]))][:label_top]
            if idx.size:
                place_labels(ax, mean[idx, j], y[idx, j], [str(genes[i]) for i in idx])
    return _save(fig, path, dpi=dpi)


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
    """For each gene a panel: its guides' effects by day beside the gene's mean +/- 2 SD.

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
    gene_mean, gene_sd = np.asarray(gene_mean, dtype=float), np.asarray(gene_sd, dtype=float)
    guide_gene, guide_mean = np.asarray(guide_gene).astype(str), np.asarray(guide_mean, dtype=float)
    k = len(genes)
    ncols = max(1, min(ncols, k))
    nrows = -(-k // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 2.5 * nrows + 0.4), squeeze=False)
    x = np.arange(len(days))
    for ax, (i, gene) in zip(axes.flat, enumerate(genes), strict=False):
        lo, hi = gene_mean[i] - 2 * gene_sd[i], gene_mean[i] + 2 * gene_sd[i]
        ax.fill_between(x, lo, hi, color="0.85", lw=0)
        rows = guide_mean[guide_gene == gene]
        offsets = np.linspace(-0.12, 0.12, len(rows)) if len(rows) > 1 else np.zeros(len(rows))
        if len(rows):
            ax.plot((x[None, :] + offsets[:, None]).T, rows.T, "-o", lw=0.8, ms=3, alpha=0.8, color="C1")
        ax.plot(x, gene_mean[i], "-o", color="black", lw=1.8, ms=4)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_xticks(x, days, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(titles[i] if titles else gene, fontsize=8.5)
    for ax in list(axes.flat)[k:]:
        ax.set_visible(False)
    handles = [
        plt.Line2D([], [], color="black", marker="o", lw=1.8, ms=4, label="gene: posterior mean"),
        plt.Rectangle((0, 0), 1, 1, color="0.85", label="gene: +/- 2 SD"),
        plt.Line2D([], [], color="C1", marker="o", lw=0.8, ms=3, label="its guides: posterior mean"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=3, frameon=False, fontsize=8)
    fig.supylabel("effect (logit scale)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.5 * nrows + 0.4)))
    return _save(fig, path, dpi=dpi)


def plot_qc_offsets(offsets: dict[str, np.ndarray], tol: float, path: str | Path, floor: float = 1e-18, dpi: int = 110) -> Path:
    """Histograms of log10 |value| of each QC quantity, with the tolerance marked.

    ``offsets`` maps a quantity's name to its values (any shape); exact zeros and values
    below ``floor`` are drawn at the floor.
    """
    names = list(offsets)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 2.9), squeeze=False)
    lo = np.log10(floor)
    for ax, name in zip(axes[0], names, strict=False):
        v = np.abs(np.asarray(offsets[name], dtype=float).ravel())
        v = v[np.isfinite(v)]
        logv = np.log10(np.maximum(v, floor))
        hi = max(float(logv.max()) if v.size else lo, np.log10(tol)) + 1
        ax.hist(logv, bins=np.linspace(lo - 0.5, hi, 40), color="C0")
        ax.axvline(np.log10(tol), color="#b2182b", lw=1.2, ls="--", label=f"tolerance {tol:g}")
        ax.set_xlabel("log10 |value|")
        ax.set_title(f"{name}: {int((v > tol).sum())} of {v.size} above tolerance", fontsize=9)
        ax.legend(frameon=False, fontsize=8)
    axes[0][0].set_ylabel("count")
    fig.tight_layout()
    return _save(fig, path, dpi=dpi)


def plot_ntc_qq(table, path: str | Path, dpi: int = 110) -> Path:
    """QQ plot of NTC pseudo-gene z-scores against N(0, 1): model-based and cluster-robust.

    ``table`` is ``ntc_calibration.csv`` (columns ``z_model``, ``z_robust``). Points on
    the diagonal mean calibrated standard errors; a line steeper than it means SEs that
    are too small (intervals too narrow, too many calls).
    """
    from scipy.stats import norm

    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    lim = 0.0
    for col, label, color in (("z_model", "model-based SE", "#b2182b"), ("z_robust", "cluster-robust SE", "#2166ac")):
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
    fig.tight_layout()
    return _save(fig, path, dpi=dpi)


def plot_mode_comparison(comparison, path: str | Path, dpi: int = 110) -> Path:
    """Hits per mash mode (``mash_mode_comparison.csv``), with the hits both modes share."""
    df = comparison.reset_index(drop=True)
    x = np.arange(len(df))
    n_hits = df["n_hits"].to_numpy(dtype=float)
    shared = np.nan_to_num(df["n_shared_hits"].to_numpy(dtype=float))
    fig, ax = plt.subplots(figsize=(1.6 * len(df) + 2.4, 3.0))
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
    fig.tight_layout()
    return _save(fig, path, dpi=dpi)


def plot_recovery(confusion, path: str | Path, dpi: int = 110) -> Path:
    """Recovery of a simulation's truth (``daywise_confusion.csv``): rates and counts per level."""
    df = confusion.reset_index(drop=True)
    x = np.arange(len(df))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(4.5 + 1.1 * len(df), 3.2))
    for k, (col, colour) in enumerate((("precision", "C0"), ("recall", "C2"), ("f1", "C4"))):
        vals = df[col].to_numpy(dtype=float)
        ax1.bar(x + (k - 1) * 0.26, np.nan_to_num(vals), width=0.26, color=colour, label=col)
        for xi in x[np.isnan(vals)]:
            ax1.text(xi + (k - 1) * 0.26, 0.02, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
    ax1.set_ylim(0, 1.25)
    ax1.set_xticks(x, df["level"])
    ax1.set_title("precision, recall, F1", fontsize=10)
    ax1.legend(frameon=False, fontsize=8, ncol=3, loc="upper center")
    bottom = np.zeros(len(df))
    for col, colour in (("tp", "C2"), ("fp", "#b2182b"), ("fn", "0.6")):
        vals = df[col].to_numpy(dtype=float)
        ax2.bar(x, vals, bottom=bottom, width=0.6, color=colour, label=col.upper())
        bottom += vals
    ax2.set_xticks(x, df["level"])
    ax2.set_title("true positives, false positives, false negatives", fontsize=10)
    ax2.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi=dpi)
