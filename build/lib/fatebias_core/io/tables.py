"""Daywise table conventions shared by mash, aggregation, hit calling and scoring.

A daywise table carries one column per day and quantity, named ``<quantity>_<day>``:
``betahat_d0``, ``se_d0``, ``postmean_d0``, ``postsd_d0``, ``lfsr_d0``, ... The day is
the column suffix (``d0``); its *number* is the last run of digits in the suffix
(``d2`` -> 2, ``day10`` -> 10). Days are ordered by number, never by column position
or by string order, so ``d10`` follows ``d9``. Suffixes without digits (``lfsr_min``)
are not days.

Everything here validates and raises :class:`~fatebias_core.errors.InputDataError`
with one line naming the table, the column and the row counts at fault.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fatebias_core.errors import InputDataError

_DIGITS = re.compile(r"(\d+)(?!.*\d)")


@dataclass(frozen=True)
class DayAxis:
    """The days of a daywise table, in day order.

    Attributes
    ----------
    labels
        Column suffixes in day order (``("d0", "d1", "d2")``).
    numbers
        Day numbers parsed from the suffixes (``(0, 1, 2)``); ``None`` for a pseudo-day
        such as the across-day summary ``"sum"``.
    """

    labels: tuple[str, ...]
    numbers: tuple[int | None, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def keys(self) -> tuple[str, ...]:
        """How a day is written in day lists (``active_days``): its number, else its label."""
        return tuple(lab if num is None else str(num) for lab, num in zip(self.labels, self.numbers, strict=True))

    @property
    def is_numbered(self) -> bool:
        """True when every day has a number (a real daywise table, not a pseudo-day)."""
        return all(num is not None for num in self.numbers)

    def columns(self, prefix: str) -> list[str]:
        """Column names ``<prefix>_<label>`` in day order."""
        return [f"{prefix}_{lab}" for lab in self.labels]

    @classmethod
    def pseudo(cls, label: str = "sum") -> DayAxis:
        """A single unnumbered pseudo-day (the ash across-day summary)."""
        return cls(labels=(label,), numbers=(None,))


@dataclass(frozen=True)
class DaywisePosterior:
    """Posterior mean, SD and lfsr per row and day, validated.

    Attributes
    ----------
    axis
        The days, in column order of the arrays.
    postmean, postsd, lfsr
        (n_rows, n_days) float64 arrays; ``postsd >= 0`` and ``0 <= lfsr <= 1``, no NaN.
    """

    axis: DayAxis
    postmean: np.ndarray
    postsd: np.ndarray
    lfsr: np.ndarray


def day_number(label: str) -> int | None:
    """The day number of a column suffix: its last run of digits (``"d2"`` -> 2), else None."""
    match = _DIGITS.search(label)
    return int(match.group(1)) if match else None


def day_axis(columns: Iterable[str], prefix: str, what: str = "table", min_days: int = 1) -> DayAxis:
    """Find the days of a table from its ``<prefix>_<day>`` columns.

    Parameters
    ----------
    columns
        The table's column names.
    prefix
        Quantity whose columns define the days (``"postmean"``, ``"betahat"``, ``"true"``).
    what
        The table's name for error messages (a file name).
    min_days
        Fewest days accepted.

    Returns
    -------
    DayAxis
        Days ordered by number.

    Raises
    ------
    InputDataError
        Too few ``<prefix>_<day>`` columns, or two suffixes with the same day number.
    """
    head = f"{prefix}_"
    found: dict[int, str] = {}
    for col in columns:
        col = str(col)
        if not col.startswith(head):
            continue
        label = col[len(head):]
        num = day_number(label)
        if num is None:
            continue
        if num in found:
            raise InputDataError(f"{what}: columns {head}{found[num]} and {col} both give day number {num}")
        found[num] = label
    if len(found) < min_days:
        raise InputDataError(
            f"{what}: needs at least {min_days} {head}<day> column(s) (e.g. {head}d0), found {len(found)}"
        )
    nums = sorted(found)
    return DayAxis(labels=tuple(found[n] for n in nums), numbers=tuple(nums))


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str = "table") -> None:
    """Raise one line naming the columns of ``columns`` missing from ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise InputDataError(f"{what}: missing column(s) {shown}")


def require_rows(df: pd.DataFrame, what: str = "table") -> None:
    """Raise when ``df`` has no rows."""
    if len(df) == 0:
        raise InputDataError(f"{what}: table has no rows")


def numeric_matrix(
    df: pd.DataFrame,
    columns: Sequence[str],
    what: str = "table",
    lower: float | None = None,
    upper: float | None = None,
) -> np.ndarray:
    """The named columns as a float64 (n_rows, n_columns) array with no NaN and within bounds.

    Raises
    ------
    InputDataError
        Naming the first offending column, how many rows fail and the first such row
        (0-based data row).
    """
    require_columns(df, columns, what)
    block = df[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    checks = [(~np.isfinite(block), "missing, non-numeric or infinite values")]
    if lower is not None:
        checks.append((block < lower, f"values below {lower:g}"))
    if upper is not None:
        checks.append((block > upper, f"values above {upper:g}"))
    for bad, why in checks:
        if bad.any():
            col = int(np.flatnonzero(bad.any(axis=0))[0])
            rows = np.flatnonzero(bad[:, col])
            raise InputDataError(
                f"{what}: column {columns[col]} has {why} in {rows.size} of {len(df)} rows (first: row {rows[0]})"
            )
    return block


def name_column(df: pd.DataFrame, column: str = "gene", what: str = "table", unique: bool = True) -> pd.Series:
    """A non-empty name column as strings; optionally required to be unique.

    Raises
    ------
    InputDataError
        Missing column, empty names, or (``unique``) duplicated names, with counts.
    """
    require_columns(df, [column], what)
    raw = df[column]
    empty = raw.isna() | (raw.astype(str).str.strip() == "")
    if empty.any():
        raise InputDataError(f"{what}: column {column} is empty in {int(empty.sum())} of {len(df)} rows")
    names = raw.astype(str)
    if unique:
        dup = names.duplicated(keep=False)
        if dup.any():
            first = names[dup].iloc[0]
            raise InputDataError(
                f"{what}: column {column} has {int(names[dup].nunique())} duplicated name(s) "
                f"over {int(dup.sum())} rows (first: {first!r})"
            )
    return names


def read_posterior(
    df: pd.DataFrame,
    prefixes: tuple[str, str, str] = ("postmean", "postsd", "lfsr"),
    what: str = "table",
    min_days: int = 1,
) -> DaywisePosterior:
    """Read and validate the per-day posterior columns of a mash-style table.

    Parameters
    ----------
    df
        A table with ``<mean>_<day>``, ``<sd>_<day>``, ``<lfsr>_<day>`` for every day.
    prefixes
        Names of the mean, SD and lfsr quantities (``("gene_postmean", "gene_postsd",
        "gene_lfsr")`` for an aggregated table).
    what
        The table's name for error messages.
    min_days
        Fewest days accepted.

    Raises
    ------
    InputDataError
        No rows, no day columns, a day missing one of the three quantities, NaN values,
        negative SDs, or lfsr outside [0, 1].
    """
    require_rows(df, what)
    mean_p, sd_p, lfsr_p = prefixes
    axis = day_axis(df.columns, mean_p, what, min_days=min_days)
    require_columns(df, [c for p in prefixes for c in axis.columns(p)], what)
    return DaywisePosterior(
        axis=axis,
        postmean=numeric_matrix(df, axis.columns(mean_p), what),
        postsd=numeric_matrix(df, axis.columns(sd_p), what, lower=0.0),
        lfsr=numeric_matrix(df, axis.columns(lfsr_p), what, lower=0.0, upper=1.0),
    )


def day_list_strings(mask: np.ndarray, keys: Sequence[str]) -> np.ndarray:
    """Comma-separated day keys of the True entries of each row (``"0,2"``; ``""`` if none).

    Loops over days (a handful), never over rows.
    """
    out = pd.Series("", index=range(mask.shape[0]), dtype=object)
    for j, key in enumerate(keys):
        sep = np.where(out.to_numpy() == "", "", ",").astype(object)
        out = out.where(~mask[:, j], out + sep + key)
    return out.to_numpy(dtype=object)


def parse_day_lists(values: pd.Series) -> pd.DataFrame:
    """Explode comma-separated day lists into long form.

    Parameters
    ----------
    values
        One day list per row (``"0,2"``, ``""``, NaN, or a number read back from CSV).

    Returns
    -------
    DataFrame
        Columns ``row`` (the position in ``values``) and ``key`` (the day key as text,
        ``"2"`` for a day number even when read back as ``2.0``).
    """
    values = values.reset_index(drop=True)
    text = values.astype(object).where(values.notna(), "").astype(str)
    long = text.str.split(",").explode()
    long = long.str.strip()
    long = long[long != ""]
    keys = long.to_numpy(dtype=object)
    as_num = pd.to_numeric(long, errors="coerce").to_numpy(dtype=np.float64)
    integral = np.isfinite(as_num) & (as_num == np.round(as_num))
    keys = np.where(integral, np.round(np.nan_to_num(as_num)).astype(np.int64).astype(str), keys)
    return pd.DataFrame({"row": long.index.to_numpy(dtype=np.int64), "key": keys.astype(str)})


_TRUE = {"true", "1", "1.0", "yes", "t"}
_FALSE = {"false", "0", "0.0", "no", "f"}


def bool_column(df: pd.DataFrame, column: str, what: str = "table") -> np.ndarray:
    """A True/False column (bool, 0/1, or the text True/False as read back from CSV) as bools.

    Raises
    ------
    InputDataError
        Missing column, or values that are neither true nor false (with their count).
    """
    require_columns(df, [column], what)
    raw = df[column]
    if pd.api.types.is_bool_dtype(raw):
        return raw.to_numpy(dtype=bool)
    text = raw.astype(str).str.strip().str.lower()
    is_true, is_false = text.isin(_TRUE), text.isin(_FALSE)
    bad = ~(is_true | is_false)
    if bad.any():
        raise InputDataError(
            f"{what}: column {column} must be True/False, got {raw[bad].iloc[0]!r} "
            f"in {int(bad.sum())} of {len(df)} rows"
        )
    return is_true.to_numpy(dtype=bool)
