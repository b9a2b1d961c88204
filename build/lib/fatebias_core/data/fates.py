"""The fate probabilities: the matrix matched to the configured fates by name, and its cleaning.

Fate columns are matched to ``config.fates`` by name and stored in that order. Names
come from, in order: the columns of an obsm DataFrame; the ``names`` of an in-memory
CellRank ``Lineage``; ``uns[f"{key}_names"]`` (CellRank 1); the categories of
``obs["term_states_<dir>"]`` for a key ``lineages_<dir>`` (CellRank 2 on disk). Only
where none of these exist is the configured order assumed, with a warning.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fatebias_core.config import FatebiasConfig
from fatebias_core.data.adata_access import AnnDataSource
from fatebias_core.errors import InputDataError, listing


def _fate_names(src: AnnDataSource, key: str, value: Any, n_cols: int) -> tuple[list[str] | None, str]:
    """Names of the fate columns and where they came from (None: no names anywhere)."""
    if isinstance(value, pd.DataFrame):
        return [str(c) for c in value.columns], f"obsm[{key!r}] DataFrame columns"
    names = getattr(value, "names", None)  # an in-memory CellRank Lineage
    if names is not None and len(names) == n_cols:
        return [str(n) for n in names], f"obsm[{key!r}] Lineage names"
    uns_names = src.uns(f"{key}_names")
    if uns_names is not None:
        uns_names = [str(n) for n in np.atleast_1d(np.asarray(uns_names))]
        if len(uns_names) != n_cols:
            raise InputDataError(
                f"{src.source}: uns[{key + '_names'!r}] has {len(uns_names)} names but "
                f"obsm[{key!r}] has {n_cols} columns"
            )
        return uns_names, f"uns[{key + '_names'!r}] (CellRank 1)"
    if key.startswith("lineages_"):
        states_key = "term_states_" + key.removeprefix("lineages_")
        if states_key in src.obs_keys():
            states = src.obs(states_key)
            if isinstance(states.dtype, pd.CategoricalDtype):
                cats = [str(c) for c in states.cat.categories]
                if len(cats) != n_cols:
                    raise InputDataError(
                        f"{src.source}: obs[{states_key!r}] has {len(cats)} categories but "
                        f"obsm[{key!r}] has {n_cols} columns; cannot name the fate columns"
                    )
                return cats, f"obs[{states_key!r}] categories (CellRank 2)"
    return None, ""


def fate_matrix(src: AnnDataSource, config: FatebiasConfig) -> tuple[np.ndarray, str]:
    """(N, F) float64 fate probabilities in ``config.fates`` order, unvalidated."""
    key = config.fate_prob_key
    value = src.require_obsm(key, "fate_prob_key")
    arr = value.to_numpy() if isinstance(value, pd.DataFrame) else value
    if sp.issparse(arr):
        arr = arr.toarray()
    try:
        arr = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputDataError(f"{src.source}: obsm[{key!r}] is not numeric") from None
    if arr.ndim != 2 or arr.shape[0] != src.n_obs:
        raise InputDataError(
            f"{src.source}: obsm[{key!r}] has shape {arr.shape}, expected ({src.n_obs}, n_fates)"
        )
    names, origin = _fate_names(src, key, value, arr.shape[1])
    fates = list(config.fates)
    if names is None:
        if arr.shape[1] != len(fates):
            raise InputDataError(
                f"{src.source}: obsm[{key!r}] has {arr.shape[1]} unnamed columns but "
                f"{len(fates)} fates are configured ({', '.join(fates)})"
            )
        warnings.warn(
            f"{src.source}: no fate names for obsm[{key!r}]; assuming the configured order "
            f"{', '.join(fates)}",
            UserWarning,
            stacklevel=3,
        )
        return arr, "configured order (no names in the file)"
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputDataError(f"{src.source}: fate names of obsm[{key!r}] repeat: {listing(dup)}")
    absent = [f for f in fates if f not in names]
    if absent:
        raise InputDataError(
            f"{src.source}: configured fates {listing(absent)} not in obsm[{key!r}] "
            f"(fates in the file: {listing(names)})"
        )
    extra = [n for n in names if n not in fates]
    if extra:
        # Dropping their probability mass would silently change every contrast.
        raise InputDataError(
            f"{src.source}: obsm[{key!r}] has fates {listing(extra)} that are not configured; "
            f"list every fate of the file in 'fates' (file has {listing(names)})"
        )
    order = [names.index(f) for f in fates]
    return arr[:, order], origin


#: Why a fate-probability row is invalid, by code (0: valid).
FATE_ROW_REASONS = {
    1: "fate probabilities NaN or infinite",
    2: "fate probabilities negative",
    3: "fate probabilities do not sum to 1",
}
#: The setting that drops invalid cells instead of failing (named in the errors).
DROP_HINT = "set drop_invalid_cells: true to drop such cells and list them in dropped_cells.csv"


def fate_row_problems(probs: np.ndarray, tol: float) -> np.ndarray:
    """Per row, why its fate probabilities are invalid (a :data:`FATE_ROW_REASONS` code, 0: valid).

    A row is invalid when an entry is NaN or infinite (1), an entry is below ``-tol``
    (2), or, after clipping entries in ``[-tol, 0)`` to 0, its sum is further than
    ``tol`` from 1 (3); the first of these that applies is the reason.
    """
    probs = np.asarray(probs, dtype=np.float64)
    finite = np.isfinite(probs).all(axis=1)
    with np.errstate(invalid="ignore"):
        negative = finite & (probs < -tol).any(axis=1)
        sums = np.where(np.isfinite(probs), np.maximum(probs, 0.0), 0.0).sum(axis=1)
    off = finite & ~negative & (np.abs(sums - 1.0) > tol)
    return np.select([~finite, negative, off], [1, 2, 3], 0).astype(np.int8)


def clean_fate_probs(
    probs: np.ndarray, tol: float, what: str = "fate probabilities", drop: bool = False
) -> tuple[np.ndarray, int]:
    """Validate fate probability rows and remove small numerical drift.

    Entries in ``[-tol, 0)`` are set to 0 and every row is divided by its sum. Rows
    with a NaN or infinite entry, an entry below ``-tol``, or a sum further than
    ``tol`` from 1 are rejected (see :func:`fate_row_problems`).

    Parameters
    ----------
    probs
        (N, F) probabilities.
    tol
        Tolerance (``fate_sum_tol``).
    what
        Name for error messages (file and key).
    drop
        Return invalid rows as uniform placeholders instead of raising (the caller
        drops them; :func:`fate_row_problems` says which).

    Returns
    -------
    probs, n_renormalised
        (N, F) float32 rows summing to 1, and the number of valid rows whose sum was
        off 1 by more than float32 rounding (1e-6) or that had a negative entry clipped.

    Raises
    ------
    InputDataError
        Without ``drop``: naming the number of rejected rows of the first kind found,
        ``what``, and the setting that drops them.
    """
    probs = np.asarray(probs, dtype=np.float64)
    problem = fate_row_problems(probs, tol)
    if not drop and problem.any():
        n = len(probs)
        code = int(problem[problem > 0].min())
        count = int((problem == code).sum())
        if code == 1:
            detail = f"{count} of {n} rows contain NaN or infinite values"
        elif code == 2:
            detail = f"{count} of {n} rows have entries below -{tol:g} (min {np.nanmin(probs[problem == 2]):.3g})"
        else:
            sums = np.maximum(probs[problem == 3], 0.0).sum(axis=1)
            worst = sums[np.argmax(np.abs(sums - 1.0))]
            detail = f"{count} of {n} rows do not sum to 1 within fate_sum_tol={tol:g} (worst row sum {worst:.6g})"
        raise InputDataError(f"{what}: {detail}; {DROP_HINT}")
    valid = problem == 0
    probs = np.where(valid[:, None], probs, 1.0 / max(probs.shape[1], 1))
    clipped = (probs < 0).any(axis=1)
    probs = np.maximum(probs, 0.0)
    sums = probs.sum(axis=1)
    n_renorm = int((valid & (clipped | (np.abs(sums - 1.0) > 1e-6))).sum())
    return (probs / sums[:, None]).astype(np.float32), n_renorm
