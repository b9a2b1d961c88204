"""The guide matrix of an AnnData and the padded per-cell guide embedding built from it with array arithmetic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fatebias_core.data.adata_access import AnnDataSource
from fatebias_core.errors import InputDataError, listing


def guide_matrix(src: AnnDataSource, key: str) -> tuple[sp.csr_matrix, list[str]]:
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
        raise InputDataError(f"{src.source}: guide names of obsm[{key!r}] repeat: {listing(dup)}")
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
