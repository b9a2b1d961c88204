"""Read the guides of an experiment from where a lab has them (docs/method.md, "Guide inputs").

``guide_source`` (:mod:`fatebias_core.config`) says where:

* ``obsm``: the cell-by-guide detection matrix in ``obsm[guide_key]`` (read by
  :mod:`fatebias_core.data.load`; non-zero = detected). Unchanged behaviour.
* ``obsm_counts``: guide UMI counts in ``obsm[guide_key]``; ``layer``: UMI counts in a
  layer (or X) of the AnnData, restricted to its guide features. Assigned by
  :mod:`fatebias_core.data.assignment`.
* ``cellranger_calls``: Cell Ranger's ``crispr_analysis/protospacer_calls_per_cell.csv``
  (``cell_barcode, num_features, feature_call, num_umis``; ``feature_call`` like
  ``sgA|sgB``, ``num_umis`` like ``12|3``): Cell Ranger's own calls, used as they are.
* ``cellranger_h5``: the guide features (``guide_feature_type``) of a 10x
  ``filtered_feature_bc_matrix.h5``; ``mudata``: the guide modality of an ``.h5mu``
  (the file of ``guide_files``, or ``adata_path`` itself, or an in-memory MuData).
  UMI counts, assigned by :mod:`fatebias_core.data.assignment`.

Files are read element-wise with h5py (a 10x matrix in chunks of entries, keeping only the
guide features), so reading never holds a whole gene-expression matrix. Each file's
barcodes are matched to the AnnData's cells (:mod:`fatebias_core.data.barcodes`); every
file barcode not found and every cell without a guide is counted in the report, never
dropped silently. Bad input is a one-line :class:`~fatebias_core.errors.InputDataError`
naming the file and the rows (file lines) or features at fault.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fatebias_core.config import GUIDE_COUNT_SOURCES, FatebiasConfig
from fatebias_core.data.assignment import Assignment, assign_guides
from fatebias_core.data.barcodes import CellNames, match_barcodes
from fatebias_core.errors import ConfigError, InputDataError, listing
from fatebias_core.io import read_csv

try:  # anndata >= 0.11
    from anndata.io import read_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem

__all__ = [
    "GuideTable",
    "GuideInput",
    "read_guides",
    "read_protospacer_calls",
    "read_10x_guides",
    "read_h5mu_guides",
    "rna_group",
    "rna_of",
]

#: Columns of Cell Ranger's ``protospacer_calls_per_cell.csv`` that fatebias reads.
CALLS_COLUMNS = ("cell_barcode", "feature_call", "num_umis")
#: Modalities searched, in order, for the guide counts of an ``.h5mu`` (``guide_modality`` unset).
GUIDE_MODALITIES = ("gdo", "crispr", "guides", "grna", "sgrna")
#: Entries of a 10x matrix read at a time.
CHUNK = 1 << 24


def _lines(rows: np.ndarray, limit: int = 5) -> str:
    """File lines of 0-based data rows (the header is line 1)."""
    return "lines " + listing(np.asarray(rows) + 2, limit)


@dataclass(frozen=True)
class GuideTable:
    """The guides of one file as read: barcodes by guides.

    Attributes
    ----------
    source
        The file (and key or modality) for messages.
    barcodes
        (n,) cell barcodes as in the file (unique).
    guides
        (J,) guide names (unique).
    values
        (n, J) CSR: UMI counts (``kind`` counts), or the UMIs of Cell Ranger's calls
        (``kind`` calls: every stored entry is a call).
    kind
        ``counts`` (to be assigned) or ``calls`` (assigned already).
    """

    source: str
    barcodes: np.ndarray
    guides: list[str]
    values: sp.csr_matrix
    kind: str


@dataclass(frozen=True)
class GuideInput:
    """The guides of the AnnData's cells, whatever the source (one row per AnnData cell).

    Attributes
    ----------
    detected
        (N, J) CSR, non-zero = detected (the matrix the loader embeds).
    guides
        (J,) guide names.
    counts
        (N, J) CSR UMI counts aligned with ``detected`` (None when the source has none).
    batches
        (N,) the batch (replicate) label of each cell, for the per-batch QC.
    report
        Where the guides came from and how the barcodes matched (JSON-friendly; the load
        summary's ``guide_input``).
    assignment
        The library's assignment (None when the source had no counts to assign).
    """

    detected: sp.csr_matrix
    guides: list[str]
    counts: sp.csr_matrix | None
    batches: np.ndarray
    report: dict = field(default_factory=dict)
    assignment: Assignment | None = None


# --------------------------------------------------------------------------- small checks
def _unique_names(names: list[str], what: str, unit: str = "features") -> None:
    """One-line error when guide names repeat, naming the positions (1-based) of the first repeats."""
    index = pd.Index(names)
    if index.has_duplicates:
        dup = index[index.duplicated()].unique()
        first = str(dup[0])
        where = np.flatnonzero(index == first) + 1
        raise InputDataError(
            f"{what}: guide names repeat ({len(dup)} names; e.g. {first!r} at {unit} {listing(where, 5)}); "
            "give every guide a unique name"
        )


def _unique_barcodes(barcodes: np.ndarray, what: str, unit: str = "barcodes") -> None:
    index = pd.Index(barcodes)
    if index.has_duplicates:
        dup = index[index.duplicated()].unique()
        where = np.flatnonzero(index == dup[0]) + 1
        raise InputDataError(
            f"{what}: {len(dup)} cell barcodes repeat (e.g. {str(dup[0])!r} at {unit} {listing(where, 5)})"
        )


def _as_csr(matrix: Any, what: str) -> sp.csr_matrix:
    """A numeric CSR copy of ``matrix`` (sorted indices, no explicit zeros, no NaN or negative values)."""
    if sp.issparse(matrix):
        csr = sp.csr_matrix(matrix)
    else:
        dense = np.asarray(matrix)
        if dense.dtype.kind not in "biuf" or dense.ndim != 2:
            raise InputDataError(f"{what}: not a numeric cells x guides matrix (dtype {dense.dtype}, shape {dense.shape})")
        csr = sp.csr_matrix(dense)
    if csr.dtype.kind not in "biuf":
        raise InputDataError(f"{what}: not numeric (dtype {csr.dtype})")
    bad = ~np.isfinite(csr.data) | (csr.data < 0)
    if bad.any():
        raise InputDataError(f"{what}: {int(bad.sum())} UMI counts are NaN, infinite or negative")
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


# --------------------------------------------------------------------------- Cell Ranger calls
def read_protospacer_calls(path: str | Path) -> GuideTable:
    """Read Cell Ranger's ``protospacer_calls_per_cell.csv``.

    Parameters
    ----------
    path
        The CSV: ``cell_barcode, num_features, feature_call, num_umis`` with the calls and
        their UMIs separated by ``|`` (``num_features`` is checked when present).

    Returns
    -------
    GuideTable
        ``kind`` calls: one stored entry per call, its value the call's UMIs.

    Raises
    ------
    InputDataError
        A missing column, and rows (named by their file lines) with an empty barcode or
        guide, a repeated barcode, a guide called twice, numbers of calls and UMIs that
        differ (or differ from ``num_features``), or UMIs that are not whole numbers.
    """
    what = f"{path} (guide_files)"
    df = read_csv(path, what="protospacer calls", dtype=str, keep_default_na=False, skip_blank_lines=False)
    missing = [c for c in CALLS_COLUMNS if c not in df.columns]
    if missing:
        raise InputDataError(
            f"{what}: missing column {missing[0]!r}; Cell Ranger's protospacer_calls_per_cell.csv has "
            f"cell_barcode, num_features, feature_call, num_umis (this file has {listing(df.columns, 8)})"
        )
    barcode = df["cell_barcode"].str.strip().to_numpy(dtype=object)
    call_text = df["feature_call"].to_numpy(dtype=object)
    empty = (barcode == "") | (pd.Series(call_text).str.strip() == "").to_numpy()
    if empty.any():
        raise InputDataError(f"{what}: {int(empty.sum())} rows without a barcode or a guide call ({_lines(np.flatnonzero(empty))})")
    _unique_barcodes(barcode, what, unit="lines")
    # One split of the joined text instead of a split per row (2,000,000 calls at 200,000 cells).
    guide = _split_joined(call_text)
    umi_text = _split_joined(df["num_umis"].to_numpy(dtype=object))
    umi = _numbers(umi_text)
    n_calls = _parts_per_row(df["feature_call"])
    bad = n_calls != _parts_per_row(df["num_umis"])
    if "num_features" in df.columns:
        bad |= pd.to_numeric(df["num_features"], errors="coerce").to_numpy() != n_calls
    if bad.any():
        raise InputDataError(
            f"{what}: {int(bad.sum())} rows whose feature_call, num_umis and num_features do not list the same number "
            f"of guides ({_lines(np.flatnonzero(bad))})"
        )
    row = np.repeat(np.arange(len(df)), n_calls)
    bad_entry = ~np.isfinite(umi) | (umi < 0) | (umi != np.round(umi)) | (guide == "")
    if bad_entry.any():
        rows = np.unique(row[bad_entry])
        raise InputDataError(
            f"{what}: {len(rows)} rows with an empty guide name or UMIs that are not whole numbers "
            f"(e.g. {umi_text[int(np.flatnonzero(bad_entry)[0])]!r}; {_lines(rows)})"
        )
    codes, names = pd.factorize(guide)
    key = np.sort(row.astype(np.int64) * max(len(names), 1) + codes)
    twice_keys = key[1:][np.diff(key) == 0]
    if twice_keys.size:
        rows = np.unique(twice_keys // max(len(names), 1))
        raise InputDataError(f"{what}: {len(rows)} rows call the same guide twice (duplicate guide names; {_lines(rows)})")
    # A call with 0 UMIs would vanish from a sparse matrix: keep every call as stored (>= 1).
    values = sp.csr_matrix((np.maximum(umi, 1.0).astype(np.float32), (row, codes)), shape=(len(df), len(names)))
    values.sort_indices()
    return GuideTable(what, barcode, [str(n) for n in names], values, "calls")


def _split_joined(texts: np.ndarray) -> np.ndarray:
    """Every ``|``-separated part of every text, in order, stripped of surrounding blanks."""
    joined = "|".join(texts.tolist())
    if any(ch in joined for ch in " \t"):
        joined = re.sub(r"[ \t]*\|[ \t]*", "|", joined.strip())
    return np.asarray(joined.split("|"), dtype=object)


def _parts_per_row(texts: pd.Series) -> np.ndarray:
    """How many ``|``-separated parts each text has (one pass over the bytes of the joined texts)."""
    data = np.frombuffer("\n".join(texts.tolist()).encode("utf-8"), dtype=np.uint8)
    bars = np.concatenate([[0], np.cumsum(data == ord("|"))])
    ends = np.concatenate([np.flatnonzero(data == ord("\n")), [data.size]])
    starts = np.concatenate([[0], ends[:-1] + 1])
    return bars[ends] - bars[starts] + 1


def _numbers(texts: np.ndarray) -> np.ndarray:
    """``texts`` as float64 (NaN where one is not a number): one C parse of the joined text, else pandas'."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring("|".join(texts.tolist()), dtype=np.float64, sep="|")
            if values.size == texts.size:
                return values
        except (ValueError, DeprecationWarning):
            pass
    return pd.to_numeric(pd.Series(texts), errors="coerce").to_numpy(dtype=np.float64)


# --------------------------------------------------------------------------- 10x .h5
@contextlib.contextmanager
def _open_h5(path: str | Path, setting: str) -> Iterator[Any]:
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{setting}: file not found: {path}")
    try:
        h5 = h5py.File(path, "r")
    except OSError:
        raise InputDataError(f"{path}: not an HDF5 file ({setting})") from None
    try:
        yield h5
    finally:
        h5.close()


def _text(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        return arr.astype(str).astype(object)
    return arr.astype(object)


def _csr_columns(data: Any, indices: Any, indptr: np.ndarray, keep: np.ndarray, n_rows: int) -> sp.csr_matrix:
    """The columns ``keep`` (bool per column) of an on-disk CSR, read ``CHUNK`` entries at a time."""
    col_new = np.cumsum(keep) - 1
    nnz = int(indptr[-1])
    pos_parts, col_parts, val_parts = [], [], []
    for start in range(0, nnz, CHUNK):  # chunks of entries, not rows or cells
        idx = np.asarray(indices[start : start + CHUNK])
        hit = np.flatnonzero(keep[idx])
        if hit.size:
            vals = np.asarray(data[start : start + CHUNK])
            pos_parts.append(start + hit)
            col_parts.append(col_new[idx[hit]])
            val_parts.append(vals[hit])
    pos = np.concatenate(pos_parts) if pos_parts else np.zeros(0, dtype=np.int64)
    rows = np.searchsorted(indptr, pos, side="right") - 1
    cols = np.concatenate(col_parts) if col_parts else np.zeros(0, dtype=np.int64)
    vals = np.concatenate(val_parts).astype(np.float32) if val_parts else np.zeros(0, dtype=np.float32)
    out = sp.csr_matrix((vals, (rows, cols)), shape=(n_rows, int(keep.sum())))
    out.sum_duplicates()
    return out


def read_10x_guides(path: str | Path, feature_type: str) -> GuideTable:
    """Read the guide features of a Cell Ranger ``filtered_feature_bc_matrix.h5`` (Cell Ranger 3 or later).

    Parameters
    ----------
    path
        The ``.h5``: group ``matrix`` with ``barcodes``, ``data``, ``indices``, ``indptr``,
        ``shape`` and ``features/{name, feature_type}``.
    feature_type
        The guide features' type (``guide_feature_type``).

    Returns
    -------
    GuideTable
        ``kind`` counts: the UMI counts of the guide features, named by ``features/name``.
    """
    what = f"{path} (guide_files)"
    with _open_h5(path, "guide_files") as h5:
        if "matrix" not in h5 or "features" not in h5["matrix"]:
            raise InputDataError(
                f"{what}: no matrix/features group; expected Cell Ranger's filtered_feature_bc_matrix.h5 (Cell Ranger 3 or later)"
            )
        m = h5["matrix"]
        try:
            types = _text(m["features"]["feature_type"][()])
            names = _text(m["features"]["name"][()])
            barcodes = _text(m["barcodes"][()])
            indptr = np.asarray(m["indptr"][()], dtype=np.int64)
        except KeyError as exc:
            raise InputDataError(f"{what}: missing {exc.args[0]!r} in the matrix group") from None
        keep = types == feature_type
        if not keep.any():
            raise InputDataError(
                f"{what}: no feature of type {feature_type!r} (guide_feature_type); the file has "
                f"{listing(pd.unique(types), 5)}"
            )
        if len(indptr) != len(barcodes) + 1:
            raise InputDataError(f"{what}: matrix/indptr has {len(indptr)} entries for {len(barcodes)} barcodes")
        guide_rows = np.flatnonzero(keep)
        guide_names = [str(n) for n in names[keep]]
        index = pd.Index(guide_names)
        if index.has_duplicates:
            first = index[index.duplicated()][0]
            rows = guide_rows[np.flatnonzero(index == first)] + 1
            raise InputDataError(
                f"{what}: guide names repeat (duplicate guide names: {first!r} at features {listing(rows, 5)} of matrix/features)"
            )
        values = _csr_columns(m["data"], m["indices"], indptr, keep, len(barcodes))
    _unique_barcodes(barcodes, what)
    return GuideTable(what, barcodes, guide_names, _as_csr(values, what), "counts")


# --------------------------------------------------------------------------- .h5mu
def _pick_modality(available: list[str], wanted: str | None, what: str) -> str:
    if wanted is not None:
        if wanted not in available:
            raise InputDataError(f"{what}: no modality {wanted!r} (guide_modality); modalities: {listing(available, 5)}")
        return wanted
    for name in GUIDE_MODALITIES:
        if name in available:
            return name
    raise InputDataError(
        f"{what}: none of the modalities {listing(available, 5)} is a guide modality ({', '.join(GUIDE_MODALITIES)}); "
        "name it with guide_modality"
    )


def _h5_index(group: Any, what: str) -> np.ndarray:
    key = group.attrs.get("_index", "_index")
    try:
        return _text(read_elem(group[key]))
    except Exception as exc:  # any decoding failure means a bad file
        raise InputDataError(f"{what}: could not read the index: {exc}") from None


def _h5_matrix(group: Any, layer: str | None, what: str) -> Any:
    """X or ``layers[layer]`` of an on-disk AnnData group."""
    if layer is None:
        if "X" not in group:
            raise InputDataError(f"{what}: no X")
        elem, name = group["X"], "X"
    else:
        layers = list(group["layers"].keys()) if "layers" in group else []
        if layer not in layers:
            raise InputDataError(f"{what}: no layer {layer!r} (guide_layer); layers: {listing(layers, 5)}")
        elem, name = group["layers"][layer], f"layers[{layer!r}]"
    try:
        return read_elem(elem), name
    except Exception as exc:
        raise InputDataError(f"{what}: could not read {name}: {exc}") from None


def read_h5mu_guides(path: str | Path, modality: str | None, layer: str | None) -> GuideTable:
    """Read the guide UMI counts of an ``.h5mu``'s guide modality (its X, or ``layer``).

    Parameters
    ----------
    path
        The ``.h5mu`` file (MuData on disk: ``mod/<name>`` AnnData groups).
    modality
        The guide modality (``guide_modality``; None: the first of
        :data:`GUIDE_MODALITIES` present).
    layer
        The layer of counts (``guide_layer``; None: X).
    """
    with _open_h5(path, "guide_files") as h5:
        if "mod" not in h5:
            raise InputDataError(f"{path}: no mod group; is this a MuData .h5mu file? (guide_files)")
        name = _pick_modality(list(h5["mod"].keys()), modality, str(path))
        group = h5["mod"][name]
        what = f"{path} modality {name!r}"
        barcodes = _h5_index(group["obs"], what)
        guides = [str(g) for g in _h5_index(group["var"], what)]
        matrix, elem = _h5_matrix(group, layer, what)
    return _table_from_matrix(f"{what} {elem}", barcodes, guides, matrix)


def _table_from_matrix(what: str, barcodes: np.ndarray, guides: list[str], matrix: Any) -> GuideTable:
    csr = _as_csr(matrix, what)
    if csr.shape != (len(barcodes), len(guides)):
        raise InputDataError(f"{what}: shape {csr.shape} but {len(barcodes)} cells and {len(guides)} guides")
    _unique_names(guides, what, unit="var rows")
    _unique_barcodes(barcodes, what, unit="obs rows")
    return GuideTable(what, barcodes, guides, csr, "counts")


def _memory_modality(container: Any, config: FatebiasConfig) -> GuideTable:
    """The guide modality of an in-memory MuData."""
    mods = list(container.mod.keys())
    name = _pick_modality(mods, config.guide_modality, "MuData (in memory)")
    mod = container.mod[name]
    what = f"MuData (in memory) modality {name!r}"
    if config.guide_layer is None:
        matrix, elem = mod.X, "X"
    elif config.guide_layer in mod.layers:
        matrix, elem = mod.layers[config.guide_layer], f"layers[{config.guide_layer!r}]"
    else:
        raise InputDataError(f"{what}: no layer {config.guide_layer!r} (guide_layer); layers: {listing(list(mod.layers.keys()), 5)}")
    return _table_from_matrix(f"{what} {elem}", _text(mod.obs_names), [str(v) for v in mod.var_names], matrix)


# --------------------------------------------------------------------------- the AnnData and MuData containers
def rna_group(h5: Any, path: Path, config: FatebiasConfig) -> tuple[Any, str]:
    """The AnnData group of ``adata_path`` and its name for messages: the file itself, or ``mod/<rna_modality>`` of an .h5mu."""
    if "mod" not in h5:
        return h5, str(path)
    mods = list(h5["mod"].keys())
    if config.rna_modality not in mods:
        raise InputDataError(f"{path}: no modality {config.rna_modality!r} (rna_modality); modalities: {listing(mods, 5)}")
    return h5["mod"][config.rna_modality], f"{path} modality {config.rna_modality!r}"


def rna_of(container: Any, config: FatebiasConfig) -> Any:
    """The AnnData of an in-memory object: itself, or ``mod[rna_modality]`` of a MuData."""
    mods = getattr(container, "mod", None)
    if mods is None:
        return container
    if config.rna_modality not in mods:
        raise InputDataError(f"MuData (in memory): no modality {config.rna_modality!r} (rna_modality); modalities: {listing(list(mods.keys()), 5)}")
    return mods[config.rna_modality]


def _layer_table(src: Any, config: FatebiasConfig, cells: np.ndarray) -> GuideTable:
    """The guide features of a layer (or X) of the AnnData itself (``guide_source: layer``)."""
    layer = config.guide_layer
    adata = getattr(src, "adata", None)
    if adata is not None:  # in memory
        what = f"{src.source} {'X' if layer is None else f'layers[{layer!r}]'}"
        if layer is not None and layer not in adata.layers:
            raise InputDataError(f"{src.source}: no layer {layer!r} (guide_layer); layers: {listing(list(adata.layers.keys()), 5)}")
        matrix = adata.X if layer is None else adata.layers[layer]
        var = adata.var
        names = [str(v) for v in adata.var_names]
    else:
        matrix, elem = _h5_matrix(src.h5, layer, src.source)
        what = f"{src.source} {elem}"
        var = read_elem(src.h5["var"]) if "var" in src.h5 else pd.DataFrame()
        names = [str(v) for v in _h5_index(src.h5["var"], src.source)]
    if matrix is None:
        raise InputDataError(f"{what}: empty (guide_source layer needs the guide UMI counts there)")
    csr = _as_csr(matrix, what)
    if "feature_types" in getattr(var, "columns", ()):
        keep = np.asarray(var["feature_types"].astype(str) == config.guide_feature_type)
        if not keep.any():
            raise InputDataError(
                f"{what}: no feature with var['feature_types'] == {config.guide_feature_type!r} (guide_feature_type); "
                f"types: {listing(pd.unique(var['feature_types'].astype(str)), 5)}"
            )
        csr = csr[:, np.flatnonzero(keep)]
        names = [n for n, k in zip(names, keep, strict=True) if k]
    _unique_names(names, what, unit="var rows")
    return GuideTable(what, cells, names, csr, "counts")


def _tables(src: Any, config: FatebiasConfig, container: Any, cells: np.ndarray) -> list[GuideTable]:
    """The guide tables of the configured source (one per file)."""
    source = config.guide_source
    if source == "layer":
        return [_layer_table(src, config, cells)]
    if source == "cellranger_calls":
        return [read_protospacer_calls(f) for f in config.guide_files]
    if source == "cellranger_h5":
        return [read_10x_guides(f, config.guide_feature_type) for f in config.guide_files]
    # mudata
    if config.guide_files:
        return [read_h5mu_guides(f, config.guide_modality, config.guide_layer) for f in config.guide_files]
    if container is not None and getattr(container, "mod", None) is not None:
        return [_memory_modality(container, config)]
    if config.adata_path is None or container is not None:
        raise ConfigError("guide_source mudata needs guide_files (an .h5mu) or an .h5mu adata_path (or a MuData in memory)")
    return [read_h5mu_guides(config.adata_path, config.guide_modality, config.guide_layer)]


# --------------------------------------------------------------------------- align to the AnnData's cells
def _align(
    tables: list[GuideTable], cells: np.ndarray, config: FatebiasConfig, adata_source: str
) -> tuple[sp.csr_matrix, list[str], dict, np.ndarray]:
    """Match every table's barcodes to the AnnData's cells and stack them into one (N, J) CSR over the union of guides.

    Returns the matrix, the guides, the matching report and the (N,) cells found in a file.
    """
    n = len(cells)
    _unique_barcodes(np.asarray(cells, dtype=object), f"{adata_source} obs names", unit="obs rows")
    guides = natural_order(pd.unique(np.concatenate([np.asarray(t.guides, dtype=object) for t in tables])))
    guide_index = pd.Index(guides)
    rows, cols, vals = [], [], []
    files = []
    covered = np.zeros(n, dtype=bool)
    cell_names = CellNames(cells)
    for t in tables:
        match = match_barcodes(t.barcodes, cell_names, t.source)
        coo = t.values.tocoo()
        target = match.rows[coo.row]
        ok = target >= 0
        if covered[match.rows[match.rows >= 0]].any():
            raise InputDataError(f"{t.source}: its barcodes match cells already matched by another guide file; one file per sample")
        covered[match.rows[match.rows >= 0]] = True
        rows.append(target[ok])
        cols.append(guide_index.get_indexer(pd.Index(t.guides))[coo.col[ok]])
        vals.append(coo.data[ok])
        unmatched = np.flatnonzero(match.rows < 0)
        files.append({
            "file": t.source,
            "barcodes": len(t.barcodes),
            "matched": match.n_matched,
            "how": match.how,
            "unmatched": int(unmatched.size),
            "unmatched_examples": [str(b) for b in t.barcodes[unmatched[:3]]],
            "guides": len(t.guides),
        })
    values = sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(n, len(guides))
    )
    values.sort_indices()
    n_cov = int(covered.sum())
    if n and n_cov < config.guide_min_matched * n:
        files_txt = "; ".join(f"{f['file']}: {f['matched']} of {f['barcodes']} barcodes matched" for f in files)
        ex_file = next((f["unmatched_examples"] for f in files if f["unmatched_examples"]), [])
        raise InputDataError(
            f"only {n_cov} of {n} cells of {adata_source} ({n_cov / n:.0%}) are in the guide file(s), fewer than "
            f"guide_min_matched={config.guide_min_matched:g} ({files_txt}); unmatched barcodes e.g. {listing(ex_file, 3)} "
            f"vs cells e.g. {listing(np.asarray(cells)[:3], 3)}; barcodes are matched exactly, then with a sample "
            "prefix or suffix added or removed"
        )
    report = {"files": files, "cells_in_files": n_cov, "cells_not_in_files": n - n_cov}
    return values, guides, report, covered


def natural_order(names: Any) -> list[str]:
    """``names`` sorted by their text with the numbers in it compared as numbers (``sg2`` < ``sg10``)."""
    names = pd.Series(np.asarray(names, dtype=object).astype(str))
    key = names.str.replace(r"\d+", lambda m: m.group().zfill(12), regex=True)
    return names.iloc[np.lexsort((names.to_numpy(), key.to_numpy()))].tolist()


def _empty_guides(values: sp.csr_matrix, guides: list[str], config: FatebiasConfig, what: str) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """Drop (with ``drop_empty_guides``) or refuse guide features without a UMI in any matched cell."""
    n_per_guide = np.bincount(values.indices, minlength=len(guides))
    empty = np.flatnonzero(n_per_guide == 0)
    if not empty.size:
        return values, guides, []
    names = [guides[j] for j in empty]
    if not config.drop_empty_guides:
        raise InputDataError(
            f"{what}: {empty.size} guides have no UMI in any cell of the AnnData ({listing(names, 5)}; guide columns "
            f"{listing(empty + 1, 5)}); check the feature reference or modality, or set drop_empty_guides: true to drop "
            "them (they are listed in the load summary)"
        )
    keep = np.flatnonzero(n_per_guide > 0)
    return values[:, keep], [guides[j] for j in keep], names


def read_guides(
    src: Any,
    config: FatebiasConfig,
    container: Any,
    batches: np.ndarray,
    obsm_matrix: tuple[sp.csr_matrix, list[str]] | None = None,
    cache_dir: Path | None = None,
) -> GuideInput:
    """The guides of the AnnData's cells from the configured ``guide_source`` (module docstring).

    Parameters
    ----------
    src
        The AnnData being loaded (:mod:`fatebias_core.data.load`'s source).
    config
        Settings: ``guide_source`` and the ``guide_*``/``assign_*`` settings.
    container
        The in-memory object given to the loader (an AnnData or MuData), or None.
    batches
        (N,) labels of the batches a library assigns within (replicates, or
        ``assign_batch_key``), also the batches of the per-guide QC.
    obsm_matrix
        The matrix and names of ``obsm[guide_key]`` (sources ``obsm`` and ``obsm_counts``).
    cache_dir
        Folder of an earlier run's assignment (``guide_assignment.h5ad``), reused when it
        was made from the same counts and settings.

    Returns
    -------
    GuideInput
    """
    cells = np.asarray(src.obs_names(), dtype=object)
    batches = np.asarray(batches, dtype=object).astype(str)
    measured = np.ones(len(cells), dtype=bool)
    if config.guide_source in ("obsm", "obsm_counts"):
        assert obsm_matrix is not None
        values, guides = obsm_matrix
        report: dict[str, Any] = {"source": config.guide_source, "where": f"obsm[{config.guide_key!r}]"}
        if config.guide_source == "obsm":
            return GuideInput(values, guides, _counts_like(values), batches, report)
        tables_source = f"{src.source} obsm[{config.guide_key!r}]"
    else:
        tables = _tables(src, config, container, cells)
        if config.guide_source == "layer":
            values, guides = tables[0].values, tables[0].guides
            report = {"source": "layer", "where": tables[0].source}
        else:
            values, guides, report, measured = _align(tables, cells, config, src.source)
            report = {"source": config.guide_source, **report}
        tables_source = ", ".join(t.source for t in tables)
    if config.guide_source == "cellranger_calls":
        detected = values.copy()
        detected.data[:] = 1.0
        report["cells_without_guides"] = int((np.diff(detected.indptr) == 0).sum())
        return GuideInput(detected, guides, values, batches, report)
    values, guides, dropped = _empty_guides(values, guides, config, tables_source)
    report["empty_guides_dropped"] = dropped
    assert config.guide_source in GUIDE_COUNT_SOURCES
    assignment = assign_guides(values, guides, cells, batches, config, measured=measured, cache_dir=cache_dir)
    report["assignment"] = assignment.describe()
    report["cells_without_guides"] = int((np.diff(assignment.detected.indptr) == 0).sum())
    return GuideInput(assignment.detected, guides, values, batches, report, assignment)


def _counts_like(values: sp.csr_matrix) -> sp.csr_matrix | None:
    """The detection matrix itself when its values are UMI counts (whole numbers, some above 1), else None."""
    data = values.data
    if data.size and np.all(data == np.round(data)) and data.max() > 1:
        return values
    return None


def batch_labels(src: Any, config: FatebiasConfig, rep: pd.Series) -> np.ndarray:
    """(N,) the batches a library assigns within and the QC reports by: ``obs[assign_batch_key]``, else the replicates."""
    if config.assign_batch_key is None:
        return rep.astype(str).to_numpy(dtype=object)
    return src.require_obs(config.assign_batch_key, "assign_batch_key").astype(str).to_numpy(dtype=object)


def guide_where(config: FatebiasConfig, source: str) -> str:
    """Where the guide matrix came from, for the loader's messages."""
    if config.guide_source in ("obsm", "obsm_counts"):
        return f"{source} obsm[{config.guide_key!r}]"
    files = ", ".join(config.guide_files) or source
    return f"the guides of {files} (guide_source {config.guide_source})"
