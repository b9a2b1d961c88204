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

from .io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_elbo(loss: np.ndarray, path: str | Path, n_cells: int | None = None, title: str = "SVI loss (negative ELBO)") -> Path:
    """The loss trace with a running mean; per cell when ``n_cells`` is given."""
    loss = np.asarray(loss, dtype=float)
    y = loss / n_cells if n_cells else loss
    steps = np.arange(1, len(y) + 1)
    w = max(len(y) // 50, 1)
    smooth = np.convolve(y, np.ones(w) / w, mode="valid")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, start in zip(axes, (0, len(y) // 2), strict=True):
        ax.plot(steps[start:], y[start:], lw=0.5, color="0.7", label="per step")
        s0 = max(start - w + 1, 0)
        ax.plot(steps[w - 1 :][s0:], smooth[s0:], lw=1.5, color="C0", label=f"running mean ({w})")
        ax.set_xlabel("step")
        ax.set_ylabel("loss per cell" if n_cells else "loss")
    axes[0].set_title(title)
    axes[1].set_title("second half")
    axes[0].legend(frameon=False)
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


def plot_calibration_coverage(summary, path: str | Path, source: str = "model") -> Path:
    """Interval coverage against the nominal level, one panel per truth group, a line per method.

    Thin lines are single scenarios, thick lines their mean.
    """
    df = summary[(summary["metric"] == "coverage") & (summary["source"] == source)]
    groups = [g for g in ("all", "effects", "nulls") if g in set(df["group"])]
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4.2 * max(len(groups), 1), 3.8), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=False):
        sub = df[df["group"] == group]
        for i, (method, m) in enumerate(sub.groupby("method", sort=False)):
            color = f"C{i}"
            for _, sc in m.groupby("scenario"):
                sc = sc.sort_values("level")
                ax.plot(sc["level"], sc["value"], color=color, lw=0.6, alpha=0.35)
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


def plot_calibration_fsr(summary, path: str | Path) -> Path:
    """Realised false sign rate of lfsr calls against the threshold, a panel per mash source."""
    df = summary[summary["metric"] == "fsr"]
    sources = sorted(set(df["source"]))
    fig, axes = plt.subplots(1, max(len(sources), 1), figsize=(3.6 * max(len(sources), 1), 3.6), squeeze=False, sharey=True)
    for ax, source in zip(axes[0], sources, strict=False):
        sub = df[df["source"] == source]
        for i, (method, m) in enumerate(sub.groupby("method", sort=False)):
            color = f"C{i}"
            for _, sc in m.groupby("scenario"):
                sc = sc.sort_values("level")
                ax.plot(sc["level"], sc["value"], color=color, lw=0.6, alpha=0.35)
            worst = m.groupby("level")["value"].max()
            ax.plot(worst.index, worst.values, color=color, lw=2, marker="o", ms=3, label=f"{method} (worst)")
        ax.plot([0, 0.1], [0, 0.1], color="0.4", ls="--", lw=0.8)
        ax.set_xlabel("lfsr threshold")
        ax.set_title(source.removeprefix("mash:"), fontsize=9)
    axes[0][0].set_ylabel("realised false sign rate")
    axes[0][0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
