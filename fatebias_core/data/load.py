"""Load an experiment: AnnData + guide map -> :class:`~fatebias_core.types.Experiment`.

This is the data step (docs/method.md, "Data"). :func:`load_experiment` reads only what
the model needs from the ``.h5ad`` (the fate probabilities, the guide matrix, the day
and replicate labels and a few ``uns`` entries; never ``X`` or the layers), validates
everything, and builds the padded guide embedding with array arithmetic on the CSR
structure.

Conventions (documented here once, relied on by the model):

* Fate columns are matched to ``config.fates`` by name and stored in that order.
  Names come from, in order: the columns of an obsm DataFrame; the ``names`` of an
  in-memory CellRank ``Lineage``; ``uns[f"{key}_names"]`` (CellRank 1); the categories
  of ``obs["term_states_<dir>"]`` for a key ``lineages_<dir>`` (CellRank 2 on disk).
  Only where none of these exist is the configured order assumed, with a warning.
* Guide ids: every NTC guide is id 0 (mask 1); padding is id 0 (mask 0). Targeting
  guides present in both the map and the matrix get ids 1..G sorted by (gene name,
  guide name); genes with at least one such guide get ids 1..L sorted by name. The
  ids therefore do not depend on the column order of the matrix or the row order of
  the map. Within a cell, entries are ordered by guide id (NTCs first).
* The embedding's width is the largest burden among the kept cells (at most
  ``Kmax``): columns that would be padding in every cell add nothing to the model.
* Burden k_i counts the mapped detected guides of a cell, NTCs included; guides
  absent from the map are ignored (not modelled, not counted) and reported. Cells
  with k_i > Kmax are dropped and counted; cells with no guide are kept (they inform
  the nuisance terms).
* Day and replicate levels are those present in the file. Days are ordered by the
  first number in their label (``d2`` < ``d10``); replicates by the number in their
  label, then by label.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fatebias_core.config import FatebiasConfig
from fatebias_core.data.clones import (
    Clones,
    clones_from_guides,
    clones_from_labels,
    impute_clone_guides,
)
from fatebias_core.data.guide_qc import guide_report
from fatebias_core.data.guide_sources import (
    GuideInput,
    batch_labels,
    guide_where,
    read_guides,
    rna_group,
    rna_of,
)
from fatebias_core.errors import ConfigError, InputDataError
from fatebias_core.io import read_csv
from fatebias_core.types import (
    Experiment,
    FilteredCells,
    GuideEmbedding,
    LoadSummary,
    center_by_group,
)

try:  # anndata >= 0.11
    from anndata.io import read_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem

__all__ = [
    "load_experiment",
    "read_guide_map",
    "validate_guide_map",
    "clean_fate_probs",
    "order_labels",
    "embed_guides",
]

GUIDE_MAP_COLUMNS = ("guide_name", "gene_name", "is_ntc")
_TRUE = {"1", "1.0", "true", "t", "yes", "y"}
_FALSE = {"0", "0.0", "false", "f", "no", "n"}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _listing(items: Any, limit: int = 12) -> str:
    """``a, b, c ... (+n more)`` for error messages."""
    items = [str(i) for i in items]
    if not items:
        return "(none)"
    shown = ", ".join(items[:limit])
    return shown + (f" ... (+{len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------------- AnnData access
class _Source(ABC):
    """Read-only access to the parts of an AnnData that loading needs."""

    source: str
    n_obs: int

    @abstractmethod
    def obs_names(self) -> np.ndarray: ...

    @abstractmethod
    def obs_keys(self) -> list[str]: ...

    @abstractmethod
    def obs(self, key: str) -> pd.Series: ...

    @abstractmethod
    def obsm_keys(self) -> list[str]: ...

    @abstractmethod
    def obsm(self, key: str) -> Any: ...

    @abstractmethod
    def obsm_column(self, key: str, column: str) -> pd.Series | None:
        """Column ``column`` of an obsm DataFrame, or None where there is none."""

    @abstractmethod
    def uns(self, key: str) -> Any | None: ...

    # shared helpers
    def require_obs(self, key: str, setting: str) -> pd.Series:
        if key not in self.obs_keys():
            raise InputDataError(
                f"{self.source}: obs column {key!r} ({setting}) not found; "
                f"available obs columns: {_listing(self.obs_keys())}"
            )
        return self.obs(key)

    def require_obsm(self, key: str, setting: str) -> Any:
        if key not in self.obsm_keys():
            raise InputDataError(
                f"{self.source}: obsm key {key!r} ({setting}) not found; "
                f"available obsm keys: {_listing(self.obsm_keys())}"
            )
        return self.obsm(key)


class _MemorySource(_Source):
    def __init__(self, adata: Any):
        self.adata = adata
        self.source = "AnnData (in memory)"
        self.n_obs = int(adata.n_obs)

    def obs_names(self) -> np.ndarray:
        return np.asarray(self.adata.obs_names, dtype=object)

    def obs_keys(self) -> list[str]:
        return [str(c) for c in self.adata.obs.columns]

    def obs(self, key: str) -> pd.Series:
        return self.adata.obs[key]

    def obsm_keys(self) -> list[str]:
        return [str(k) for k in self.adata.obsm.keys()]

    def obsm(self, key: str) -> Any:
        return self.adata.obsm[key]

    def obsm_column(self, key: str, column: str) -> pd.Series | None:
        value = self.adata.obsm.get(key)
        if isinstance(value, pd.DataFrame) and column in value.columns:
            return value[column]
        return None

    def uns(self, key: str) -> Any | None:
        return self.adata.uns.get(key)


class _H5adSource(_Source):
    """Element-wise reads from an open ``.h5ad``: X and layers are never touched."""

    def __init__(self, path: Path, h5: Any):
        self.source = str(path)
        self.h5 = h5
        obs = h5["obs"]
        self._obs = obs
        self._index_key = obs.attrs.get("_index", "_index")
        self.n_obs = int(obs[self._index_key].shape[0])

    def _read(self, elem: Any, what: str) -> Any:
        try:
            return read_elem(elem)
        except Exception as exc:  # any decoding failure means a bad file
            raise InputDataError(f"{self.source}: could not read {what}: {exc}") from None

    def obs_names(self) -> np.ndarray:
        return np.asarray(self._read(self._obs[self._index_key], "obs names"), dtype=object)

    def obs_keys(self) -> list[str]:
        order = self._obs.attrs.get("column-order")
        if order is None:
            return [k for k in self._obs.keys() if k != self._index_key and k != "__categories"]
        return [str(c) for c in np.atleast_1d(order)]

    def obs(self, key: str) -> pd.Series:
        values = self._read(self._obs[key], f"obs[{key!r}]")
        return pd.Series(values, name=key)

    def obsm_keys(self) -> list[str]:
        return list(self.h5["obsm"].keys()) if "obsm" in self.h5 else []

    def obsm(self, key: str) -> Any:
        return self._read(self.h5["obsm"][key], f"obsm[{key!r}]")

    def obsm_column(self, key: str, column: str) -> pd.Series | None:
        if key not in self.obsm_keys():
            return None
        group = self.h5["obsm"][key]
        if group.attrs.get("encoding-type") != "dataframe":
            return None
        columns = [str(c) for c in np.atleast_1d(group.attrs.get("column-order", []))]
        if column not in columns:
            return None
        return pd.Series(self._read(group[column], f"obsm[{key!r}][{column!r}]"), name=column)

    def uns(self, key: str) -> Any | None:
        if "uns" not in self.h5 or key not in self.h5["uns"]:
            return None
        return self._read(self.h5["uns"][key], f"uns[{key!r}]")


@contextlib.contextmanager
def _open_source(config: FatebiasConfig, adata: Any | None) -> Iterator[_Source]:
    if adata is not None:
        yield _MemorySource(rna_of(adata, config))
        return
    if config.adata_path is None:
        raise ConfigError("adata_path is not set: name the .h5ad file in the configuration")
    path = Path(config.adata_path)
    if not path.exists():
        raise InputDataError(f"adata_path: file not found: {path}")
    if path.is_dir():
        raise InputDataError(f"adata_path is a folder, not an .h5ad file: {path}")
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError:
        raise InputDataError(f"{path}: not an HDF5/.h5ad file (adata_path)") from None
    try:
        root, name = rna_group(h5, path, config)  # an .h5mu: its rna_modality
        if "obs" not in root:
            raise InputDataError(f"{path}: no obs group; is this an AnnData .h5ad file?")
        src = _H5adSource(path, root)
        src.source = name
        yield src
    finally:
        h5.close()


# --------------------------------------------------------------------------- guide map
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
            f"needs {', '.join(GUIDE_MAP_COLUMNS)}, has {_listing(df.columns)}"
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
            f"{what} must be 0/1 or true/false; got {_listing(bad, 5)} in {int((~ok).sum())} rows"
        )
    return text.isin(_TRUE).to_numpy()


# --------------------------------------------------------------------------- fate probabilities
def _fate_names(src: _Source, key: str, value: Any, n_cols: int) -> tuple[list[str] | None, str]:
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


def _fate_matrix(src: _Source, config: FatebiasConfig) -> tuple[np.ndarray, str]:
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
        raise InputDataError(f"{src.source}: fate names of obsm[{key!r}] repeat: {_listing(dup)}")
    absent = [f for f in fates if f not in names]
    if absent:
        raise InputDataError(
            f"{src.source}: configured fates {_listing(absent)} not in obsm[{key!r}] "
            f"(fates in the file: {_listing(names)})"
        )
    extra = [n for n in names if n not in fates]
    if extra:
        # Dropping their probability mass would silently change every contrast.
        raise InputDataError(
            f"{src.source}: obsm[{key!r}] has fates {_listing(extra)} that are not configured; "
            f"list every fate of the file in 'fates' (file has {_listing(names)})"
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


# --------------------------------------------------------------------------- guide matrix
def _guide_matrix(src: _Source, key: str) -> tuple[sp.csr_matrix, list[str]]:
    """The cell-by-guide matrix as CSR (sorted indices, explicit zeros removed) and its names."""
    value = src.require_obsm(key, "guide_key")
    if isinstance(value, pd.DataFrame):
        names = [str(c) for c in value.columns]
        if len(value.columns) and all(isinstance(t, pd.SparseDtype) for t in value.dtypes):
            mat = value.sparse.to_coo()
        else:
            mat = value.to_numpy()
    else:
        raw = src.uns(f"{key}_names")
        if raw is None:
            raise InputDataError(
                f"{src.source}: obsm[{key!r}] is a matrix without guide names; "
                f"expected them in uns[{key + '_names'!r}]"
            )
        names = [str(n) for n in np.atleast_1d(np.asarray(raw))]
        mat = value
    if sp.issparse(mat):
        csr = sp.csr_matrix(mat)
    else:
        dense = np.asarray(mat)
        if dense.dtype.kind not in "biuf":
            raise InputDataError(
                f"{src.source}: obsm[{key!r}] is not numeric (dtype {dense.dtype})"
            )
        if dense.ndim != 2:
            raise InputDataError(
                f"{src.source}: obsm[{key!r}] has shape {dense.shape}, expected (cells, guides)"
            )
        csr = sp.csr_matrix(dense)
    if csr.shape[0] != src.n_obs:
        raise InputDataError(
            f"{src.source}: obsm[{key!r}] has {csr.shape[0]} rows but the AnnData has {src.n_obs} cells"
        )
    if csr.shape[1] != len(names):
        raise InputDataError(
            f"{src.source}: obsm[{key!r}] has {csr.shape[1]} columns but {len(names)} guide names"
        )
    if len(set(names)) != len(names):
        dup = pd.Index(names)[pd.Index(names).duplicated()].unique()
        raise InputDataError(f"{src.source}: guide names of obsm[{key!r}] repeat: {_listing(dup)}")
    if csr.dtype.kind == "f" and np.isnan(csr.data).any():
        raise InputDataError(
            f"{src.source}: obsm[{key!r}] has {int(np.isnan(csr.data).sum())} NaN entries"
        )
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr, names


def embed_guides(
    csr: sp.csr_matrix, column_ids: np.ndarray, kmax: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Padded per-cell guide lists from a detection matrix, without loops over cells.

    Parameters
    ----------
    csr
        (N, J) CSR matrix, non-zero = detected, no explicit zeros.
    column_ids
        (J,) id of each column: -1 unmapped (ignored), 0 NTC, 1..G targeting guide.
    kmax
        Cells with more than ``kmax`` mapped guides are dropped.

    Returns
    -------
    guide_ids, mask, keep, burden
        ``guide_ids`` (n_kept, width) int32 and ``mask`` (n_kept, width) bool, entries
        ordered by id within a cell, width = largest kept burden (at least 1);
        ``keep`` (N,) bool, the cells with burden <= kmax; ``burden`` (N,) int64.
    """
    n = csr.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(csr.indptr))
    ids = np.asarray(column_ids, dtype=np.int64)[csr.indices]
    mapped = ids >= 0
    rows, ids = rows[mapped], ids[mapped]
    order = np.lexsort((ids, rows))  # rows stay grouped; ids ascending within a row
    rows, ids = rows[order], ids[order]
    burden = np.bincount(rows, minlength=n).astype(np.int64)
    keep = burden <= kmax
    starts = np.cumsum(burden) - burden
    slot = np.arange(rows.size, dtype=np.int64) - starts[rows]
    width = max(int(burden[keep].max(initial=0)), 1)
    new_row = np.cumsum(keep) - 1
    sel = keep[rows]
    n_kept = int(keep.sum())
    guide_ids = np.zeros((n_kept, width), dtype=np.int32)
    mask = np.zeros((n_kept, width), dtype=bool)
    guide_ids[new_row[rows[sel]], slot[sel]] = ids[sel]
    mask[new_row[rows[sel]], slot[sel]] = True
    return guide_ids, mask, keep, burden


# --------------------------------------------------------------------------- labels
def order_labels(
    values: pd.Series, what: str, require_number: bool, order: Sequence[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes of labels, ordered by ``order`` or by the (first) number in each label.

    Parameters
    ----------
    values
        (N,) labels (any dtype; compared as strings).
    what
        Name for error messages (file and column).
    require_number
        True for days: a label without a number, or two labels with the same number,
        is an error (unless ``order`` is given). False for replicates: labels without
        numbers sort after numbered ones, alphabetically.
    order
        The labels in order (``day_order``); every label present must be in it. The
        levels are those present, in this order.

    Returns
    -------
    codes, labels
        (N,) int64 codes 0..K-1 and the K labels in order.
    """
    if values.isna().any():
        raise InputDataError(f"{what}: {int(values.isna().sum())} cells have no label")
    codes, uniques = pd.factorize(values.astype(str), sort=False)
    uniques = [str(u) for u in uniques]
    if order is not None:
        position = {str(label): i for i, label in enumerate(order)}
        unknown = [u for u in uniques if u not in position]
        if unknown:
            raise InputDataError(
                f"{what}: labels {_listing(unknown)} are not in day_order ({_listing(order)})"
            )
        rank = sorted(range(len(uniques)), key=lambda j: position[uniques[j]])
    else:
        numbers: list[float] = []
        for label in uniques:  # one entry per distinct label, not per cell
            match = _NUMBER.search(label)
            if match is None:
                if require_number:
                    raise InputDataError(
                        f"{what}: label {label!r} has no number to order the days by; "
                        f"give the order with day_order: [{', '.join(sorted(uniques))}] (earliest first)"
                    )
                numbers.append(np.inf)
            else:
                numbers.append(float(match.group()))
        if require_number and len(set(numbers)) != len(numbers):
            clash = [u for u, x in zip(uniques, numbers, strict=True) if numbers.count(x) > 1]
            raise InputDataError(
                f"{what}: labels {_listing(clash)} have the same number; cannot order them "
                "(give the order with day_order: [...])"
            )
        rank = sorted(range(len(uniques)), key=lambda j: (numbers[j], uniques[j]))
    remap = np.empty(len(uniques), dtype=np.int64)
    remap[rank] = np.arange(len(uniques))
    return remap[codes], tuple(uniques[j] for j in rank)


def _replicates(src: _Source, config: FatebiasConfig) -> tuple[pd.Series, str]:
    col = src.obsm_column(config.covar_key, config.rep_key)
    if col is not None:
        return col, f"obsm[{config.covar_key!r}][{config.rep_key!r}]"
    if config.rep_key in src.obs_keys():
        return src.obs(config.rep_key), f"obs[{config.rep_key!r}]"
    raise InputDataError(
        f"{src.source}: replicate column {config.rep_key!r} (rep_key) not found in "
        f"obsm[{config.covar_key!r}] (covar_key) or obs; "
        f"available obs columns: {_listing(src.obs_keys())}"
    )


@dataclass(frozen=True)
class _GuideIndex:
    """How the matrix columns map to guide ids (module docstring: id conventions)."""

    column_ids: np.ndarray  # (J,) -1 unmapped, 0 NTC, 1..G targeting
    ntc_column_ids: np.ndarray  # (J,) 1..n_ntc for NTC columns, -1 otherwise
    ntc_names: tuple[str, ...]
    gene_of_guide: np.ndarray  # (G + 1,)
    guide_names: tuple[str, ...]
    gene_names: tuple[str, ...]
    n_ntc: int
    unmapped: tuple[str, ...]  # matrix columns absent from the map
    map_absent: tuple[str, ...]  # map guides absent from the matrix


def _index_guides(gmap: pd.DataFrame, matrix_guides: list[str], where: str) -> _GuideIndex:
    """Guide and gene ids: targeting guides in both map and matrix, sorted by (gene, guide)."""
    in_matrix = gmap[gmap["guide_name"].isin(matrix_guides)]
    if in_matrix.empty:
        raise InputDataError(
            f"no guide of the guide map is in {where} "
            f"(map: {_listing(gmap['guide_name'], 3)}; matrix: {_listing(matrix_guides, 3)})"
        )
    targeting = in_matrix[~in_matrix["is_ntc"]].sort_values(["gene_name", "guide_name"])
    gene_names = tuple(sorted(targeting["gene_name"].unique()))
    guide_names = tuple(targeting["guide_name"])
    gene_id = pd.Series(np.arange(1, len(gene_names) + 1), index=list(gene_names))
    gene_of_guide = np.concatenate([[0], gene_id[targeting["gene_name"]].to_numpy()])
    guide_id = pd.Series(np.arange(1, len(guide_names) + 1), index=list(guide_names))
    ntc_names = in_matrix.loc[in_matrix["is_ntc"], "guide_name"]
    columns = pd.Index(matrix_guides)
    column_ids = guide_id.reindex(columns).fillna(-1).to_numpy(dtype=np.int64)
    is_ntc = columns.isin(ntc_names)
    column_ids[is_ntc] = 0
    ntc_column_ids = np.full(len(columns), -1, dtype=np.int64)
    ntc_column_ids[is_ntc] = np.arange(1, int(is_ntc.sum()) + 1)
    return _GuideIndex(
        column_ids=column_ids,
        ntc_column_ids=ntc_column_ids,
        ntc_names=tuple(columns[is_ntc]),
        gene_of_guide=gene_of_guide.astype(np.int64),
        guide_names=guide_names,
        gene_names=gene_names,
        n_ntc=len(ntc_names),
        unmapped=tuple(columns[column_ids < 0]),
        map_absent=tuple(gmap.loc[~gmap["guide_name"].isin(matrix_guides), "guide_name"]),
    )


# --------------------------------------------------------------------------- load
@dataclass(frozen=True)
class _Inputs:
    """What :func:`load_experiment` reads from the AnnData source, one row per cell."""

    source: str
    n_in: int  # cells in the source
    raw_probs: np.ndarray  # the fate matrix as read (for the row checks)
    fate_origin: str
    probs: np.ndarray  # cleaned fate probabilities
    n_renorm: int
    csr: sp.csr_matrix
    matrix_guides: list[str]
    day: pd.Series
    rep: pd.Series
    rep_where: str
    clone: pd.Series | None
    cell_names: np.ndarray
    guides: GuideInput | None = None  # the guide source's read (report, counts, assignment)

    def subset(self, rows: np.ndarray) -> _Inputs:
        """The cells where ``rows`` (a boolean mask) is true."""
        return replace(
            self,
            probs=self.probs[rows],
            csr=self.csr[rows],
            day=self.day[rows].reset_index(drop=True),
            rep=self.rep[rows].reset_index(drop=True),
            clone=None if self.clone is None else self.clone[rows].reset_index(drop=True),
            cell_names=self.cell_names[rows],
        )


def _read_inputs(config: FatebiasConfig, adata: Any | None) -> _Inputs:
    """Read the fate matrix, guide matrix, labels and cell names, checking each as it is read."""
    with _open_source(config, adata) as src:
        source = src.source
        raw_probs, fate_origin = _fate_matrix(src, config)
        probs, n_renorm = clean_fate_probs(
            raw_probs,
            config.fate_sum_tol,
            f"{source}: obsm[{config.fate_prob_key!r}]",
            drop=config.drop_invalid_cells,
        )
        day_raw = src.require_obs(config.day_key, "day_key").reset_index(drop=True)
        rep_raw, rep_where = _replicates(src, config)
        obsm = _guide_matrix(src, config.guide_key) if config.guide_source in ("obsm", "obsm_counts") else None
        guides = read_guides(src, config, adata, batch_labels(src, config, rep_raw), obsm, cache_dir=Path(config.out_dir))
        csr, matrix_guides = guides.detected, guides.guides
        clone_raw = (
            src.obs(config.clone_key).reset_index(drop=True)
            if config.clone_key in src.obs_keys()
            else None
        )
        return _Inputs(
            source=source,
            n_in=src.n_obs,
            raw_probs=raw_probs,
            fate_origin=fate_origin,
            probs=probs,
            n_renorm=n_renorm,
            csr=csr,
            matrix_guides=matrix_guides,
            day=day_raw,
            rep=rep_raw.reset_index(drop=True),
            rep_where=rep_where,
            clone=clone_raw,
            cell_names=src.obs_names(),
            guides=guides,
        )


def _invalid_reasons(inputs: _Inputs, config: FatebiasConfig) -> np.ndarray:
    """(N,) code of why each cell is invalid (0: valid): bad fate rows, then missing labels."""
    source, n_in, drop = inputs.source, inputs.n_in, config.drop_invalid_cells
    labelled = [
        (f"obs[{config.day_key!r}] (day_key)", inputs.day, 4),
        (f"{inputs.rep_where} (rep_key)", inputs.rep, 5),
    ]
    if inputs.clone is not None:
        labelled.append((f"obs[{config.clone_key!r}] (clone_key)", inputs.clone, 6))
    if drop:
        reason = fate_row_problems(inputs.raw_probs, config.fate_sum_tol)
    else:
        reason = np.zeros(n_in, dtype=np.int8)
    for what, series, code in labelled:
        if len(series) != n_in:
            raise InputDataError(f"{source}: {what} has {len(series)} values for {n_in} cells")
        missing = series.isna().to_numpy()
        if missing.any():
            if not drop:
                raise InputDataError(f"{source}: {what}: {int(missing.sum())} cells have no label; {DROP_HINT}")
            reason = np.where((reason == 0) & missing, code, reason).astype(np.int8)
    return reason


def _levels(
    inputs: _Inputs, config: FatebiasConfig
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray, tuple[str, ...]]:
    """Day and replicate codes and levels, checked against the configured ``D`` and ``R``."""
    source = inputs.source
    day, day_labels = order_labels(
        inputs.day, f"{source}: obs[{config.day_key!r}]", True, order=config.day_order
    )
    rep, rep_labels = order_labels(inputs.rep, f"{source}: {inputs.rep_where}", False)
    for setting, configured, found, where in (
        ("D", config.D, day_labels, f"obs[{config.day_key!r}]"),
        ("R", config.R, rep_labels, inputs.rep_where),
    ):
        if configured is not None and configured != len(found):
            raise InputDataError(
                f"{source}: {where} has {len(found)} levels ({_listing(found)}) "
                f"but {setting} = {configured} is configured"
            )
    return day, day_labels, rep, rep_labels


def _clones(
    config: FatebiasConfig,
    clone: pd.Series | None,
    keep: np.ndarray,
    guide_ids: np.ndarray,
    mask: np.ndarray,
    ntc_ids: np.ndarray,
    rep: np.ndarray,
) -> Clones:
    """The clones of the kept cells: lineage-barcode labels, or inferred from the detected guide sets."""
    if clone is not None:
        return clones_from_labels(clone.astype(str).to_numpy()[keep], f"obs[{config.clone_key!r}] (clone_key)")
    return clones_from_guides(guide_sets(guide_ids, mask, ntc_ids), rep, config.clone_chance_links, max_union=config.Kmax + 5)


def guide_sets(guide_ids: np.ndarray, mask: np.ndarray, ntc_ids: np.ndarray) -> np.ndarray:
    """(N, Kmax + W) each cell's detected guides as positive ids, targeting and NTC alike (0 pads)."""
    targets = np.where(mask & (guide_ids > 0), guide_ids, 0).astype(np.int64)
    offset = int(targets.max(initial=0)) + 1
    return np.concatenate([targets, np.where(ntc_ids > 0, ntc_ids.astype(np.int64) + offset, 0)], axis=1)


def _day_counts(day: np.ndarray, day_labels: tuple[str, ...], source: str, kmax: int) -> np.ndarray:
    """Kept cells per day; an error when a day has none left."""
    day_counts = np.bincount(day, minlength=len(day_labels))
    if (day_counts == 0).any():
        empty = [lab for lab, c in zip(day_labels, day_counts, strict=True) if c == 0]
        raise InputDataError(
            f"{source}: days {_listing(empty)} have no cells left after the Kmax={kmax} filter"
        )
    return day_counts


def _dropped_cells(
    cell_names: np.ndarray, valid: np.ndarray, reason: np.ndarray, keep: np.ndarray, kmax: int, placed: np.ndarray
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The dropped cells with their reasons (invalid, over Kmax, not placed in a clone) and counts by reason."""
    valid_names = cell_names[valid]
    kmax_reason = f"more than Kmax={kmax} guides"
    dropped = pd.DataFrame({
        "cell": np.concatenate([cell_names[~valid], valid_names[~keep], valid_names[keep][~placed]]).astype(str),
        "reason": np.concatenate([
            _reason_names(reason[~valid]),
            np.full(int((~keep).sum()), kmax_reason, dtype=object),
            np.full(int((~placed).sum()), UNPLACED_REASON, dtype=object),
        ]),
    })
    counts = {f"cells with {k}": int(v) for k, v in dropped["reason"].value_counts(sort=False).items()}
    counts.setdefault(f"cells with {kmax_reason}", 0)
    return dropped, counts


UNPLACED_REASON = "fewer than two detected guides: clone unknown (drop_unplaced_cells)"
#: Estimated guide detection below this makes a cell's few detected guides say too little about its clone.
DETECTION_COMPLETE = 0.95


def _unplaced(config: FatebiasConfig, clones: Clones, detected: np.ndarray) -> np.ndarray:
    """(N,) cells that cannot be placed in their clone: fewer than two detected guides where capture is incomplete.

    Only for clones inferred from guide sets (lineage labels place every cell), and only
    where the estimated detection says sister cells show different subsets of their
    clone's guides: a cell showing one guide may then belong to any clone that carries
    it, and a clone effect of its own would leave its share of its clone's effect to its
    guide's deviation.
    """
    n = detected.size
    if not config.drop_unplaced_cells or clones.source != "guide sets" or not np.isfinite(clones.detection):
        return np.zeros(n, dtype=bool)
    if clones.detection >= DETECTION_COMPLETE:
        return np.zeros(n, dtype=bool)
    return detected < 2


def _load_summary(
    inputs: _Inputs,
    cells: FilteredCells,
    guides: GuideEmbedding,
    index: _GuideIndex,
    dropped: dict[str, int],
    day_counts: np.ndarray,
    drop: bool,
    clones: dict,
) -> LoadSummary:
    """The loading summary: counts in and kept, guides, fate names, clusters and fate means."""
    per_gene = np.bincount(index.gene_of_guide[1:], minlength=guides.n_genes + 1)[1:]
    return LoadSummary(
        source=inputs.source,
        n_cells_in=inputs.n_in,
        n_cells_kept=cells.n_cells,
        dropped=dropped,
        guides_per_cell=_stats(cells.burden, ("mean", "median", "max")),
        n_guides_matrix=len(inputs.matrix_guides),
        n_guides_mapped=guides.n_guides,
        n_ntc_guides=index.n_ntc,
        unmapped_guides=index.unmapped,
        map_guides_absent=index.map_absent,
        guides_per_gene=_stats(per_gene, ("min", "median", "max")),
        fate_names_source=inputs.fate_origin,
        n_renormalised=inputs.n_renorm,
        cells_per_day={lab: int(c) for lab, c in zip(cells.day_labels, day_counts, strict=True)},
        n_clusters=int(cells.cluster.max(initial=-1)) + 1,
        cluster_source=cells.cluster_source,
        clones=clones,
        fate_mean_by_day=_fate_means_by_day(cells.fate_probs, cells.day, cells.day_labels, cells.fates),
        drop_invalid_cells=drop,
    )


def load_experiment(
    config: FatebiasConfig,
    verbose: bool = True,
    *,
    adata: Any | None = None,
    guide_map: pd.DataFrame | None = None,
) -> Experiment:
    """Load and validate an experiment (docs/method.md, "Data").

    Parameters
    ----------
    config
        Settings; uses ``adata_path``, ``guide_map_csv``, the key names, ``fates``,
        ``Kmax``, ``D``, ``R`` and ``fate_sum_tol``.
    verbose
        Print the loading summary.
    adata
        An in-memory :class:`anndata.AnnData` used instead of ``adata_path``.
    guide_map
        A guide map DataFrame used instead of ``guide_map_csv``.

    Returns
    -------
    Experiment
        Kept cells, their padded guide embedding and the loading summary.

    Raises
    ------
    ConfigError
        No input named.
    InputDataError
        Any invalid input, in one line naming the file, key and counts at fault.
    """
    if guide_map is None:
        gmap = read_guide_map(config.guide_map_csv)
    else:
        gmap = validate_guide_map(guide_map, source="(in memory)")
    inputs = _read_inputs(config, adata)
    source = inputs.source
    reason = _invalid_reasons(inputs, config)
    valid = reason == 0
    if not valid.any():
        raise InputDataError(f"{source}: no valid cell left ({_drop_text(reason)})")
    kept = inputs if valid.all() else inputs.subset(valid)
    day_all, day_labels, rep_all, rep_labels = _levels(kept, config)
    index = _index_guides(gmap, inputs.matrix_guides, guide_where(config, source))

    guide_ids, mask, keep, burden_all = embed_guides(kept.csr, index.column_ids, config.Kmax)
    day, rep, burden = day_all[keep], rep_all[keep], burden_all[keep]
    ntc_ids = embed_guides(kept.csr[keep], index.ntc_column_ids, kept.csr.shape[1])[0]
    clones = _clones(config, kept.clone, keep, guide_ids, mask, ntc_ids, rep)
    detected = mask.sum(axis=1) + (ntc_ids > 0).sum(axis=1) - (mask & (guide_ids == 0)).sum(axis=1)
    unplaced = _unplaced(config, clones, detected)
    n_imputed = 0
    # Where sister cells show their clone's whole set, a union adds only chance-merged clones' guides.
    if config.clone_guides == "union" and clones.detection < DETECTION_COMPLETE:
        guide_ids, mask, ntc_ids, burden, n_imputed = impute_clone_guides(guide_ids, mask, ntc_ids, clones.cluster, config.Kmax)
    placed = ~unplaced
    if unplaced.any():
        guide_ids, mask, ntc_ids, burden = guide_ids[placed], mask[placed], ntc_ids[placed], burden[placed]
        day, rep = day[placed], rep[placed]
        clones = dataclasses.replace(clones, cluster=np.unique(clones.cluster[placed], return_inverse=True)[1].astype(np.int64))
    day_counts = _day_counts(day, day_labels, source, config.Kmax)
    cells = FilteredCells(
        fate_probs=kept.probs[keep][placed],
        fates=tuple(config.fates),
        day=day,
        day_labels=day_labels,
        rep=rep,
        rep_labels=rep_labels,
        burden=burden,
        burden_centered=center_by_group(burden, day, len(day_labels)),
        cell_names=inputs.cell_names[valid][keep][placed],
        cluster=clones.cluster,
        cluster_source=clones.description,
    )
    guides = GuideEmbedding(
        guide_ids=guide_ids,
        mask=mask,
        gene_of_guide=index.gene_of_guide,
        guide_names=index.guide_names,
        gene_names=index.gene_names,
        ntc_ids=ntc_ids,
        ntc_names=index.ntc_names,
    )
    dropped_cells, dropped = _dropped_cells(inputs.cell_names, valid, reason, keep, config.Kmax, placed)
    summary = _load_summary(
        inputs, cells, guides, index, dropped, day_counts, config.drop_invalid_cells,
        clones.summary() | {"cells_given_clone_guides": n_imputed, "cells_unplaced": int(unplaced.sum())},
    )
    guide_info, guide_files = guide_report(inputs.guides, gmap, inputs.cell_names)
    summary = replace(summary, guide_input=guide_info)
    if verbose:
        print(summary.format())
    return Experiment(cells=cells, guides=guides, summary=summary, dropped_cells=dropped_cells, guide_files=guide_files)


#: Why a cell was dropped at load, by code (fate codes of :data:`FATE_ROW_REASONS`, then labels).
DROP_REASONS = {
    **FATE_ROW_REASONS,
    4: "no day label",
    5: "no replicate label",
    6: "no clone label",
}


def _reason_names(codes: np.ndarray) -> np.ndarray:
    """The text of each drop reason code (vectorised lookup)."""
    table = np.array([""] + [DROP_REASONS[k] for k in sorted(DROP_REASONS)], dtype=object)
    return table[np.asarray(codes, dtype=np.int64)]


def _drop_text(codes: np.ndarray) -> str:
    counts = np.bincount(codes, minlength=len(DROP_REASONS) + 1)
    return ", ".join(f"{int(c)} with {DROP_REASONS[k]}" for k, c in enumerate(counts) if k and c)


def _fate_means_by_day(
    probs: np.ndarray, day: np.ndarray, day_labels: Sequence[str], fates: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Mean fate probability of the kept cells of each day: ``{day label: {fate: mean}}``."""
    counts = np.bincount(day, minlength=len(day_labels)).astype(np.float64)
    sums = np.stack([np.bincount(day, weights=probs[:, f], minlength=len(day_labels)) for f in range(probs.shape[1])], axis=1)
    means = sums / np.maximum(counts, 1.0)[:, None]
    return {
        str(lab): {str(f): round(float(means[d, k]), 6) for k, f in enumerate(fates)}
        for d, lab in enumerate(day_labels)
    }


def _stats(values: np.ndarray, which: tuple[str, ...]) -> dict[str, float]:
    if values.size == 0:
        return {k: 0.0 for k in which}
    funcs = {"mean": np.mean, "median": np.median, "min": np.min, "max": np.max}
    return {k: round(float(funcs[k](values)), 4) for k in which}
