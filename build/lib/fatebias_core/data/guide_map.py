"""The guide map: reading and validating the CSV that maps guides to genes and marks the NTCs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fatebias_core.errors import ConfigError, InputDataError, listing
from fatebias_core.io import read_csv

GUIDE_MAP_COLUMNS = ("guide_name", "gene_name", "is_ntc")
_TRUE = {"1", "1.0", "true", "t", "yes", "y"}
_FALSE = {"0", "0.0", "false", "f", "no", "n"}


def read_guide_map(path: str | Path | None) -> pd.DataFrame:
    """Read and validate a guide map CSV (see :func:`validate_guide_map`).

    Raises
    ------
    ConfigError
        ``path`` is None (``guide_map_csv`` not set).
    InputDataError
        The file is missing, empty or invalid.
    """
    if path is None:
        raise ConfigError("guide_map_csv is not set: name the guide map CSV in the configuration")
    if not Path(path).exists():
        raise InputDataError(f"guide_map_csv: file not found: {path}")
    df = read_csv(
        path, what="guide map (guide_map_csv)", dtype={"guide_name": str, "gene_name": str}
    )
    return validate_guide_map(df, source=str(path))


def validate_guide_map(df: pd.DataFrame, source: str = "guide map") -> pd.DataFrame:
    """Check a guide map and return it cleaned.

    Parameters
    ----------
    df
        Columns ``guide_name``, ``gene_name``, ``is_ntc`` (0/1 or true/false); other
        columns are ignored.
    source
        Name for error messages (the file).

    Returns
    -------
    pandas.DataFrame
        One row per guide with ``guide_name`` and ``gene_name`` as str and ``is_ntc``
        as bool, in the map's order (exact duplicate rows removed).

    Raises
    ------
    InputDataError
        A missing column, an unparsable ``is_ntc``, a targeting guide without a gene,
        or a guide mapped to two genes (or to a gene and NTC).
    """
    missing = [c for c in GUIDE_MAP_COLUMNS if c not in df.columns]
    if missing:
        raise InputDataError(
            f"guide map {source}: missing column {missing[0]!r}; "
            f"needs {', '.join(GUIDE_MAP_COLUMNS)}, has {listing(df.columns)}"
        )
    if len(df) == 0:
        raise InputDataError(f"guide map {source}: no rows")
    guide = df["guide_name"]
    if guide.isna().any():
        raise InputDataError(
            f"guide map {source}: {int(guide.isna().sum())} rows without a guide_name"
        )
    is_ntc = _parse_bool(df["is_ntc"], f"guide map {source}: column 'is_ntc'")
    gene = df["gene_name"]
    no_gene = gene.isna().to_numpy() & ~is_ntc
    if no_gene.any():
        raise InputDataError(
            f"guide map {source}: {int(no_gene.sum())} targeting guides without a gene_name "
            f"(e.g. {guide[no_gene].iloc[0]!r})"
        )
    out = pd.DataFrame(
        {
            "guide_name": guide.astype(str).str.strip().to_numpy(),
            # NTC rows keep whatever gene label they carry; it is never used.
            "gene_name": gene.fillna("").astype(str).str.strip().to_numpy(),
            "is_ntc": is_ntc,
        }
    ).drop_duplicates(ignore_index=True)
    # The gene of an NTC row is irrelevant; compare targets as "NTC" vs gene name.
    target = np.where(out["is_ntc"], "(NTC)", out["gene_name"])
    n_targets = pd.Series(target).groupby(out["guide_name"].to_numpy(), sort=True).nunique()
    conflicted = n_targets.index[n_targets.to_numpy() > 1]
    if len(conflicted):
        first = conflicted[0]
        genes = sorted(set(target[out["guide_name"].to_numpy() == first]))
        more = f" (and {len(conflicted) - 1} more guides)" if len(conflicted) > 1 else ""
        raise InputDataError(
            f"guide map {source}: guide {first!r} is mapped to {len(genes)} genes "
            f"({', '.join(genes)}){more}"
        )
    return out.drop_duplicates("guide_name", ignore_index=True)


def _parse_bool(values: pd.Series, what: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=bool)
    text = values.astype(str).str.strip().str.lower()
    ok = text.isin(_TRUE | _FALSE).to_numpy()
    if not ok.all():
        bad = pd.unique(values[~ok].astype(str))
        raise InputDataError(
            f"{what} must be 0/1 or true/false; got {listing(bad, 5)} in {int((~ok).sum())} rows"
        )
    return text.isin(_TRUE).to_numpy()
