"""The permutation negative control: guide sets permuted among units coarser than the clones, the chain rerun.

Whole guide sets are permuted among units of cells (:func:`permutation_units`: clusters
of the detected guide sets at the loose ``perm_chance_links`` threshold, each containing
whole clones) within replicate x burden-quartile strata (:func:`permute_guide_sets`,
``perm_seed``); every cell of a unit receives the same set. The chain is rerun on the
permuted experiment in ``<out>/permutation/`` at the real run's hyperparameters
(likelihood weight, sigma_guide, clone covariance; the Laplace step alone with a Laplace
run), without guide-level mash unless ``perm_guide_mash``, and its hits counted: guides
are independent of fate given the strata, so hits must collapse to about zero.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from fatebias_core.config import FatebiasConfig, make_config
from fatebias_core.data.clones import clones_from_guides
from fatebias_core.data.load import guide_sets
from fatebias_core.hashing import short_hash
from fatebias_core.io import layout as names
from fatebias_core.io import read_csv, write_json
from fatebias_core.types import Experiment, center_by_group

log = logging.getLogger("fatebias.diagnostics")

PERM_HIT_FRACTION = 0.05
"""The permutation control passes with at most this fraction of the real run's hits (at least 1)."""


class ChainRunner(Protocol):
    """The engine the permutation control reruns the chain with (``run_chain``'s signature)."""

    def __call__(self, config: FatebiasConfig, until: str | None = ..., experiment: Experiment | None = ...) -> Any: ...


def burden_bins(burden: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantile bins of the burden.

    Parameters
    ----------
    burden
        (N,) guides per cell.
    n_bins
        Requested number of bins; tied quantiles merge, so a discrete burden may give fewer.

    Returns
    -------
    bins, edges
        (N,) bin index 0..B-1 of each cell and the B - 1 inner edges (a cell is in bin j
        when ``edges[j - 1] < burden <= edges[j]``).
    """
    burden = np.asarray(burden, dtype=np.float64)
    inner = np.quantile(burden, np.arange(1, n_bins) / n_bins) if n_bins > 1 else np.empty(0)
    edges = np.unique(inner[inner < burden.max()]) if burden.size else np.empty(0)
    return np.searchsorted(edges, burden, side="left").astype(np.int64), edges


PERM_BURDEN_BINS = 4
"""Burden bins of the permutation strata (units permuted within replicate x burden bin)."""


def permutation_units(experiment: Experiment, chance_links: float) -> np.ndarray:
    """(N,) the permutation's units: clusters of the detected guide sets much coarser than the clones.

    Cells are linked as the clones are (:func:`~fatebias_core.data.clones.clones_from_guides`)
    but at ``chance_links``, a far looser threshold, and every clone lies within one unit.
    A true clone that the analysis split into several clones is then still one unit here.
    """
    cells, guides = experiment.cells, experiment.guides
    sets = guide_sets(guide_ids=guides.guide_ids, mask=guides.mask, ntc_ids=guides.ntc_ids)
    coarse = clones_from_guides(sets, cells.rep, chance_links, max_union=int(guides.kmax) + 5).cluster
    clones = cells.clusters()
    n_c, n_u = int(clones.max(initial=-1)) + 1, int(coarse.max(initial=-1)) + 1
    graph = sp.coo_matrix((np.ones(clones.size), (clones, n_c + coarse)), shape=(n_c + n_u, n_c + n_u))
    return np.unique(connected_components(graph, directed=False)[1][clones], return_inverse=True)[1].astype(np.int64)


@dataclass(frozen=True)
class PermutedExperiment:
    """An experiment whose guide sets were permuted among units within strata.

    Attributes
    ----------
    experiment
        The permuted experiment (fate probabilities, days, replicates and clones unchanged).
    source
        (N,) index of the cell whose guide set each cell received.
    strata
        (N,) stratum of each cell (its unit's replicate x burden bin).
    units
        (N,) the permutation unit of each cell.
    """

    experiment: Experiment
    source: np.ndarray
    strata: np.ndarray
    units: np.ndarray

    @property
    def n_strata(self) -> int:
        return int(np.unique(self.strata).size)

    @property
    def n_units(self) -> int:
        return int(self.units.max(initial=-1)) + 1

    @property
    def n_moved(self) -> int:
        """Cells that received another cell's guide set."""
        return int((self.source != np.arange(self.source.size)).sum())

    def fingerprint(self) -> str:
        """Hash of the permuted data (guide sets, burden, fates, days, replicates, clones)."""
        c, g = self.experiment.cells, self.experiment.guides
        return short_hash(*(np.asarray(a) for a in (g.guide_ids, g.mask, c.burden, c.fate_probs, c.day, c.rep, c.clusters())))


def permute_guide_sets(experiment: Experiment, units: np.ndarray, seed: int, n_bins: int = PERM_BURDEN_BINS) -> PermutedExperiment:
    """Give every unit the guide set of another unit of its replicate and burden bin.

    Every cell of a unit receives the same set, that of the donor unit's first cell: the
    cells of a unit keep sharing a guide set, as sister cells do, and its fate biases
    stay with its cells, so only the link between guides and fate is broken (real
    effects do not follow the guides, so the permuted data are a clean null). The units
    are much coarser than the clones (:func:`permutation_units`): where the analysis
    split a true clone, its pieces still share one permuted guide set and one fate bias
    here, and the rerun analysis, with its clones, shows the dependence it misses as
    false hits; permuting among the analysis's own clones would scatter such a clone
    over several sets and pass regardless. Every permutation within a stratum is equally
    likely; burden follows the guide set, re-centred within day.
    """
    cells, guides = experiment.cells, experiment.guides
    first = np.unique(units, return_index=True)[1]  # a representative cell per unit
    bins, _ = burden_bins(cells.burden[first], n_bins)
    strata = cells.rep[first].astype(np.int64) * (int(bins.max(initial=0)) + 1) + bins
    rng = np.random.default_rng(seed)
    # Units sorted by stratum, once in index order and once in random order within each
    # stratum: position j of both lists is the same stratum, so receiver j gets donor j.
    receivers = np.argsort(strata, kind="stable")
    donors = np.lexsort((rng.random(strata.size), strata))
    donor_of = np.empty_like(receivers)
    donor_of[receivers] = donors
    source = first[donor_of[units]]
    burden = cells.burden[source]
    new_cells = replace(cells, burden=burden, burden_centered=center_by_group(burden, cells.day, cells.n_days))
    new_guides = replace(
        guides,
        guide_ids=guides.guide_ids[source],
        mask=guides.mask[source],
        ntc_ids=None if guides.ntc_ids is None else guides.ntc_ids[source],
    )
    summary = replace(experiment.summary, source=f"{experiment.summary.source} (guide sets permuted among units, seed {seed})")
    return PermutedExperiment(Experiment(new_cells, new_guides, summary, experiment.dropped_cells), source, strata[units], units)


@dataclass
class PermutationResult:
    """The permutation negative control: the permutation and the hits of the rerun chain."""

    seed: int
    n_units: int
    n_clones: int
    n_strata: int
    n_cells_moved: int
    out_dir: Path
    n_genes: int
    n_hits: int
    hit_genes: list[str]
    n_gene_days_called: int
    hits_by_mode: dict[str, int]
    n_hits_real: int | None
    runtime_s: float
    fixed: dict[str, Any] = field(default_factory=dict)  # the real fit's hyperparameters the permuted fit reused

    @property
    def allowed_hits(self) -> int:
        """Most hits that still count as collapsed: 5% of the real run's hits, at least 1."""
        real = self.n_hits_real or 0
        return max(1, int(math.floor(PERM_HIT_FRACTION * real)))

    @property
    def passed(self) -> bool:
        return self.n_hits <= self.allowed_hits

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scheme"] = "guide sets permuted among units much coarser than the clones, within replicate x burden bin"
        d["out_dir"] = str(self.out_dir)
        d["allowed_hits"] = self.allowed_hits
        d["passed"] = self.passed
        return d


def _reset_if_changed(folder: Path, fingerprint: str) -> None:
    """Forget a previous permutation run in ``folder`` made from different permuted data.

    The inner chain's manifest versions steps by settings and input files, which a new
    ``perm_seed`` does not change; its records (and a fit checkpoint) are only valid for
    the permuted data they were made from.
    """
    marker = folder / names.PERMUTATION_FINGERPRINT
    try:
        previous = json.loads(marker.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous != fingerprint:
        (folder / names.MANIFEST).unlink(missing_ok=True)
        fit_dir = folder / names.FIT_DIR
        if fit_dir.is_dir():
            shutil.rmtree(fit_dir)


def real_fit_settings(out_dir: Path, config: FatebiasConfig) -> dict[str, Any]:
    """The real run's fitted hyperparameters as settings of a refit (likelihood weight, sigma_guide, clone covariance).

    With them a Laplace refit (the permutation control's) has nothing to estimate and is
    one Newton solve; the permuted data's guides explain nothing, so their own weight
    would be at most the real one and their intervals no narrower. Empty when the run's
    fit is not saved or not a Laplace one (the refit then estimates them itself).
    """
    try:
        meta = json.loads((Path(out_dir) / names.FIT_DIR / names.FIT_META).read_text())
    except (OSError, ValueError):
        return {}
    info = meta.get("info") or {}
    if meta.get("family") not in ("laplace", "bootstrap") or config.posterior_method == "meanfield":
        return {}
    out: dict[str, Any] = {}
    if config.likelihood_weight == "auto" and isinstance(info.get("likelihood_weight"), int | float):
        out["likelihood_weight"] = float(info["likelihood_weight"])
    sg = info.get("sigma_guide")
    if config.fixed_sigma_guide is None and isinstance(sg, list) and len(sg) == len(config.contrast_fates):
        out["fixed_sigma_guide"] = [float(v) for v in sg]
    cov = info.get("clone_cov")
    if config.fixed_clone_cov is None and isinstance(cov, list):
        out["fixed_clone_cov"] = cov
    if info.get("clone_effects") is False:
        out["clone_effects"] = False
    return out


def permutation_control(
    experiment: Experiment, config: FatebiasConfig, out_dir: str | Path, run_chain: ChainRunner
) -> PermutationResult:
    """Permute guide sets among units coarser than the clones and rerun the chain into ``<out_dir>/permutation``.

    Uses ``perm_seed`` and ``perm_chance_links`` (:func:`permutation_units`,
    :func:`permute_guide_sets`); the inner run keeps the real run's clones, stops after
    ranking (no NTC check, no diagnostics, no report) and fits at the real run's
    hyperparameters (:func:`real_fit_settings`).
    Steps of an earlier permutation run on the same permuted data are reused.
    ``run_chain`` is the engine that reruns the chain
    (:func:`fatebias_core.pipeline.chain.run_chain`); the checks do not depend on it.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    perm = permute_guide_sets(experiment, permutation_units(experiment, config.perm_chance_links), config.perm_seed)
    folder = out / names.PERMUTATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = perm.fingerprint()
    _reset_if_changed(folder, fingerprint)
    write_json({"fingerprint": fingerprint, "perm_seed": config.perm_seed, "perm_chance_links": config.perm_chance_links},
               folder / names.PERMUTATION_FINGERPRINT)
    guide_level = config.perm_guide_mash or config.discovery_source == "guide_agg"
    fixed = real_fit_settings(out, config)
    inner = make_config(
        {**config.model_dump(), "out_dir": str(folder), "run_diagnostics": False, "stop_at_convergence": True,
         "ntc_check": False, "mash_guide_level": guide_level, **fixed},
        source="permutation run",
    )
    log.info(
        "permutation control: guide sets permuted among %d units (%d clones) within %d strata, %d cells moved; "
        "rerunning the chain in %s (%s)",
        perm.n_units, experiment.cells.clusters().max() + 1, perm.n_strata, perm.n_moved, folder,
        "at the real fit's hyperparameters" if fixed else "estimating its own hyperparameters",
    )
    chain = run_chain(inner, until="rank", experiment=perm.experiment)
    hits = chain.hits
    hit = hits["hit_anyday"].to_numpy(dtype=bool)
    comparison = read_csv(folder / names.MODE_COMPARISON, what="mode comparison")
    real_path = out / names.HITS
    n_real = None
    if real_path.exists():
        n_real = int(read_csv(real_path, what="hits table", usecols=["hit_anyday"])["hit_anyday"].astype(bool).sum())
    return PermutationResult(
        seed=config.perm_seed,
        n_units=perm.n_units,
        n_clones=int(experiment.cells.clusters().max(initial=-1)) + 1,
        n_strata=perm.n_strata,
        n_cells_moved=perm.n_moved,
        out_dir=folder,
        n_genes=len(hits),
        n_hits=int(hit.sum()),
        hit_genes=hits.loc[hit, "gene"].astype(str).tolist(),
        n_gene_days_called=int(pd.to_numeric(hits["n_active_days"]).sum()),
        hits_by_mode={str(m): int(n) for m, n in zip(comparison["mode"], comparison["n_hits"], strict=True)},
        n_hits_real=n_real,
        runtime_s=round(time.perf_counter() - t0, 3),
        fixed=fixed,
    )
