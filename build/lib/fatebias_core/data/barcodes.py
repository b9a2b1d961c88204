"""Match the cell barcodes of a guide file to the cells of the AnnData (docs/method.md, "Guide inputs").

Cell Ranger names a cell by its barcode and GEM-well suffix (``AAACCTGAGAAACCAT-1``);
by the time the cells reach an AnnData with fate probabilities they often carry a sample
prefix or suffix (``rep1_AAACCTGAGAAACCAT-1``, ``AAACCTGAGAAACCAT-1-0`` after
``anndata.concat``). :func:`match_barcodes` therefore matches in rounds, each on the
barcodes still unmatched:

1. exactly;
2. by a *rule*: the barcode's core (its run of at least ten nucleotides and the GEM-well
   suffix right after it) is kept and the text around it replaced, e.g. ``'' -> 'rep1_'``
   before and ``'' -> ''`` after. Candidate rules come from pairing file barcodes and
   cells that share a core (on samples of both: :data:`RULE_SAMPLE` barcodes,
   :data:`CELL_SAMPLE` cells); the rule that pairs the most is applied first, then the next;
   once some barcodes are matched, a further rule must pair at least
   :data:`MIN_RULE_SHARE` of the file's barcodes (two
   samples in one AnnData share cores by chance, at about the share of the barcode
   whitelist that a sample uses; a rule found only through such chance pairs is never
   applied).

Every step is vectorised (pandas string methods, merges and index lookups); nothing loops
over barcodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fatebias_core.errors import InputDataError

#: A barcode's core: a run of >= 10 nucleotides and the GEM-well suffix (``-1``) right after it.
CORE = r"^(?P<pre>.*?)(?P<core>[ACGTN]{10,}(?:-\d+)?)(?P<suf>.*)$"
#: A rule after the first must match at least this share of a file's barcodes.
MIN_RULE_SHARE = 0.1
#: At most this many rules per file.
MAX_RULES = 8
#: Rules are found on at most this many of a file's unmatched barcodes ...
RULE_SAMPLE = 2000
#: ... paired with at most this many cells (pairs expected: about RULE_SAMPLE x CELL_SAMPLE / cells x the matched share).
CELL_SAMPLE = 50000


@dataclass(frozen=True)
class BarcodeMatch:
    """Where each barcode of a guide file is among the AnnData's cells.

    Attributes
    ----------
    rows
        (n_barcodes,) index of the matching cell, -1 where none matched.
    how
        Barcodes matched in each round, by a description of the round (``exact``,
        ``prefix 'rep1_' added``, ...), in the order applied.
    """

    rows: np.ndarray
    how: dict[str, int] = field(default_factory=dict)

    @property
    def n_matched(self) -> int:
        return int((self.rows >= 0).sum())


def _split(names: pd.Series) -> pd.DataFrame:
    """Columns ``pre``, ``core``, ``suf`` of each name (NaN where it has no core)."""
    return names.str.extract(CORE)


def _describe(pre_f: str, suf_f: str, pre_c: str, suf_c: str) -> str:
    """A rule in words: what happens to the text before and after the core."""
    parts = []
    for where, old, new in (("prefix", pre_f, pre_c), ("suffix", suf_f, suf_c)):
        if old == new:
            continue
        if not old:
            parts.append(f"{where} {new!r} added")
        elif not new:
            parts.append(f"{where} {old!r} removed")
        else:
            parts.append(f"{where} {old!r} replaced by {new!r}")
    return ", ".join(parts) or "exact"


def _best_rule(file_parts: pd.DataFrame, cell_parts: pd.DataFrame) -> tuple[tuple[str, str, str, str], int] | None:
    """The (pre_f, suf_f, pre_c, suf_c) rule that pairs the most barcodes sharing a core, and how many."""
    f = file_parts.dropna(subset=["core"])
    c = cell_parts.dropna(subset=["core"])
    if f.empty or c.empty:
        return None
    pairs = f.merge(c, on="core", suffixes=("_f", "_c"))
    if pairs.empty:
        return None
    counts = pairs.groupby(["pre_f", "suf_f", "pre_c", "suf_c"], sort=False).size()
    counts = counts[[(a, b) != (c_, d) for a, b, c_, d in counts.index]]  # identity = exact, done already
    if counts.empty:
        return None
    best = counts.idxmax()
    return (str(best[0]), str(best[1]), str(best[2]), str(best[3])), int(counts.max())


class CellNames:
    """The AnnData's cell names, with the cores of an evenly spaced sample of them split off once (shared by every guide file)."""

    def __init__(self, cells: np.ndarray) -> None:
        self.index = pd.Index(np.asarray(cells, dtype=object).astype(str))
        self._parts: pd.DataFrame | None = None

    @property
    def parts(self) -> pd.DataFrame:
        """``pre, core, suf`` of at most :data:`CELL_SAMPLE` cells, indexed by their rows."""
        if self._parts is None:
            rows = np.arange(0, len(self.index), max(1, len(self.index) // CELL_SAMPLE))
            self._parts = _split(pd.Series(self.index[rows], index=rows, dtype=object))
        return self._parts


def match_barcodes(barcodes: np.ndarray, cells: np.ndarray | CellNames, what: str) -> BarcodeMatch:
    """Match the barcodes of a guide file to the AnnData's cell names (module docstring).

    Parameters
    ----------
    barcodes
        (n,) the file's barcodes (unique).
    cells
        (N,) the AnnData's obs names (unique), or a :class:`CellNames` of them.
    what
        The file, for error messages.

    Returns
    -------
    BarcodeMatch

    Raises
    ------
    InputDataError
        Two file barcodes matched to one cell.
    """
    names = cells if isinstance(cells, CellNames) else CellNames(cells)
    cell_index = names.index
    file_names = pd.Series(np.asarray(barcodes, dtype=object).astype(str))
    rows = cell_index.get_indexer(file_names)
    how: dict[str, int] = {}
    n_exact = int((rows >= 0).sum())
    if n_exact:
        how["exact"] = n_exact
    if n_exact < len(file_names):
        rows = _match_by_rules(file_names, names, rows, how)
    matched = rows[rows >= 0]
    if len(np.unique(matched)) != len(matched):
        dup = pd.Index(matched)[pd.Index(matched).duplicated()][:3]
        raise InputDataError(
            f"{what}: {len(matched) - len(np.unique(matched))} cells of the AnnData are matched by two barcodes of the file "
            f"(e.g. cell {cell_index[dup[0]]!r}); its barcodes must name one cell each"
        )
    return BarcodeMatch(rows=rows, how=how)


def _apply_rule(names: pd.Series, rule: tuple[str, str, str, str], cell_index: pd.Index) -> np.ndarray:
    """Row of each name under ``rule`` (-1 where the name lacks the rule's prefix/suffix or no cell has the result)."""
    pre_f, suf_f, pre_c, suf_c = rule
    if not pre_f and not suf_f:  # the usual case: plain 10x barcodes
        return cell_index.get_indexer(pre_c + names + suf_c)
    fits = names.str.startswith(pre_f).to_numpy(dtype=bool) & names.str.endswith(suf_f).to_numpy(dtype=bool)
    fits &= names.str.len().to_numpy() >= len(pre_f) + len(suf_f)
    core = names.str.slice(len(pre_f), -len(suf_f) if suf_f else None)
    hit = cell_index.get_indexer(pre_c + core + suf_c)
    return np.where(fits, hit, -1)


def _match_by_rules(file_names: pd.Series, names: CellNames, rows: np.ndarray, how: dict[str, int]) -> np.ndarray:
    """Rows of the barcodes still unmatched after the exact round, by prefix/suffix rules (module docstring).

    Rules are found on an evenly spaced sample of at most :data:`RULE_SAMPLE` unmatched
    barcodes (their share of the sample estimates their share of the file) and applied to
    all of them by plain prefix and suffix surgery, each result looked up exactly.
    """
    rows = rows.copy()
    cell_index = names.index
    taken = np.zeros(len(cell_index), dtype=bool)
    taken[rows[rows >= 0]] = True
    n = len(file_names)
    cell_parts = names.parts
    for _ in range(MAX_RULES):
        open_idx = np.flatnonzero(rows < 0)
        if not open_idx.size:
            break
        sample = open_idx[:: max(1, open_idx.size // RULE_SAMPLE)]
        open_cells = cell_parts[~taken[cell_parts.index.to_numpy()]]
        found = _best_rule(_split(file_names.iloc[sample]), open_cells)
        if found is None:
            break
        rule, n_pairs = found
        # the rule's estimated share of the file: pairs per sampled barcode, scaled up by the cells not sampled
        share = n_pairs / sample.size * open_idx.size / n * max(1.0, (~taken).sum() / max(len(open_cells), 1))
        if how and share < MIN_RULE_SHARE:  # matched already: the rest may be chance pairs
            break
        hit = _apply_rule(file_names.iloc[open_idx].reset_index(drop=True), rule, cell_index)
        ok = hit >= 0
        ok[ok] = ~taken[hit[ok]]
        if not ok.any():
            break
        rows[open_idx[ok]] = hit[ok]
        taken[hit[ok]] = True
        how[_describe(*rule)] = int(ok.sum())
    return rows
