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
   cells that share a core; the rule that pairs the most is applied first, then the next;
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


def match_barcodes(barcodes: np.ndarray, cells: np.ndarray, what: str) -> BarcodeMatch:
    """Match the barcodes of a guide file to the AnnData's cell names (module docstring).

    Parameters
    ----------
    barcodes
        (n,) the file's barcodes (unique).
    cells
        (N,) the AnnData's obs names (unique).
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
    cell_index = pd.Index(np.asarray(cells, dtype=object).astype(str))
    file_names = pd.Series(np.asarray(barcodes, dtype=object).astype(str))
    rows = cell_index.get_indexer(file_names)
    how: dict[str, int] = {}
    n_exact = int((rows >= 0).sum())
    if n_exact:
        how["exact"] = n_exact
    if n_exact < len(file_names):
        rows = _match_by_rules(file_names, cell_index, rows, how)
    matched = rows[rows >= 0]
    if len(np.unique(matched)) != len(matched):
        dup = pd.Index(matched)[pd.Index(matched).duplicated()][:3]
        raise InputDataError(
            f"{what}: {len(matched) - len(np.unique(matched))} cells of the AnnData are matched by two barcodes of the file "
            f"(e.g. cell {cell_index[dup[0]]!r}); its barcodes must name one cell each"
        )
    return BarcodeMatch(rows=rows, how=how)


def _match_by_rules(file_names: pd.Series, cell_index: pd.Index, rows: np.ndarray, how: dict[str, int]) -> np.ndarray:
    """Rows of the barcodes still unmatched after the exact round, by prefix/suffix rules (module docstring)."""
    rows = rows.copy()
    file_parts = _split(file_names)
    taken = np.zeros(len(cell_index), dtype=bool)
    taken[rows[rows >= 0]] = True
    cell_parts = _split(pd.Series(cell_index, dtype=object))
    n = len(file_names)
    for _ in range(MAX_RULES):
        open_f = file_parts[rows < 0]
        open_c = cell_parts[~taken]
        found = _best_rule(open_f, open_c)
        if found is None:
            break
        (pre_f, suf_f, pre_c, suf_c), n_pairs = found
        if how and n_pairs < MIN_RULE_SHARE * n:  # barcodes matched already: the rest may be chance pairs
            break
        applies = (rows < 0) & (file_parts["pre"] == pre_f).to_numpy() & (file_parts["suf"] == suf_f).to_numpy()
        idx = np.flatnonzero(applies)
        candidate = pre_c + file_parts["core"].to_numpy(dtype=object)[idx] + suf_c
        hit = cell_index.get_indexer(pd.Index(candidate.astype(str)))
        ok = hit >= 0
        ok[ok] = ~taken[hit[ok]]
        if not ok.any():
            break
        rows[idx[ok]] = hit[ok]
        taken[hit[ok]] = True
        how[_describe(pre_f, suf_f, pre_c, suf_c)] = int(ok.sum())
    return rows
