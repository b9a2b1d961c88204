"""Clones: the independent units behind a screen's cells (docs/method.md, "Clones").

Cells of a time course descend from transduced progenitors: a clone's cells carry the
progenitor's guide set, come from its replicate and share a fate bias of their own. The
model treats each clone as a unit with its own random effect, and the cluster-robust
covariance sums the scores of a clone's cells before their outer product, so both need
the clones.

* With lineage barcodes (``obs[clone_key]``) the clones are those labels
  (:func:`clones_from_labels`).
* Without them they are inferred from the guide sets (:func:`clones_from_guides`).
  Guide capture is incomplete, so sister cells show different subsets of their clone's
  set, and identical sets find few clones. Two cells of one replicate are linked when
  they share more detected guides than chance explains: with ``f_g`` the share of the
  replicate's cells that show guide g, a random cell shares at least ``o`` of cell i's
  guides with probability about ``e_o(f_i)`` (the elementary symmetric polynomial of
  order o of i's guide frequencies), so among the replicate's ``n_r`` cells about
  ``n_r e_o(f_i)`` partners of i share that many by chance. A pair sharing ``o`` guides
  is linked when that expectation is at most ``clone_chance_links`` from both cells'
  side; cells with the same non-empty set are linked as well. Clones are the connected
  components of the links, found again on the clusters until no new link is made. A
  smaller ``clone_chance_links`` merges fewer unrelated clones (coarser clusters keep
  the cluster-robust covariance valid but cost power, and give cells foreign guides)
  and links fewer true sisters (a clone split in two is treated as two independent
  units, which makes intervals too narrow).

:func:`impute_clone_guides` then gives every cell of a clone the union of its cells'
detected guides: a cell carries its clone's guides whether or not they were captured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

__all__ = [
    "Clones",
    "clones_from_guides",
    "clones_from_labels",
    "clones_of_cells",
    "impute_clone_guides",
    "adjusted_rand_index",
]

#: Pairs of guides shared by more cells than this are not used to find candidate pairs:
#: such pairs are common, so sharing them alone is never significant, and a pair that
#: shares more guides is found through its other guide pairs.
MAX_KEY_GROUP = 256
#: Key-pair entries aggregated at once (about 40 bytes each at the peak).
MAX_PAIR_CHUNK = 8_000_000


@dataclass(frozen=True)
class Clones:
    """The clone (cluster) of every cell and how the clones were found.

    Attributes
    ----------
    cluster
        (N,) int64 clone ids 0..C-1.
    source
        ``labels`` (lineage barcodes), ``guide sets`` (inferred) or ``cells`` (every
        cell its own clone).
    description
        How they were formed, in words (load summary, report).
    n_links
        Cell pairs linked (inferred clones only).
    chance_links
        Links expected by chance under the rule (inferred clones only): an upper bound,
        the sum over linked cells of the expected chance partners at their overlap.
    detection
        Estimated guide detection (:func:`detection_rate`; NaN when not inferred).
    """

    cluster: np.ndarray
    source: str
    description: str
    n_links: int = 0
    chance_links: float = 0.0
    detection: float = float("nan")

    @property
    def n_clusters(self) -> int:
        return int(self.cluster.max(initial=-1)) + 1

    def sizes(self) -> np.ndarray:
        """Cells per clone, (C,)."""
        return np.bincount(self.cluster, minlength=self.n_clusters)

    def summary(self) -> dict[str, float | int | str]:
        """Counts and the size distribution: for the load summary, ``fatebias check`` and the report."""
        sizes = self.sizes()
        n = int(sizes.sum())
        if sizes.size == 0:
            return {"n_clusters": 0, "source": self.source, "description": self.description}
        q = np.quantile(sizes, [0.5, 0.9, 0.99])
        return {
            "n_clusters": int(sizes.size),
            "source": self.source,
            "description": self.description,
            "cells_per_clone": round(n / sizes.size, 3),
            "size_median": float(q[0]),
            "size_p90": float(q[1]),
            "size_p99": float(q[2]),
            "size_max": int(sizes.max()),
            "cells_in_multicell_clones": round(float(sizes[sizes > 1].sum()) / max(n, 1), 4),
            "n_links": int(self.n_links),
            "chance_links": round(float(self.chance_links), 2),
            "guide_detection": None if not np.isfinite(self.detection) else round(float(self.detection), 3),
        }

    def describe(self) -> str:
        """One line for the load summary."""
        s = self.summary()
        if not s["n_clusters"]:
            return "clones (independent units): none"
        return (
            f"clones (independent units): {s['n_clusters']} from {self.description}, {s['cells_per_clone']:.2f} cells each "
            f"(median {s['size_median']:g}, 90% {s['size_p90']:g}, max {s['size_max']}); "
            f"{s['cells_in_multicell_clones']:.0%} of cells in clones of 2 or more"
        )


def clones_of_cells(n: int) -> Clones:
    """Every cell its own clone."""
    return Clones(np.arange(n, dtype=np.int64), "cells", "cells (every cell its own unit)")


def clones_from_labels(labels: np.ndarray, what: str) -> Clones:
    """Clones from lineage-barcode labels (any hashable values, one per cell)."""
    cluster = pd.factorize(pd.Series(labels).astype(str).to_numpy())[0].astype(np.int64)
    return Clones(cluster, "labels", what)


def clones_from_guides(sets: np.ndarray, rep: np.ndarray, chance_links: float = 0.3, max_union: int = 64) -> Clones:
    """Clones inferred from overlapping detected guide sets within each replicate.

    Two units (cells, or clusters found so far) of a replicate that share the guides O
    are linked when ``n_r C(a, |O|) prod_{g in O} f_g`` is at most ``chance_links``:
    ``f_g`` is the share of the replicate's units that show guide g (a cluster shows the
    union of its cells' guides), ``n_r`` the number of units, ``a`` the larger unit's
    number of guides, so the product is the number of units expected to share that many
    of its guides, these rare ones, by chance (from the larger unit's side, which has
    more ways to share: a large union would otherwise collect small units). Units with
    the same non-empty set are linked as well. Linking is repeated on the clusters found
    until no new link is made: fragments of one clone (cells that missed different
    guides) share most of its guides and find each other once they are a few cells
    each, where single cells with few detected guides could not. A later round tests
    the pairs that involve a cluster the round before made (the others were tested).
    Memory is bounded: candidate pairs are counted in parts of at most
    :data:`MAX_PAIR_CHUNK`.

    Parameters
    ----------
    sets
        (N, W) detected guide ids per cell, any positive integers (targeting and NTC
        guides alike); 0 pads.
    rep
        (N,) replicate index: cells of different replicates are never linked.
    chance_links
        The threshold: smaller merges fewer unrelated clones and splits more true ones.
    max_union
        A cluster whose union holds more guides is linked no further (two clones merged,
        or a doublet, more likely than one clone).

    Returns
    -------
    Clones
    """
    sets = np.asarray(sets, dtype=np.int64)
    rep = np.asarray(rep, dtype=np.int64)
    cluster, n_links, chance, detection = _merge(sets, rep, np.arange(sets.shape[0], dtype=np.int64), chance_links, max_union)
    return Clones(cluster, "guide sets", _RULE.format(chance_links), n_links=n_links, chance_links=chance, detection=detection)


#: Cell pairs whose overlap is at least this unlikely by chance tell the guide detection.
DETECTION_LINKS = 1e-3


def detection_rate(sets: np.ndarray, groups: np.ndarray, min_groups: int = 20) -> float:
    """Guide detection estimated from groups of sister cells (a moment estimate).

    In a group of m sister cells each of its clone's guides is shown by Binomial(m, p)
    of them; a guide shown by none is not seen at all, so over the guides that are seen
    the mean count is ``m p / (1 - (1 - p)^m)``. p solves the sum of that over the groups'
    guides equal to the counts seen (bisection; the left side increases with p). Groups
    of one cell say nothing. 1.0 where every cell of a group shows every guide (complete
    capture); NaN with fewer than ``min_groups`` groups of two cells or more.

    From groups linked beyond doubt (as :func:`clones_from_guides` uses it) the estimate
    runs a little high: sisters that happen to show more of their guides are the ones
    linked beyond doubt (simulated: 0.80 for 0.7, 0.89 for 0.85, 1.0 for 1.0).
    """
    present = sets > 0
    cell = np.broadcast_to(np.arange(sets.shape[0])[:, None], sets.shape)[present]
    size = np.bincount(groups)
    use = size[groups[cell]] >= 2
    if (size >= 2).sum() < min_groups:
        return float("nan")
    base = int(sets.max(initial=0)) + 1
    keys, counts = np.unique(groups[cell[use]] * base + sets[present][use], return_counts=True)
    m = size[keys // base].astype(np.float64)  # each seen guide's group size
    seen = float(counts.sum())
    if seen >= m.sum():
        return 1.0

    def excess(p: float) -> float:
        return float((m * p / (1.0 - (1.0 - p) ** m)).sum()) - seen

    lo, hi = 1e-6, 1.0 - 1e-12
    for _ in range(60):  # bisection
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def _merge(
    sets: np.ndarray, rep: np.ndarray, cluster: np.ndarray, chance_links: float, max_union: int
) -> tuple[np.ndarray, int, float, float]:
    """Rounds of linking the clusters of ``cluster`` until none is made.

    Returns the merged clusters, the links, their chance count, and the guide detection
    estimated from the groups of cells linked beyond doubt in the first round
    (:data:`DETECTION_LINKS`), where unrelated cells are hardly ever merged.
    """
    n_links, chance, detection = 0, 0.0, float("nan")
    cluster = np.unique(cluster, return_inverse=True)[1].astype(np.int64)
    changed = None  # units made by the last round's links (None: every unit is new)
    for round_ in range(30):  # rounds of merging; each round is vectorised over units
        units, unit_rep = _union_sets(sets, cluster, rep, int(cluster.max(initial=-1)) + 1, max_union)
        i, j, expected = _significant_links(units, unit_rep, chance_links, changed)
        if round_ == 0:
            # Identical sets of one or two guides are shared by chance too often to vouch for sisters.
            sure = (expected <= DETECTION_LINKS) & ((expected > 0) | ((units[i] > 0).sum(axis=1) >= 3))
            n = units.shape[0]
            strict = connected_components(sp.coo_matrix((np.ones(int(sure.sum())), (i[sure], j[sure])), shape=(n, n)), directed=False)[1]
            detection = detection_rate(sets, strict.astype(np.int64)[cluster])
        if i.size == 0:
            break
        n_units = units.shape[0]
        graph = sp.coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n_units, n_units))
        n_comp, comp = connected_components(graph, directed=False)
        n_links += int(i.size)
        chance += float(expected.sum())
        if n_comp == n_units:
            break
        cluster = comp.astype(np.int64)[cluster]
        changed = np.bincount(comp, minlength=n_comp) > 1
    return np.unique(cluster, return_inverse=True)[1].astype(np.int64), n_links, chance, detection


def _significant_links(
    sets: np.ndarray, rep: np.ndarray, chance_links: float, changed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Links between units (rows of ``sets``): identical non-empty sets, and overlaps beyond chance.

    With ``changed`` (a mask of units), only overlaps of pairs with at least one changed
    unit are tested: the other pairs were tested in the round before.

    Returns the pairs and the number of units expected to share as much by chance (0 for
    identical sets).
    """
    present = sets > 0
    k = present.sum(axis=1)
    logf = np.log(np.maximum(_frequencies(sets, rep), 1e-300))
    n_rep = np.bincount(rep)[rep].astype(np.float64)

    def expected_of(i: np.ndarray, j: np.ndarray, overlap: np.ndarray, shared_logf: np.ndarray) -> np.ndarray:
        # From the larger unit's side: a large union would otherwise collect small units by chance.
        return n_rep[i] * comb(np.maximum(k[i], k[j]), overlap) * np.exp(shared_logf)

    i, j, overlap, shared_logf = _shared_guide_pairs(
        sets, k, rep, logf, keep=lambda *pair: expected_of(*pair) <= chance_links, changed=changed
    )
    expected = expected_of(i, j, overlap, shared_logf)
    keep = np.ones(i.size, dtype=bool)
    si, sj = _identical_set_links(sets, present, rep)
    return (
        np.concatenate([i[keep], si]),
        np.concatenate([j[keep], sj]),
        np.concatenate([expected[keep], np.zeros(si.size)]),
    )


def _union_sets(sets: np.ndarray, cluster: np.ndarray, rep: np.ndarray, n_clusters: int, max_union: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, U) union of each cluster's cells' guide sets (0 pads; emptied above ``max_union``) and each cluster's replicate."""
    present = sets > 0
    cell = np.broadcast_to(np.arange(sets.shape[0])[:, None], sets.shape)[present]
    base = int(sets.max(initial=0)) + 1
    pairs = np.unique(cluster[cell] * base + sets[present])
    c_of, g_of = pairs // base, pairs % base
    size = np.bincount(c_of, minlength=n_clusters)
    width = max(int(min(size.max(initial=0), max_union)), 1)
    starts = np.cumsum(size) - size
    pos = np.arange(pairs.size) - starts[c_of]
    keep = (size[c_of] <= max_union) & (pos < width)
    out = np.zeros((n_clusters, width), dtype=np.int64)
    out[c_of[keep], pos[keep]] = g_of[keep]
    unit_rep = np.zeros(n_clusters, dtype=np.int64)
    unit_rep[cluster] = rep
    return out, unit_rep


_RULE = "overlapping guide sets within a replicate (linked where at most {:g} units share as many of their guides by chance)"


def _frequencies(sets: np.ndarray, rep: np.ndarray) -> np.ndarray:
    """(N, W) share of the cell's replicate's cells that show each of its guides (0 at padding)."""
    present = sets > 0
    cell = np.broadcast_to(np.arange(sets.shape[0])[:, None], sets.shape)[present]
    codes, guide = np.unique(sets[present], return_inverse=True)
    n_rep_levels = int(rep.max(initial=-1)) + 1
    counts = sp.csr_matrix(
        (np.ones(guide.size), (rep[cell], guide)), shape=(n_rep_levels, codes.size)
    ).toarray()
    share = counts / np.maximum(np.bincount(rep, minlength=n_rep_levels), 1)[:, None]
    out = np.zeros(sets.shape)
    out[present] = share[rep[cell], guide]
    return out


def _shared_guide_pairs(
    sets: np.ndarray,
    k: np.ndarray,
    rep: np.ndarray,
    logf: np.ndarray,
    keep: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
    changed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unit pairs (i < j, same replicate) that share at least two guides: how many, and the sum of their log frequencies.

    Every pair of guides of a unit is a key; units with a key in common share both of its
    guides, and a pair sharing ``o`` guides has ``o (o - 1) / 2`` keys in common, in which
    each shared guide appears ``o - 1`` times. Keys shared by more than
    :data:`MAX_KEY_GROUP` units are skipped. ``keep(i, j, overlap, logf_sum)`` selects
    the pairs to return (all when None); with ``changed``, only pairs with a changed unit
    are formed.
    """
    n = sets.shape[0]
    order_slots = np.argsort(np.where(sets > 0, sets, np.iinfo(np.int64).max), axis=1)
    srt = np.take_along_axis(sets, order_slots, axis=1)
    lf = np.take_along_axis(logf, order_slots, axis=1)
    base = int(sets.max(initial=0)) + 1
    cells, keys, weights = [], [], []
    for width in np.unique(k[k >= 2]):  # a loop over guide counts; units and their slot pairs are vectorised
        has = np.flatnonzero(k == width)
        a, b = np.triu_indices(int(width), 1)
        g, f = srt[has, :width], lf[has, :width]
        cells.append(np.repeat(has, a.size))
        keys.append((g[:, a] * base + g[:, b]).ravel())
        weights.append((f[:, a] + f[:, b]).ravel())
    empty = np.zeros(0, dtype=np.int64)
    if not cells:
        return empty, empty, empty, np.zeros(0)
    cell = np.concatenate(cells)
    key = np.concatenate(keys)
    weight = np.concatenate(weights)
    n_rep = int(rep.max(initial=0)) + 1
    if n_rep * float(base) ** 2 < 2.0**62:  # one sort key: replicate, then guide pair
        key = rep[cell] * (base * base) + key
        order = np.argsort(key)
        krep = None
    else:
        order = np.lexsort((key, rep[cell]))
        krep = rep[cell[order]]
    cell, key, weight = cell[order], key[order], weight[order]
    if krep is None:
        krep = np.zeros(cell.size, dtype=np.int64)
    new = np.ones(cell.size, dtype=bool)
    new[1:] = (key[1:] != key[:-1]) | (krep[1:] != krep[:-1])
    start = np.flatnonzero(new)
    size = np.diff(np.append(start, cell.size))
    group_size = np.repeat(size, size)
    pos = np.arange(cell.size) - np.repeat(start, size)
    usable = (group_size >= 2) & (group_size <= MAX_KEY_GROUP)
    if changed is not None:  # groups without a changed unit make no pair to test
        usable &= np.repeat(np.maximum.reduceat(changed[cell].astype(np.int8), start), size).astype(bool)
    idx = np.flatnonzero(usable)
    # Pairs are aggregated in parts (by the smaller unit's id), each at most MAX_PAIR_CHUNK
    # key-pair entries, and only the pairs ``keep`` accepts leave a part: memory stays bounded
    # where chance overlaps of two guides are common (many guides per cell).
    rest = group_size[idx] - 1 - pos[idx]
    n_entries = int(rest.sum())
    parts = max(1, -(-n_entries // MAX_PAIR_CHUNK))
    out_i, out_j, out_o, out_w = [], [], [], []
    for part in range(parts):
        left, right, wsum = [], [], []
        sel = idx
        d = 1
        while sel.size:  # a loop over offsets within a key group: all pairs of its units
            sel = sel[pos[sel] + d < group_size[sel]]
            a, b = cell[sel], cell[sel + d]
            mine = np.ones(a.size, dtype=bool) if parts == 1 else (np.minimum(a, b) % parts == part)
            if changed is not None:
                mine &= changed[a] | changed[b]
            left.append(a[mine])
            right.append(b[mine])
            wsum.append(weight[sel][mine])
            d += 1
        if not left:
            break
        i, j, wk = np.concatenate(left), np.concatenate(right), np.concatenate(wsum)
        if i.size == 0:
            continue
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        del i, j
        code, inverse, shared = np.unique(lo * n + hi, return_inverse=True, return_counts=True)
        del lo, hi
        overlap = np.rint((1.0 + np.sqrt(1.0 + 8.0 * shared)) / 2.0).astype(np.int64)
        logf_sum = np.bincount(inverse.ravel(), weights=wk, minlength=code.size) / np.maximum(overlap - 1, 1)
        pi, pj = code // n, code % n
        ok = keep(pi, pj, overlap, logf_sum) if keep is not None else slice(None)
        out_i.append(pi[ok])
        out_j.append(pj[ok])
        out_o.append(overlap[ok])
        out_w.append(logf_sum[ok])
    if not out_i:
        return empty, empty, empty, np.zeros(0)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_o), np.concatenate(out_w)


def comb(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Binomial coefficients C(n, k) elementwise (float)."""
    from scipy.special import comb as _comb

    return _comb(n, k)


def _identical_set_links(sets: np.ndarray, present: np.ndarray, rep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Links from each cell to the first cell of its replicate with the same non-empty guide set."""
    srt = np.sort(np.where(present, sets, 0), axis=1)
    nonempty = present.any(axis=1)
    idx = np.flatnonzero(nonempty)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    table = pd.DataFrame(srt[idx])
    table["rep"] = rep[idx]
    group = table.groupby(list(table.columns), sort=False).ngroup().to_numpy()
    first = np.full(int(group.max()) + 1, -1, dtype=np.int64)
    first[group[::-1]] = idx[::-1]
    anchor = first[group]
    keep = anchor != idx
    return idx[keep], anchor[keep]


def impute_clone_guides(
    guide_ids: np.ndarray, mask: np.ndarray, ntc_ids: np.ndarray, cluster: np.ndarray, kmax: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Give every cell of a clone the union of its clone's detected guides.

    Parameters
    ----------
    guide_ids, mask
        (N, Kmax) padded targeting guide ids (0: NTC or padding) and the mask of real
        entries (NTC entries are id 0 with mask 1).
    ntc_ids
        (N, W) NTC ids per cell (0 pads).
    cluster
        (N,) clone of each cell.
    kmax
        Widest guide list allowed: a clone whose union has more guides keeps its cells'
        own sets (such a union is more likely two clones merged than one clone).

    Returns
    -------
    guide_ids, mask, ntc_ids, burden, n_cells_changed
        The imputed arrays (the same widths), the burden (guides per cell, NTCs
        included) and how many cells gained a guide.
    """
    n = guide_ids.shape[0]
    targets = np.where(mask & (guide_ids > 0), guide_ids, 0).astype(np.int64)
    ntc = np.asarray(ntc_ids, dtype=np.int64)
    offset = int(targets.max(initial=0)) + 1
    ids = np.concatenate([targets, np.where(ntc > 0, ntc + offset, 0)], axis=1)
    present = ids > 0
    cell = np.broadcast_to(np.arange(n)[:, None], ids.shape)[present]
    pairs = np.unique(cluster[cell] * (offset + int(ntc.max(initial=0)) + 1) + ids[present])
    width = offset + int(ntc.max(initial=0)) + 1
    c_of, g_of = pairs // width, pairs % width
    union_size = np.bincount(c_of, minlength=int(cluster.max(initial=-1)) + 1)
    burden_before = present.sum(axis=1)
    ok = union_size[cluster] <= kmax
    ok &= union_size[cluster] > burden_before  # only cells that gain a guide change
    if not ok.any():
        return guide_ids, mask, ntc_ids, burden_before.astype(np.int64), 0
    starts = np.concatenate([[0], np.cumsum(union_size)[:-1]])
    rows = np.flatnonzero(ok)
    slot = np.arange(kmax)
    sizes = union_size[cluster[rows]]
    valid = slot[None, :] < sizes[:, None]
    member = np.where(valid, starts[cluster[rows]][:, None] + slot[None, :], 0)
    union = np.where(valid, g_of[member], 0)
    is_ntc = union >= offset
    new_ids = guide_ids.copy()
    new_mask = mask.copy()
    new_ids[rows] = np.where(valid & ~is_ntc, union, 0)[:, : guide_ids.shape[1]]
    new_mask[rows] = valid[:, : mask.shape[1]]
    ntc_sorted = np.sort(np.where(is_ntc, union - offset, 0), axis=1)[:, ::-1]
    width_ntc = max(ntc.shape[1], int(is_ntc.sum(axis=1).max(initial=0)))
    new_ntc = np.zeros((n, width_ntc), dtype=ntc.dtype)
    new_ntc[:, : ntc.shape[1]] = ntc
    new_ntc[rows] = ntc_sorted[:, :width_ntc]
    burden = np.where(ok, union_size[cluster], burden_before)
    return new_ids.astype(guide_ids.dtype), new_mask, new_ntc.astype(ntc_ids.dtype), burden.astype(np.int64), int(ok.sum())


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labellings of the same items (1: identical partitions)."""
    a = np.unique(np.asarray(a), return_inverse=True)[1]
    b = np.unique(np.asarray(b), return_inverse=True)[1]
    table = sp.coo_matrix((np.ones(a.size), (a, b))).tocsr()
    comb = lambda x: (x * (x - 1) / 2.0).sum()  # noqa: E731
    index = comb(table.data)
    ra, rb = comb(np.asarray(table.sum(axis=1)).ravel()), comb(np.asarray(table.sum(axis=0)).ravel())
    total = a.size * (a.size - 1) / 2.0
    expected = ra * rb / total if total else 0.0
    top = 0.5 * (ra + rb)
    return float((index - expected) / (top - expected)) if top != expected else 1.0
