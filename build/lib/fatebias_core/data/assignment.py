"""Assign guides to cells from UMI counts with crispat (docs/method.md, "Guide assignment").

fatebias does not implement guide assignment: it hands the counts to crispat (Braunger et
al. 2024, velten-group/crispat), whose methods are the settings ``assign_method`` and
``assign_params``, and reads crispat's result back. crispat works on files: the counts go
to a temporary ``.h5ad`` (cells named ``c<row>``, guides ``g<column>``, the batch of each
cell in ``obs['batch']``), crispat writes ``assignments.csv`` (``cell, gRNA, ...``) and,
for some methods, ``gRNA_thresholds.csv``; fatebias maps them back to its rows and
columns. crispat's printing is captured (the last lines appear in an error message when
it fails); a failure is one line naming the method and its settings.

An assignment takes from seconds (``umi``) to hours (``poisson_gauss`` on thousands of
guides), so it is cached: the run folder keeps it in ``guide_assignment.h5ad`` with a
fingerprint of the counts, cells, batches, method, settings and crispat's version, and
loading reuses it when the fingerprint matches (``fatebias check`` reads it, never writes
it).

crispat is an optional dependency (``pip install "fatebias[assign]"``): it brings scanpy
and seaborn, which the rest of fatebias does not need. Reusing a cached assignment does
not import it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import ConfigError, InputDataError
from fatebias_core.hashing import short_hash
from fatebias_core.io import atomic_path, write_csv
from fatebias_core.io import layout as names

log = logging.getLogger("fatebias")

__all__ = ["METHODS", "MethodSpec", "Assignment", "GuideFiles", "assign_guides", "write_guide_files"]

#: Bump when the cached file's layout or the way results are read back changes.
CACHE_FORMAT = 1
#: The ``uns`` entry of ``guide_assignment.h5ad`` that holds the provenance and fingerprint.
UNS_KEY = "fatebias_guide_input"
INSTALL_HINT = 'pip install "fatebias[assign]"'


@dataclass(frozen=True)
class MethodSpec:
    """How fatebias calls one crispat method.

    Attributes
    ----------
    function
        The crispat function (``ga_*``).
    defaults
        fatebias' defaults for its keyword arguments (``assign_params`` override them).
    low_moi
        The method compares a cell's guides with each other (one guide per cell assumed).
    thresholds_list
        The method takes a ``thresholds`` list and writes ``assignments_t<t>.csv`` per value;
        fatebias runs exactly one.
    """

    function: str
    defaults: dict[str, Any] = field(default_factory=dict)
    low_moi: bool = False
    thresholds_list: bool = False


#: The crispat methods of ``assign_method``. Plots are off; crispat's dask cluster too.
METHODS: dict[str, MethodSpec] = {
    "gauss": MethodSpec("ga_gauss", {"inference": "em", "make_plots": False}),
    "poisson_gauss": MethodSpec("ga_poisson_gauss", {"make_plots": False}),
    "umi": MethodSpec("ga_umi", {"thresholds": [2]}, thresholds_list=True),
    "poisson": MethodSpec("ga_poisson", {"parallelize": False}),
    "negative_binomial": MethodSpec("ga_negative_binomial", {"parallelize": False}),
    "binomial": MethodSpec("ga_binomial", {"parallelize": False}),
    "max": MethodSpec("ga_max", low_moi=True),
    "ratio": MethodSpec("ga_ratio", {"thresholds": [0.5]}, low_moi=True, thresholds_list=True),
    "quantiles": MethodSpec("ga_quantiles", {"thresholds": [0.9]}, low_moi=True, thresholds_list=True),
    "2beta": MethodSpec("ga_2beta", low_moi=True),
    "3beta": MethodSpec("ga_3beta", low_moi=True),
}
#: Arguments fatebias sets itself (the files, and crispat's splitting into guide ranges).
RESERVED = frozenset({"input_file", "output_dir", "start_gRNA", "step", "gRNA_step", "batch_list"})


@dataclass(frozen=True)
class Assignment:
    """A library's assignment of guides to the AnnData's cells.

    Attributes
    ----------
    detected
        (N, J) CSR, 1 where the guide is assigned to the cell.
    method, params
        The crispat method and the keyword arguments it ran with.
    library
        ``crispat <version>``.
    library_thresholds
        Per guide and batch, the UMI threshold crispat fitted (``guide, batch,
        library_threshold``), for the methods that report one; else empty.
    fingerprint
        Hash of what the assignment was made from (counts, cells, batches, method, settings, version).
    runtime_s
        Seconds crispat ran (0 when reused).
    reused
        Read from the run folder's ``guide_assignment.h5ad`` instead of being made.
    """

    detected: sp.csr_matrix
    method: str
    params: dict[str, Any]
    library: str
    library_thresholds: pd.DataFrame
    fingerprint: str
    runtime_s: float = 0.0
    reused: bool = False

    def describe(self) -> dict[str, Any]:
        """JSON-friendly facts for the load summary."""
        return {
            "library": self.library,
            "method": self.method,
            "function": METHODS[self.method].function,
            "params": self.params,
            "runtime_s": round(self.runtime_s, 2),
            "reused": self.reused,
            "fingerprint": self.fingerprint,
        }


# --------------------------------------------------------------------------- settings
def crispat_version() -> str | None:
    """crispat's installed version, without importing it (None when absent)."""
    try:
        return version("crispat")
    except PackageNotFoundError:
        return None


def _crispat() -> Any:
    try:
        return importlib.import_module("crispat")
    except ImportError as exc:
        raise ConfigError(
            f"guide assignment from UMI counts needs crispat ({exc}); install it with {INSTALL_HINT}"
        ) from None


def resolve_params(config: FatebiasConfig) -> dict[str, Any]:
    """fatebias' defaults for ``assign_method`` updated with ``assign_params`` (checked without importing crispat)."""
    spec = METHODS[config.assign_method]
    params = {**spec.defaults, **config.assign_params}
    reserved = sorted(RESERVED & set(params))
    if reserved:
        raise ConfigError(f"assign_params: {', '.join(reserved)} are set by fatebias, not by assign_params")
    if spec.thresholds_list:
        thresholds = params.get("thresholds")
        if not isinstance(thresholds, list) or len(thresholds) != 1:
            raise ConfigError(
                f"assign_params: assign_method {config.assign_method} takes exactly one threshold, "
                f"e.g. thresholds: [{spec.defaults['thresholds'][0]}] (got {thresholds!r})"
            )
    return params


def _check_signature(function: Any, params: dict[str, Any], method: str) -> None:
    accepted = set(inspect.signature(function).parameters) - RESERVED
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(
            f"assign_params: crispat's {function.__name__} (assign_method {method}) has no argument "
            f"{', '.join(unknown)}; it takes {', '.join(sorted(accepted))}"
        )


# --------------------------------------------------------------------------- fingerprint and cache
def fingerprint(counts: sp.csr_matrix, guides: list[str], cells: np.ndarray, batches: np.ndarray, method: str, params: dict) -> str:
    """Hash of everything an assignment depends on."""
    arrays = (counts.indptr, counts.indices, counts.data)
    texts = ("\0".join(text) for text in (guides, list(map(str, cells)), list(map(str, batches))))
    spec = json.dumps({"method": method, "params": params, "crispat": crispat_version(), "format": CACHE_FORMAT},
                      sort_keys=True, default=str)
    return short_hash(*arrays, *texts, spec, length=24)


def read_cached(cache_dir: Path | None, fp: str, cells: np.ndarray, guides: list[str]) -> Assignment | None:
    """The assignment in ``<cache_dir>/guide_assignment.h5ad`` when its fingerprint is ``fp`` (else None)."""
    if cache_dir is None:
        return None
    path = Path(cache_dir) / names.GUIDE_ASSIGNMENT
    if not path.is_file():
        return None
    import anndata as ad
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            stored = h5["uns"][UNS_KEY]["fingerprint"][()]
        if (stored.decode() if isinstance(stored, bytes) else str(stored)) != fp:
            return None
        cached = ad.read_h5ad(path)
    except (OSError, KeyError):
        return None  # an unreadable or foreign file is not a cache
    if list(cached.var_names) != list(guides) or not np.array_equal(np.asarray(cached.obs_names, dtype=object), np.asarray(cells, dtype=object)):
        return None
    info = cached.uns[UNS_KEY]
    lib = cached.uns.get(f"{UNS_KEY}_library_thresholds")
    return Assignment(
        detected=sp.csr_matrix(cached.X, dtype=np.float32),
        method=str(info["method"]),
        params=json.loads(str(info["params_json"])),
        library=str(info["library"]),
        library_thresholds=pd.DataFrame(lib) if lib is not None else _no_thresholds(),
        fingerprint=fp,
        reused=True,
    )


def _no_thresholds() -> pd.DataFrame:
    return pd.DataFrame({"guide": pd.Series(dtype=str), "batch": pd.Series(dtype=str), "library_threshold": pd.Series(dtype=float)})


# --------------------------------------------------------------------------- running crispat
def assign_guides(
    counts: sp.csr_matrix,
    guides: list[str],
    cells: np.ndarray,
    batches: np.ndarray,
    config: FatebiasConfig,
    measured: np.ndarray | None = None,
    cache_dir: Path | None = None,
) -> Assignment:
    """Assign guides to cells from UMI counts with crispat's ``assign_method`` (module docstring).

    Parameters
    ----------
    counts
        (N, J) CSR UMI counts, rows the AnnData's cells.
    guides
        (J,) guide names.
    cells
        (N,) the AnnData's cell names (for the cache).
    batches
        (N,) batch labels (crispat's ``obs['batch']``).
    config
        ``assign_method``, ``assign_params``.
    measured
        (N,) cells whose counts were measured (in a guide file); only these are given to
        crispat (None: all).
    cache_dir
        Run folder whose ``guide_assignment.h5ad`` is reused when it matches.

    Returns
    -------
    Assignment

    Raises
    ------
    ConfigError
        crispat is not installed, or ``assign_params`` does not fit the method.
    InputDataError
        crispat failed, or assigned no guide at all.
    """
    method = config.assign_method
    params = resolve_params(config)
    rows = np.arange(counts.shape[0]) if measured is None else np.flatnonzero(measured)
    fp = fingerprint(counts, guides, cells, batches, method, params)
    cached = read_cached(cache_dir, fp, cells, guides)
    if cached is not None:
        log.info("guide assignment: reusing %s (same counts and settings)", Path(cache_dir or ".") / names.GUIDE_ASSIGNMENT)
        return cached
    crispat = _crispat()
    function = getattr(crispat, METHODS[method].function)
    _check_signature(function, params, method)
    log.info("guide assignment: crispat %s on %d cells x %d guides ...", function.__name__, rows.size, len(guides))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fatebias-crispat-") as tmp:
        out = _run(function, counts[rows], batches[rows], Path(tmp), params, method)
        pairs, lib = _read_results(out, method, rows, len(guides), batches)
    detected = sp.csr_matrix((np.ones(len(pairs), dtype=np.float32), (pairs[:, 0], pairs[:, 1])), shape=counts.shape)
    detected.sum_duplicates()
    detected.data[:] = 1.0
    if detected.nnz == 0:
        raise InputDataError(
            f"crispat {function.__name__} (assign_method {method}, assign_params {params}) assigned no guide to any cell; "
            "look at the guide UMI counts (fatebias check prints their distribution) and choose another method or threshold"
        )
    lib["guide"] = np.asarray(guides, dtype=object)[lib["column"].to_numpy(dtype=np.int64)] if len(lib) else []
    return Assignment(
        detected=detected,
        method=method,
        params=params,
        library=f"crispat {crispat_version()}",
        library_thresholds=lib[["guide", "batch", "library_threshold"]] if len(lib) else _no_thresholds(),
        fingerprint=fp,
        runtime_s=time.perf_counter() - t0,
    )


def _run(function: Any, counts: sp.csr_matrix, batches: np.ndarray, tmp: Path, params: dict, method: str) -> Path:
    """Write the counts for crispat, run ``function`` with its output captured; return its output folder."""
    import anndata as ad

    n, j = counts.shape
    adata = ad.AnnData(
        X=sp.csr_matrix(counts, dtype=np.float32),
        obs=pd.DataFrame({"batch": pd.Categorical(batches)}, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{k}" for k in range(j)]),
    )
    input_file = tmp / "guide_counts.h5ad"
    adata.write_h5ad(input_file)
    out = tmp / "out"
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            function(input_file=str(input_file), output_dir=f"{out}/", **params)
    except Exception as exc:  # crispat's own failure, stated in one line
        last = [ln.strip() for ln in captured.getvalue().splitlines() if ln.strip()][-1:]
        said = f"; it last printed: {last[0][:200]}" if last else ""
        raise InputDataError(
            f"crispat {function.__name__} failed (assign_method {method}, assign_params {params}): "
            f"{type(exc).__name__}: {exc}{said}"
        ) from None
    return out


def _read_results(out: Path, method: str, rows: np.ndarray, n_guides: int, batches: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """(pairs of (row, column) assigned, library thresholds with ``column, batch, library_threshold``)."""
    if METHODS[method].thresholds_list:
        found = sorted(out.glob("assignments_t*.csv"))
    else:
        found = [out / "assignments.csv"] if (out / "assignments.csv").is_file() else []
    if len(found) != 1:
        raise InputDataError(f"crispat {method}: expected one assignments file in its output, found {len(found)}")
    try:
        table = pd.read_csv(found[0], dtype={"cell": str, "gRNA": str})
    except pd.errors.EmptyDataError:
        table = pd.DataFrame({"cell": pd.Series(dtype=str), "gRNA": pd.Series(dtype=str)})
    if table.empty or not {"cell", "gRNA"} <= set(table.columns):
        return np.zeros((0, 2), dtype=np.int64), pd.DataFrame()
    local = table["cell"].str.slice(1).astype(np.int64).to_numpy()
    column = table["gRNA"].str.slice(1).astype(np.int64).to_numpy()
    pairs = np.stack([rows[local], column], axis=1)
    return pairs, _library_thresholds(out, batches)


def _library_thresholds(out: Path, batches: np.ndarray) -> pd.DataFrame:
    """crispat's fitted UMI thresholds (``gRNA_thresholds.csv``, overall or per ``batch<b>/`` folder)."""
    parts = []
    everyone = ",".join(sorted(set(map(str, batches))))
    for path in sorted(out.glob("**/gRNA_thresholds*.csv")):
        try:
            t = pd.read_csv(path, dtype={"gRNA": str})
        except pd.errors.EmptyDataError:
            continue
        if not {"gRNA", "threshold"} <= set(t.columns) or t.empty:
            continue
        batch = path.parent.name.removeprefix("batch") if path.parent != out else everyone
        parts.append(pd.DataFrame({
            "column": t["gRNA"].str.slice(1).astype(np.int64), "batch": batch,
            "library_threshold": pd.to_numeric(t["threshold"], errors="coerce"),
        }))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# --------------------------------------------------------------------------- files beside the run
@dataclass(frozen=True)
class GuideFiles:
    """The guides as loaded, to be written beside the run (``guide_assignment.h5ad``, ``guide_thresholds.csv``).

    Attributes
    ----------
    detected
        (N, J) CSR, non-zero = detected (assigned or called).
    counts
        (N, J) CSR UMI counts (None when the source had none).
    cells, guides
        Row and column names (the AnnData's cells; the guides).
    per_guide
        One row per guide and batch: thresholds, cells, UMI summaries, detection estimate.
    info
        Provenance (source, files, matching, assignment, fingerprint), JSON-friendly.
    library_thresholds
        crispat's fitted thresholds (may be empty).
    """

    detected: sp.csr_matrix
    counts: sp.csr_matrix | None
    cells: np.ndarray
    guides: list[str]
    per_guide: pd.DataFrame
    info: dict
    library_thresholds: pd.DataFrame

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write both files atomically; return their paths."""
        return write_guide_files(self, out_dir)


def write_guide_files(files: GuideFiles, out_dir: str | Path) -> list[Path]:
    """``guide_assignment.h5ad`` (X: 1 = detected, layers['counts']: UMIs, var: per guide) and ``guide_thresholds.csv``."""
    import anndata as ad

    out = Path(out_dir)
    per_guide = files.per_guide
    var = (per_guide.groupby("guide", sort=False)
           .agg(cells_assigned=("cells_assigned", "sum"), threshold_min=("threshold", "min"), threshold_max=("threshold", "max"))
           .reindex(files.guides))
    adata = ad.AnnData(
        X=sp.csr_matrix(files.detected, dtype=np.uint8),
        obs=pd.DataFrame(index=pd.Index(np.asarray(files.cells, dtype=object).astype(str))),
        var=var.set_axis(pd.Index(files.guides)),
        layers={} if files.counts is None else {"counts": sp.csr_matrix(files.counts, dtype=np.float32)},
    )
    info = dict(files.info)
    info["params_json"] = json.dumps(info.get("params", {}), sort_keys=True, default=str)
    adata.uns[UNS_KEY] = {k: v if isinstance(v, str | int | float | bool) else json.dumps(v, default=str) for k, v in info.items()}
    if len(files.library_thresholds):
        adata.uns[f"{UNS_KEY}_library_thresholds"] = files.library_thresholds.reset_index(drop=True)
    path = out / names.GUIDE_ASSIGNMENT
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return [path, write_csv(per_guide, out / names.GUIDE_THRESHOLDS)]
