"""Load an experiment: AnnData + guide map -> :class:`~fatebias_core.types.Experiment`.

This is the data step (docs/method.md, "Data"). :func:`load_experiment` reads only what
the model needs from the ``.h5ad`` (the fate probabilities, the guide matrix, the day
and replicate labels and a few ``uns`` entries; never ``X`` or the layers), validates
everything, and builds the padded guide embedding with array arithmetic on the CSR
structure. The pieces it puts together each have a module: AnnData access
(:mod:`.adata_access`), the guide map (:mod:`.guide_map`), the fate probabilities
(:mod:`.fates`), the guide matrix and its embedding (:mod:`.embedding`), the guides
from other sources (:mod:`.guide_sources`) and the clones (:mod:`.clones`).

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

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fatebias_core.config import FatebiasConfig
from fatebias_core.data.adata_access import AnnDataSource, open_source
from fatebias_core.data.clones import (
    Clones,
    clones_from_guides,
    clones_from_labels,
    impute_clone_guides,
)
from fatebias_core.data.embedding import embed_guides, guide_matrix
from fatebias_core.data.fates import (
    DROP_HINT,
    FATE_ROW_REASONS,
    clean_fate_probs,
    fate_matrix,
    fate_row_problems,
)
from fatebias_core.data.guide_map import read_guide_map, validate_guide_map
from fatebias_core.data.guide_qc import guide_report
from fatebias_core.data.guide_sources import (
    GuideInput,
    batch_labels,
    guide_where,
    read_guides,
)
from fatebias_core.errors import InputDataError, listing
from fatebias_core.types import (
    Experiment,
    FilteredCells,
    GuideEmbedding,
    LoadSummary,
    center_by_group,
)

__all__ = [
    "load_experiment",
    "read_guide_map",
    "validate_guide_map",
    "clean_fate_probs",
    "order_labels",
    "embed_guides",
]

_NUMBER = re.compile(r"\d+(?:\.\d+)?")



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
                f"{what}: labels {listing(unknown)} are not in day_order ({listing(order)})"
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
                f"{what}: labels {listing(clash)} have the same number; cannot order them "
                "(give the order with day_order: [...])"
            )
        rank = sorted(range(len(uniques)), key=lambda j: (numbers[j], uniques[j]))
    remap = np.empty(len(uniques), dtype=np.int64)
    remap[rank] = np.arange(len(uniques))
    return remap[codes], tuple(uniques[j] for j in rank)


def _replicates(src: AnnDataSource, config: FatebiasConfig) -> tuple[pd.Series, str]:
    col = src.obsm_column(config.covar_key, config.rep_key)
    if col is not None:
        return col, f"obsm[{config.covar_key!r}][{config.rep_key!r}]"
    if config.rep_key in src.obs_keys():
        return src.obs(config.rep_key), f"obs[{config.rep_key!r}]"
    raise InputDataError(
        f"{src.source}: replicate column {config.rep_key!r} (rep_key) not found in "
        f"obsm[{config.covar_key!r}] (covar_key) or obs; "
        f"available obs columns: {listing(src.obs_keys())}"
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
            f"(map: {listing(gmap['guide_name'], 3)}; matrix: {listing(matrix_guides, 3)})"
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
    with open_source(config, adata) as src:
        source = src.source
        raw_probs, fate_origin = fate_matrix(src, config)
        probs, n_renorm = clean_fate_probs(
            raw_probs,
            config.fate_sum_tol,
            f"{source}: obsm[{config.fate_prob_key!r}]",
            drop=config.drop_invalid_cells,
        )
        day_raw = src.require_obs(config.day_key, "day_key").reset_index(drop=True)
        rep_raw, rep_where = _replicates(src, config)
        obsm = guide_matrix(src, config.guide_key) if config.guide_source in ("obsm", "obsm_counts") else None
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
                f"{source}: {where} has {len(found)} levels ({listing(found)}) "
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
            f"{source}: days {listing(empty)} have no cells left after the Kmax={kmax} filter"
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
