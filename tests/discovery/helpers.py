"""Small hand-made daywise tables for the discovery-layer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[1] / "data" / "discovery"


def mash_table(
    genes: list[str],
    postmean: list[list[float]],
    postsd: list[list[float]],
    lfsr: list[list[float]],
    days: list[str] | None = None,
    guides: list[str] | None = None,
) -> pd.DataFrame:
    """A mash-style table: [guide,] gene, then postmean/postsd/lfsr interleaved per day."""
    m, s, f = (np.asarray(x, dtype=float) for x in (postmean, postsd, lfsr))
    days = days or [f"d{j}" for j in range(m.shape[1])]
    cols: dict[str, object] = {}
    if guides is not None:
        cols["guide"] = guides
    cols["gene"] = genes
    for j, day in enumerate(days):
        cols[f"postmean_{day}"] = m[:, j]
        cols[f"postsd_{day}"] = s[:, j]
        cols[f"lfsr_{day}"] = f[:, j]
    return pd.DataFrame(cols)


def strong(n_days: int, lfsr: list[float], effect: float = 1.0, sd: float = 0.01, genes: list[str] | None = None
           ) -> pd.DataFrame:
    """One gene per entry of ``lfsr``: that lfsr on day 0, lfsr 0.9 elsewhere, big effects (plarge = 1)."""
    n = len(lfsr)
    f = np.full((n, n_days), 0.9)
    f[:, 0] = lfsr
    return mash_table(
        genes or [f"G{i}" for i in range(n)],
        np.full((n, n_days), effect).tolist(),
        np.full((n, n_days), sd).tolist(),
        f.tolist(),
    )
