"""The answer of a run in plain terms: per contrast, which genes shift fate, which way, how much.

Shared by the console summary of ``fatebias run``/``demo`` and the HTML report. For
every contrast (fate vs the reference fate) it reads the ranked calls (the primary
contrast's ``hits_ranked.csv``; the other contrasts' ``hits_ranked_<FATE>.csv``, their
gene mash tables ranked with the same calls by the rank step) and expresses each
effect three ways:

* the direction in words: a positive logit effect moves cells *towards* the contrast
  fate, a negative one towards the reference fate;
* the logit effect with its 90% credible interval (posterior mean +/- 1.645 SD);
* the change in probability of the contrast fate at that day's baseline: with the
  day's mean probability ``p0`` of the fate (``load_summary.json``) and a logit shift
  ``b`` of the fate against the others, ``p1 = p0 e^b / (1 - p0 + p0 e^b)``.

lfsr that underflows double precision is written as a bound (``< 1e-300``), never 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.discovery.calls import SOURCE_PREFIXES, rank_hits
from fatebias_core.errors import FatebiasError, InputDataError
from fatebias_core.io import layout as names
from fatebias_core.io import read_csv
from fatebias_core.io.tables import DayAxis, bool_column, parse_day_lists, read_posterior
from fatebias_core.model.posterior import day_suffixes

#: Smallest lfsr written as a number; below it (underflow included) the text is a bound.
LFSR_FLOOR = 1e-300
#: z of the two-sided 90% credible interval of a normal posterior.
Z90 = 1.6448536269514722


def lfsr_text(x: float) -> str:
    """An lfsr as text: 3 decimals, scientific below 0.001, ``< 1e-300`` where it underflows."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    if not np.isfinite(v):
        return "–"
    if v < LFSR_FLOOR:
        return f"< {LFSR_FLOOR:.0e}"
    return f"{v:.1e}" if v < 1e-3 else f"{v:.3f}"


def shifted_probability(p0: np.ndarray | float, effect: np.ndarray | float) -> np.ndarray:
    """Probability of a fate after its logit (against all others) moves by ``effect``.

    ``p1 = p0 e^b / (1 - p0 + p0 e^b)``, computed as ``expit(logit(p0) + b)``.
    """
    p0 = np.clip(np.asarray(p0, dtype=float), 1e-12, 1 - 1e-12)
    z = np.log(p0) - np.log1p(-p0) + np.asarray(effect, dtype=float)
    return 1.0 / (1.0 + np.exp(-z))


def direction_text(effect: float, fate: str, ref: str) -> str:
    """``towards <fate>`` for a positive effect, ``towards <ref>`` for a negative one."""
    return f"towards {fate}" if effect > 0 else f"towards {ref}" if effect < 0 else "no shift"


@dataclass
class ContrastAnswer:
    """The ranked genes of one contrast with their daywise effects, aligned row by row.

    Attributes
    ----------
    fate, ref
        The contrast fate and the reference fate.
    hits
        The ranked table (hits first).
    genes, hit
        (n,) gene names and whether each is a hit.
    axis
        The days (column suffixes in day order).
    mean, sd, lfsr, called
        (n, D) posterior mean (logit), SD, lfsr and called gene-days.
    baseline
        (D,) mean probability of ``fate`` among the day's cells; None when unknown.
    effects_from
        Which file the effects come from (for captions).
    """

    fate: str
    ref: str
    hits: pd.DataFrame
    genes: np.ndarray
    hit: np.ndarray
    axis: DayAxis
    mean: np.ndarray
    sd: np.ndarray
    lfsr: np.ndarray
    called: np.ndarray
    baseline: np.ndarray | None
    effects_from: str

    @property
    def n_hits(self) -> int:
        return int(self.hit.sum())

    @property
    def day_labels(self) -> list[str]:
        return list(self.axis.labels)

    def best_day(self) -> np.ndarray:
        """Per row, the called day of smallest lfsr, else the day of smallest lfsr."""
        masked = np.where(self.called, self.lfsr, np.inf)
        return np.where(self.called.any(axis=1), masked.argmin(axis=1), self.lfsr.argmin(axis=1))

    def top_rows(self, lo: int, hi: int) -> np.ndarray:
        """Row indices of the first ``n`` ranked rows, ``lo <= n <= hi``, covering the hits when possible."""
        return np.arange(min(len(self.genes), max(lo, min(self.n_hits, hi))))

    def interval(self, level_z: float = Z90) -> tuple[np.ndarray, np.ndarray]:
        """(n, D) lower and upper ends of the credible interval (mean -/+ z SD)."""
        return self.mean - level_z * self.sd, self.mean + level_z * self.sd

    def best(self) -> pd.DataFrame:
        """One row per gene at its best day: effect, 90% interval, direction, probability change, lfsr."""
        rows = np.arange(len(self.genes))
        b = self.best_day()
        m, s, q = self.mean[rows, b], self.sd[rows, b], self.lfsr[rows, b]
        out = pd.DataFrame({
            "gene": self.genes,
            "hit": self.hit,
            "best_day": np.asarray(self.day_labels, dtype=object)[b],
            "effect": m,
            "lo90": m - Z90 * s,
            "hi90": m + Z90 * s,
            "lfsr": q,
            "direction": [direction_text(x, self.fate, self.ref) for x in m],
        })
        if self.baseline is not None:
            p0 = self.baseline[b]
            out["p_baseline"] = p0
            out["p_shifted"] = shifted_probability(p0, m)
            out["dp"] = out["p_shifted"] - p0
            out["dp_lo90"] = shifted_probability(p0, out["lo90"]) - p0
            out["dp_hi90"] = shifted_probability(p0, out["hi90"]) - p0
        return out


def baselines(out_dir: str | Path, fate: str, axis: DayAxis) -> np.ndarray | None:
    """(D,) mean probability of ``fate`` per day of ``axis`` from ``load_summary.json``; None if absent."""
    path = Path(out_dir) / names.LOAD_SUMMARY
    try:
        means = json.loads(path.read_text()).get("fate_mean_by_day") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not means:
        return None
    by_suffix = dict(zip(day_suffixes(list(means)), means.values(), strict=True))
    values = [by_suffix.get(label, {}).get(fate) for label in axis.labels]
    if any(v is None for v in values):
        return None
    return np.asarray(values, dtype=float)


def ranked_hits_name(config: FatebiasConfig, fate: str) -> str:
    """The ranked hits file of a contrast: ``hits_ranked.csv``, ``hits_ranked_<FATE>.csv`` for the others."""
    return names.HITS_FILE.format(sfx=config.file_suffix(fate))


def _called_matrix(day_lists: pd.Series, axis: DayAxis) -> np.ndarray:
    long = parse_day_lists(day_lists)
    col = pd.Series(range(len(axis)), index=list(axis.keys)).reindex(long["key"]).to_numpy()
    ok = ~np.isnan(col)
    called = np.zeros((len(day_lists), len(axis)), dtype=bool)
    called[long["row"].to_numpy()[ok], col[ok].astype(np.int64)] = True
    return called


Reader = Callable[[str], "pd.DataFrame | None"]


def _default_reader(out: Path) -> Reader:
    def read(name: str) -> pd.DataFrame | None:
        p = out / name
        if not p.is_file():
            return None
        return read_csv(p, what=name, dtype={"gene": str, "active_days": str, "active_days_any": str})

    return read


def contrast_answer(
    out_dir: str | Path, config: FatebiasConfig, fate: str | None = None, read: Reader | None = None
) -> ContrastAnswer | None:
    """The ranked answer of one contrast of a run folder (None when its table is absent).

    The primary contrast reads ``hits_ranked.csv`` (for ``discovery_source: ash`` its
    daywise effects come from the gene mash table); the others read the ranking of
    their gene mash table that the rank step writes (``hits_ranked_<FATE>.csv``).

    Raises
    ------
    FatebiasError
        A table that exists but cannot be used (missing columns, no shared genes, ...).
    """
    out = Path(out_dir)
    fate = fate or config.contrast_fate
    read = read or _default_reader(out)
    mash_name = names.MASH_FILE.format(level="gene", mode=config.mash_default_mode, sfx=config.file_suffix(fate))
    if fate == config.contrast_fate:
        hits = read(names.HITS)
        if hits is None:
            return None
        hit = bool_column(hits, "hit_anyday", names.HITS)
        if config.discovery_source in SOURCE_PREFIXES:
            daywise, prefixes = hits, SOURCE_PREFIXES[config.discovery_source]
            effects_from = f"{names.HITS} ({config.discovery_source} table, {config.mash_default_mode} mode)"
        else:  # ash: one across-day pseudo-day; the daywise picture comes from the gene mash table
            mash = read(mash_name)
            if mash is None:
                raise InputDataError(f"{mash_name} not found (needed for daywise effects)")
            ranked = rank_hits(mash, config, source="gene", what=mash_name)
            row = pd.Index(ranked["gene"].astype(str)).get_indexer(hits["gene"].astype(str))
            keep = row >= 0
            if not keep.any():
                raise InputDataError(f"{mash_name} shares no gene with {names.HITS}")
            hits, hit = hits[keep].reset_index(drop=True), hit[keep]
            daywise = ranked.iloc[row[keep]].reset_index(drop=True)
            effects_from, prefixes = f"{mash_name} (hits from the across-day ash summary)", SOURCE_PREFIXES["gene"]
    else:
        name = ranked_hits_name(config, fate)
        hits = daywise = read(name)
        if hits is None:
            return None
        hit = bool_column(hits, "hit_anyday", name)
        prefixes = SOURCE_PREFIXES["gene"]
        effects_from = f"{name} ({mash_name} ranked, {config.mash_default_mode} mode)"
    post = read_posterior(daywise, prefixes, effects_from.split(" ")[0])
    return ContrastAnswer(
        fate=fate, ref=config.ref_fate, hits=hits, genes=hits["gene"].astype(str).to_numpy(), hit=np.asarray(hit, dtype=bool),
        axis=post.axis, mean=post.postmean, sd=post.postsd, lfsr=post.lfsr,
        called=_called_matrix(daywise["active_days"], post.axis), baseline=baselines(out, fate, post.axis),
        effects_from=effects_from,
    )


def contrast_answers(out_dir: str | Path, config: FatebiasConfig) -> dict[str, ContrastAnswer]:
    """:func:`contrast_answer` of every contrast whose table exists, primary first."""
    found = {}
    for fate in config.contrast_fates:
        try:
            ans = contrast_answer(out_dir, config, fate)
        except FatebiasError:
            ans = None
        if ans is not None:
            found[fate] = ans
    return found


def describe_hits(ans: ContrastAnswer, limit: int = 10) -> list[str]:
    """Console lines of one contrast: the count, then one line per hit (direction, day, effect, lfsr)."""
    lines = [f"  {ans.fate} vs {ans.ref}: {ans.n_hits} hits of {len(ans.genes)} genes"]
    best = ans.best()
    shown = best[best["hit"]].head(limit)
    width = max([len(g) for g in shown["gene"]] + [6])
    for r in shown.to_dict("records"):
        prob = ""
        if "dp" in r:
            prob = f"; P({ans.fate}) {r['p_baseline']:.2f} -> {r['p_shifted']:.2f} ({r['dp']:+.2f})"
        lines.append(
            f"    {r['gene']:<{width}}  {r['direction']:<{8 + max(len(ans.fate), len(ans.ref))}} on {r['best_day']}: "
            f"logit {r['effect']:+.2f} [90% CI {r['lo90']:+.2f}, {r['hi90']:+.2f}]{prob}; lfsr {lfsr_text(r['lfsr'])}"
        )
    if ans.n_hits > limit:
        lines.append(f"    ... {ans.n_hits - limit} more in the report")
    return lines
