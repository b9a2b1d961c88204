"""Results in ``adata.uns``: tables made safe for ``.h5ad``, and read back.

anndata writes DataFrames in ``uns`` (column order kept), but not object columns that
hold ``None`` or mixed types, nor every pandas extension type. :func:`h5ad_frame` turns
a results table into one that writes: text columns become strings (missing values
``""``), nullable integers become floats (missing values NaN), booleans and numbers
stay as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: Default ``adata.uns`` key of the results.
UNS_KEY = "fatebias"


def h5ad_column(values: pd.Series) -> np.ndarray:
    """One column as a numpy array that ``AnnData.write_h5ad`` accepts."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(values.dtype):
        if isinstance(values.dtype, pd.api.extensions.ExtensionDtype):  # Int64 and friends: NA -> NaN
            return values.to_numpy(dtype=float, na_value=np.nan)
        return values.to_numpy()
    return np.asarray(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values], dtype=object)


def h5ad_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every column made writable to ``.h5ad`` (see the module notes) and a plain index."""
    return pd.DataFrame({str(c): h5ad_column(df[c]) for c in df.columns}, index=pd.RangeIndex(len(df)).astype(str))


def store_tables(uns: dict[str, Any], tables: dict[str, pd.DataFrame], meta: dict[str, Any], key: str = UNS_KEY) -> dict[str, Any]:
    """Put ``tables`` (name -> DataFrame) and ``meta`` (strings, numbers, arrays) under ``uns[key]``.

    Entries already under ``uns[key]`` (the ``setup`` of :meth:`FateBias.setup_anndata`)
    are kept unless replaced.
    """
    entry = dict(uns.get(key) or {})
    entry.update(meta)
    entry["tables"] = {name: h5ad_frame(df) for name, df in tables.items()}
    uns[key] = entry
    return entry


def stored_tables(uns: dict[str, Any], key: str = UNS_KEY) -> dict[str, pd.DataFrame]:
    """The tables stored by :func:`store_tables` (after a round trip through ``.h5ad`` too)."""
    tables = (uns.get(key) or {}).get("tables") or {}
    return {name: pd.DataFrame(df).reset_index(drop=True) for name, df in tables.items()}
