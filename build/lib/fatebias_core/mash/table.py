"""Daywise effect tables in and out: validation, the seed's output layout, CSV files.

Input: ``betahat_<day>`` and ``se_<day>`` for two or more days, any other columns
(``gene``, ``guide``, ...) carried through. Output: the input columns, then per day
``postmean_<day>, postsd_<day>, lfsr_<day>``, then ``lfsr_min`` and ``best_day`` (as
the seed's ``mash_gene_<mode>.csv`` / ``mash_guide_<mode>.csv``), then
``plarge_<day>`` per day, P(|effect| >= eps) under the posterior mixture, and
``plarge_eps``, that eps (the same on every row).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fatebias_core.errors import InputDataError

BETA_PREFIX = "betahat_"
SE_PREFIX = "se_"
OUTPUT_PREFIXES = ("postmean_", "postsd_", "lfsr_")
PLARGE_PREFIX = "plarge_"
#: Column holding the eps of the ``plarge_<day>`` columns.
PLARGE_EPS = "plarge_eps"


@dataclass(frozen=True)
class DaywiseTable:
    """A validated daywise table.

    Attributes
    ----------
    days
        Day suffixes in column order (``("d0", "d1", ...)``).
    Bhat, Shat
        (J, R) estimates and standard errors.
    day_numbers
        The integer of each day (``d2`` -> 2; the column position when a suffix has
        no number).
    """

    days: tuple[str, ...]
    Bhat: np.ndarray
    Shat: np.ndarray
    day_numbers: tuple[int, ...]


def parse_daywise(df: pd.DataFrame, what: str = "mash input") -> DaywiseTable:
    """Find and validate the ``betahat_*`` / ``se_*`` columns of ``df``.

    Raises
    ------
    InputDataError
        No rows or fewer than 2, fewer than 2 days, unpaired day columns, output
        columns already present, non-numeric values, NaN/infinite estimates,
        non-positive/NaN/infinite standard errors (naming the rows and columns).
    """
    if df.shape[1] == 0 or df.shape[0] == 0:
        raise InputDataError(f"{what} is empty (no rows)")
    if df.shape[0] < 2:
        raise InputDataError(f"{what} has {df.shape[0]} row; mash needs at least 2")
    cols = [str(c) for c in df.columns]
    days = [c[len(BETA_PREFIX):] for c in cols if c.startswith(BETA_PREFIX)]
    se_days = [c[len(SE_PREFIX):] for c in cols if c.startswith(SE_PREFIX)]
    if not days:
        raise InputDataError(f"{what} has no betahat_<day> columns (columns: {', '.join(cols)})")
    missing_se = [d for d in days if d not in se_days]
    missing_b = [d for d in se_days if d not in days]
    if missing_se or missing_b:
        parts = []
        if missing_se:
            parts.append("no se_ column for " + ", ".join(BETA_PREFIX + d for d in missing_se))
        if missing_b:
            parts.append("no betahat_ column for " + ", ".join(SE_PREFIX + d for d in missing_b))
        raise InputDataError(f"{what}: mismatched day columns: {'; '.join(parts)}")
    if len(set(days)) != len(days):
        raise InputDataError(f"{what}: duplicated betahat_ columns")
    if len(days) < 2:
        raise InputDataError(f"{what} has {len(days)} day ({BETA_PREFIX}{days[0]}); mash needs at least 2 conditions")
    taken = [p + d for d in days for p in (*OUTPUT_PREFIXES, PLARGE_PREFIX)] + ["lfsr_min", "best_day", PLARGE_EPS]
    clash = [c for c in taken if c in cols]
    if clash:
        raise InputDataError(f"{what} already has output column(s) {', '.join(clash[:6])}")
    B = _numeric_block(df, [BETA_PREFIX + d for d in days], what)
    S = _numeric_block(df, [SE_PREFIX + d for d in days], what)
    _report_bad(df, B, ~np.isfinite(B), [BETA_PREFIX + d for d in days], "NaN or infinite", what)
    _report_bad(df, S, ~(np.isfinite(S) & (S > 0)), [SE_PREFIX + d for d in days], "not a positive finite number", what)
    return DaywiseTable(tuple(days), B, S, day_numbers(days))


def day_numbers(days: list[str] | tuple[str, ...]) -> tuple[int, ...]:
    """The integer in each day suffix (``d2`` -> 2), or the column position if any suffix lacks one."""
    found = [re.search(r"(\d+)\s*$", d) for d in days]
    if all(found) and len({int(m.group(1)) for m in found}) == len(days):  # type: ignore[union-attr]
        return tuple(int(m.group(1)) for m in found)  # type: ignore[union-attr]
    return tuple(range(len(days)))


def assemble_output(
    df: pd.DataFrame,
    table: DaywiseTable,
    mean: np.ndarray,
    sd: np.ndarray,
    lfsr: np.ndarray,
    plarge: np.ndarray | None = None,
    eps: float | None = None,
) -> pd.DataFrame:
    """Input columns, then postmean/postsd/lfsr per day (interleaved), lfsr_min, best_day,
    and (with ``plarge``) plarge per day and plarge_eps."""
    out = df.copy()
    new: dict[str, np.ndarray] = {}
    for r, d in enumerate(table.days):
        new[f"postmean_{d}"] = mean[:, r]
        new[f"postsd_{d}"] = sd[:, r]
        new[f"lfsr_{d}"] = lfsr[:, r]
    new["lfsr_min"] = lfsr.min(axis=1)
    # argmin takes the first minimum: ties go to the earliest day
    new["best_day"] = np.asarray(table.day_numbers, dtype=np.int64)[np.argmin(lfsr, axis=1)]
    if plarge is not None:
        for r, d in enumerate(table.days):
            new[PLARGE_PREFIX + d] = plarge[:, r]
        new[PLARGE_EPS] = np.full(lfsr.shape[0], float(eps) if eps is not None else np.nan)
    return pd.concat([out.reset_index(drop=True), pd.DataFrame(new)], axis=1)


def parse_ash_input(df: pd.DataFrame, what: str = "ash input") -> tuple[np.ndarray, np.ndarray]:
    """The ``betahat`` and ``sebetahat`` columns of an across-day summary, validated."""
    if df.shape[0] == 0:
        raise InputDataError(f"{what} is empty (no rows)")
    missing = [c for c in ("betahat", "sebetahat") if c not in df.columns]
    if missing:
        raise InputDataError(f"{what} lacks column(s) {', '.join(missing)} (columns: {', '.join(map(str, df.columns))})")
    clash = [c for c in ("postmean", "postsd", "lfsr", "qvalue") if c in df.columns]
    if clash:
        raise InputDataError(f"{what} already has output column(s) {', '.join(clash)}")
    B = _numeric_block(df, ["betahat"], what)
    S = _numeric_block(df, ["sebetahat"], what)
    _report_bad(df, B, ~np.isfinite(B), ["betahat"], "NaN or infinite", what)
    _report_bad(df, S, ~(np.isfinite(S) & (S > 0)), ["sebetahat"], "not a positive finite number", what)
    return B[:, 0], S[:, 0]


def _numeric_block(df: pd.DataFrame, cols: list[str], what: str) -> np.ndarray:
    out = np.empty((df.shape[0], len(cols)))
    for i, c in enumerate(cols):
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.isna() & df[c].notna()
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())
            raise InputDataError(
                f"{what}: column {c} is not numeric in {rows.size} row(s): {_row_labels(df, rows)}"
                f" (e.g. {df[c].iloc[rows[0]]!r})"
            )
        out[:, i] = values.to_numpy(dtype=np.float64)
    return out


def _report_bad(df: pd.DataFrame, X: np.ndarray, bad: np.ndarray, cols: list[str], problem: str, what: str) -> None:
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    bad_cols = [c for c, b in zip(cols, bad.any(axis=0), strict=True) if b]
    raise InputDataError(
        f"{what}: {', '.join(bad_cols)} {problem} in {rows.size} row(s): {_row_labels(df, rows)}"
    )


def _row_labels(df: pd.DataFrame, rows: np.ndarray, limit: int = 6) -> str:
    """Data-row numbers (1-based, header excluded) with the first text column's value."""
    id_col = next(
        (c for c in df.columns if df[c].dtype == object and not str(c).startswith((BETA_PREFIX, SE_PREFIX))),
        None,
    )
    labels = []
    for r in rows[:limit]:
        lab = f"{int(r) + 1}"
        if id_col is not None:
            lab += f" ({id_col}={df[id_col].iloc[int(r)]})"
        labels.append(lab)
    more = f", ... ({rows.size} in all)" if rows.size > limit else ""
    return ", ".join(labels) + more
