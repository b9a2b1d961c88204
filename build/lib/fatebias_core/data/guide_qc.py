"""Assignment QC: what the guide data say before any fit (docs/method.md, "Guide assignment QC").

:func:`guide_qc` summarises the cell-by-guide detection matrix of every cell of the
AnnData (before any cell is dropped), with the UMI counts where the source has them:

* guides per cell (the MOI) and cells per guide; cells without any guide;
* the NTC share (of all detected guides, and of cells carrying one);
* per guide and batch (replicate): the cells assigned, the UMI distribution of the
  assigned entries and of the non-zero entries left unassigned, the threshold (the
  smallest assigned count; crispat's fitted threshold beside it where it reports one);
* per guide and batch with at least :data:`MIN_CELLS_DETECTION` assigned cells, an
  estimate of the guide's detection: the share of the cells carrying it in which it is
  seen at or above its threshold, from a Poisson fitted to the assigned counts truncated
  at the threshold (E[X | X >= t] = mean of the assigned counts; detection = P(X >= t)).
  Real guide counts are overdispersed, so this is an upper bound; the load summary's clone
  line gives the complementary estimate from sister cells.

Everything is computed with sorts and bincounts over the stored entries, no loop over
cells or guides: at 200,000 cells and 2,000 guides it takes well under a second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import gammainc

from fatebias_core.data.assignment import GuideFiles
from fatebias_core.data.guide_sources import GuideInput

__all__ = ["guide_qc", "guide_report", "per_guide_table", "truncated_poisson_detection", "MIN_CELLS_DETECTION"]

#: Guides (per batch) with fewer assigned cells get no detection estimate.
MIN_CELLS_DETECTION = 20
#: Guides per cell buckets of the MOI histogram: lower bounds.
MOI_BUCKETS = (0, 1, 2, 5, 10)


def _quantiles(keys: np.ndarray, values: np.ndarray, n_keys: int, qs: tuple[float, ...]) -> np.ndarray:
    """(len(qs), n_keys) linear-interpolation quantiles of ``values`` within each key (NaN for empty keys).

    ``keys`` and ``values`` must be sorted by (key, value).
    """
    counts = np.bincount(keys, minlength=n_keys)
    starts = np.cumsum(counts) - counts
    out = np.full((len(qs), n_keys), np.nan)
    has = counts > 0
    if not values.size:
        return out
    for i, q in enumerate(qs):  # a handful of quantiles
        pos = q * (counts[has] - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.ceil(pos).astype(np.int64)
        v_lo = values[starts[has] + lo]
        v_hi = values[starts[has] + hi]
        out[i, has] = v_lo + (pos - lo) * (v_hi - v_lo)
    return out


def _order(seg: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The order sorting entries by (segment, value): one integer sort when the values are small whole numbers."""
    top = float(values.max(initial=0.0))
    if values.size and top < 2**24 and np.all(values == np.round(values)) and values.min() >= 0:
        return np.argsort(seg.astype(np.int64) * 2**24 + values.astype(np.int64))
    return np.lexsort((values, seg))


def truncated_poisson_detection(mean: np.ndarray, threshold: np.ndarray, iterations: int = 60) -> np.ndarray:
    """P(X >= t) for the Poisson whose mean above t (E[X | X >= t]) is ``mean`` (vectorised bisection on its rate).

    E[X | X >= t] = lam P(X >= t - 1) / P(X >= t) increases with lam from t to infinity, and
    is at least lam, so lam lies in (0, mean]. NaN where ``mean`` or ``threshold`` is NaN
    or the threshold is below 1.
    """
    mean = np.asarray(mean, dtype=np.float64)
    t = np.asarray(threshold, dtype=np.float64)
    ok = np.isfinite(mean) & np.isfinite(t) & (t >= 1) & (mean >= t)
    m, tt = np.where(ok, mean, 2.0), np.where(ok, t, 1.0)
    lo, hi = np.full(m.shape, 1e-9), m.copy()

    def cond_mean(lam: np.ndarray) -> np.ndarray:
        above_prev = np.where(tt > 1, gammainc(np.maximum(tt - 1, 1e-12), lam), 1.0)
        return lam * above_prev / np.maximum(gammainc(tt, lam), 1e-300)

    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        high = cond_mean(mid) > m
        hi = np.where(high, mid, hi)
        lo = np.where(high, lo, mid)
    return np.where(ok, gammainc(tt, 0.5 * (lo + hi)), np.nan)


def _entry_table(detected: sp.csr_matrix, counts: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns, values and assigned flags of the stored entries (of ``counts``, else of ``detected``)."""
    base = detected if counts is None else counts
    rows = np.repeat(np.arange(base.shape[0], dtype=np.int64), np.diff(base.indptr))
    cols = base.indices.astype(np.int64)
    if counts is None:
        return rows, cols, np.ones(rows.size), np.ones(rows.size, dtype=bool)
    if np.array_equal(counts.indptr, detected.indptr) and np.array_equal(counts.indices, detected.indices):
        return rows, cols, counts.data.astype(np.float64), np.ones(rows.size, dtype=bool)  # every entry detected
    n_cols = base.shape[1]
    d_rows = np.repeat(np.arange(detected.shape[0], dtype=np.int64), np.diff(detected.indptr))
    d_keys = np.sort(d_rows * n_cols + detected.indices.astype(np.int64))
    keys = rows * n_cols + cols
    pos = np.searchsorted(d_keys, keys)
    assigned = (pos < d_keys.size) & (d_keys[np.minimum(pos, d_keys.size - 1)] == keys)
    return rows, cols, counts.data.astype(np.float64), assigned


def per_guide_table(
    detected: sp.csr_matrix,
    counts: sp.csr_matrix | None,
    guides: list[str],
    batches: np.ndarray,
    is_ntc: np.ndarray,
    library_thresholds: pd.DataFrame | None = None,
    entries: tuple[np.ndarray, ...] | None = None,
) -> pd.DataFrame:
    """One row per guide and batch: cells assigned, UMI summaries, threshold, detection estimate.

    Columns: ``guide, batch, is_ntc, cells_assigned, cells_with_counts, threshold,
    library_threshold, umi_median_assigned, umi_q10_assigned, umi_q90_assigned,
    umi_median_unassigned, detection_estimate`` (UMI columns NaN without counts).
    """
    batch_codes, batch_labels = pd.factorize(np.asarray(batches, dtype=object).astype(str), sort=True)
    n_b, n_g = len(batch_labels), len(guides)
    n_keys = n_g * n_b
    rows, cols, values, assigned = entries if entries is not None else _entry_table(detected, counts)
    group = cols * n_b + batch_codes[rows]
    d_rows = np.repeat(np.arange(detected.shape[0], dtype=np.int64), np.diff(detected.indptr))
    cells_assigned = np.bincount(detected.indices.astype(np.int64) * n_b + batch_codes[d_rows], minlength=n_keys)
    table = pd.DataFrame({
        "guide": np.repeat(np.asarray(guides, dtype=object), n_b),
        "batch": np.tile(np.asarray(batch_labels, dtype=object), n_g),
        "is_ntc": np.repeat(np.asarray(is_ntc, dtype=bool), n_b),
        "cells_assigned": cells_assigned,
    })
    if counts is None:
        for col in ("cells_with_counts", "threshold", "umi_median_assigned", "umi_q10_assigned", "umi_q90_assigned",
                    "umi_median_unassigned", "detection_estimate"):
            table[col] = np.nan
    else:
        table["cells_with_counts"] = np.bincount(group, minlength=n_keys)
        seg = group * 2 + assigned
        order = _order(seg, values)
        q = _quantiles(seg[order], values[order], 2 * n_keys, (0.0, 0.1, 0.5, 0.9))
        table["threshold"] = q[0, 1::2]
        table["umi_median_assigned"] = q[2, 1::2]
        table["umi_q10_assigned"] = q[1, 1::2]
        table["umi_q90_assigned"] = q[3, 1::2]
        table["umi_median_unassigned"] = q[2, 0::2]
        sums = np.bincount(group[assigned], weights=values[assigned], minlength=n_keys)
        n_ass = np.bincount(group[assigned], minlength=n_keys)
        mean = np.where(n_ass >= MIN_CELLS_DETECTION, sums / np.maximum(n_ass, 1), np.nan)
        table["detection_estimate"] = truncated_poisson_detection(mean, table["threshold"].to_numpy())
    table.insert(6, "library_threshold", np.nan)
    if library_thresholds is not None and len(library_thresholds):
        lib = library_thresholds.drop_duplicates(["guide", "batch"]).set_index(["guide", "batch"])["library_threshold"]
        overall = library_thresholds.groupby("guide")["library_threshold"].first()
        keyed = pd.MultiIndex.from_arrays([table["guide"], table["batch"]])
        found = lib.reindex(keyed).to_numpy()
        table["library_threshold"] = np.where(np.isfinite(found), found, overall.reindex(table["guide"]).to_numpy())
    return table


def _share(n: float, d: float) -> float:
    return round(float(n) / float(d), 4) if d else 0.0


def guide_qc(
    detected: sp.csr_matrix,
    counts: sp.csr_matrix | None,
    per_guide: pd.DataFrame,
    is_ntc: np.ndarray,
    threshold_from: str,
    entries: tuple[np.ndarray, ...] | None = None,
) -> dict:
    """The assignment QC summary (module docstring), JSON-friendly.

    Parameters
    ----------
    detected
        (N, J) CSR, non-zero = detected.
    counts
        (N, J) CSR UMI counts (None: none).
    per_guide
        :func:`per_guide_table`.
    is_ntc
        (J,) NTC guides.
    threshold_from
        What the thresholds are (``smallest assigned count``, ...).
    """
    n, j = detected.shape
    moi = np.diff(detected.indptr)
    bounds = [*MOI_BUCKETS, np.inf]
    hist = {
        (f"{lo}" if hi - lo == 1 else f"{lo}+" if not np.isfinite(hi) else f"{lo}-{int(hi) - 1}"): _share(((moi >= lo) & (moi < hi)).sum(), n)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    }
    per_guide_cells = np.bincount(detected.indices, minlength=j)
    ntc_cols = np.flatnonzero(np.asarray(is_ntc, dtype=bool))
    ntc_entries = int(np.isin(detected.indices, ntc_cols).sum())
    cells_with_ntc = int(np.bincount(
        np.repeat(np.arange(n), moi)[np.isin(detected.indices, ntc_cols)], minlength=n
    ).astype(bool).sum()) if n else 0
    qc: dict = {
        "n_cells": int(n),
        "n_guides": int(j),
        "guides_per_cell": {
            "mean": round(float(moi.mean()), 3) if n else 0.0,
            "median": float(np.median(moi)) if n else 0.0,
            "p90": float(np.quantile(moi, 0.9)) if n else 0.0,
            "max": int(moi.max(initial=0)),
            "share_of_cells": hist,
        },
        "cells_without_guides": int((moi == 0).sum()),
        "cells_per_guide": {
            "min": int(per_guide_cells.min()) if j else 0,
            "median": float(np.median(per_guide_cells)) if j else 0.0,
            "max": int(per_guide_cells.max(initial=0)),
            "guides_under_10_cells": int((per_guide_cells < 10).sum()),
            "guides_without_cells": [str(g) for g in np.asarray(per_guide["guide"].unique())[per_guide_cells == 0][:10]],
        },
        "ntc": {"share_of_detected": _share(ntc_entries, detected.nnz), "share_of_cells": _share(cells_with_ntc, n)},
    }
    if counts is not None and counts.nnz:
        _, _, values, assigned = entries if entries is not None else _entry_table(detected, counts)
        a = values[assigned]
        qc["umis"] = {
            "assigned_median": float(np.median(a)) if a.size else None,
            "assigned_q10": float(np.quantile(a, 0.1)) if a.size else None,
            "assigned_q90": float(np.quantile(a, 0.9)) if a.size else None,
            "unassigned_share_of_nonzero": _share((~assigned).sum(), values.size),
            "unassigned_median": float(np.median(values[~assigned])) if (~assigned).any() else None,
        }
        thr = per_guide["threshold"].dropna()
        qc["thresholds"] = {
            "from": threshold_from,
            "median": float(thr.median()) if len(thr) else None,
            "min": float(thr.min()) if len(thr) else None,
            "max": float(thr.max()) if len(thr) else None,
        }
        lib = per_guide["library_threshold"].dropna()
        if len(lib):
            qc["thresholds"]["library_median"] = float(lib.median())
        det = per_guide["detection_estimate"].dropna()
        qc["detection"] = {
            "method": f"Poisson truncated at the threshold, fitted to the assigned counts (guide x batch with >= {MIN_CELLS_DETECTION} cells)",
            "n_estimated": int(len(det)),
            "median": round(float(det.median()), 4) if len(det) else None,
            "q10": round(float(det.quantile(0.1)), 4) if len(det) else None,
        }
    return qc


#: What a guide source's thresholds are (the smallest count among the entries taken as detected).
THRESHOLD_FROM = {
    "cellranger_calls": "smallest called count",
    "obsm": "smallest non-zero count",
}


def guide_report(guides: GuideInput, gmap: pd.DataFrame, cells: np.ndarray) -> tuple[dict, GuideFiles | None]:
    """The load summary's ``guide_input`` (the source's report and the QC) and the files to write beside the run.

    Parameters
    ----------
    guides
        What :func:`fatebias_core.data.guide_sources.read_guides` read.
    gmap
        The validated guide map (for the NTC guides).
    cells
        (N,) the AnnData's cell names.

    Returns
    -------
    info, files
        ``files`` is None for the obsm detection matrix (nothing new to write).
    """
    ntc_names = gmap.loc[gmap["is_ntc"].to_numpy(dtype=bool), "guide_name"]
    is_ntc = np.isin(np.asarray(guides.guides, dtype=object), ntc_names.to_numpy(dtype=object))
    source = guides.report.get("source", "obsm")
    lib = guides.assignment.library_thresholds if guides.assignment is not None else None
    entries = _entry_table(guides.detected, guides.counts)
    table = per_guide_table(guides.detected, guides.counts, guides.guides, guides.batches, is_ntc, lib, entries)
    qc = guide_qc(guides.detected, guides.counts, table, is_ntc, THRESHOLD_FROM.get(source, "smallest assigned count"), entries)
    info = {**guides.report, "qc": qc}
    if source == "obsm":
        return info, None
    provenance = {"source": source, "where": guides.report.get("where", "")}
    if guides.assignment is not None:
        provenance.update(guides.assignment.describe())
    files = GuideFiles(
        detected=guides.detected,
        counts=guides.counts,
        cells=np.asarray(cells, dtype=object),
        guides=list(guides.guides),
        per_guide=table,
        info=provenance,
        library_thresholds=lib if lib is not None else pd.DataFrame(),
    )
    return info, files
