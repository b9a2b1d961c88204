"""The linear structure of the fate model: parameter layout, design matrix, gene blocks.

Given the variance hyperparameters the model is a multinomial-logit GLMM in the linear
latents ``psi_k = (a_k, b_k, c_k, theta_k (L x D), u_k (G))`` of every contrast k and a
random intercept per clone. This module holds what every step of the Laplace
approximation shares about that structure: where each block sits in ``psi_k``
(:class:`Layout`), the sparse design of a contrast (:func:`design_matrix`), the prior
precision of a gene's random walk over days, the within-gene centring of guide
deviations, and the index of each gene's block (its theta over contrasts and days and
its guides' u).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from fatebias_core.types import Experiment


@dataclass(frozen=True)
class Layout:
    """Positions of the blocks of one contrast's parameter vector psi_k."""

    n_days: int
    n_reps: int
    n_genes: int
    n_guides: int

    @property
    def a(self) -> slice:
        return slice(0, self.n_days)

    @property
    def b(self) -> slice:
        return slice(self.n_days, self.n_days + self.n_reps)

    @property
    def c(self) -> int:
        return self.n_days + self.n_reps

    @property
    def n_nuisance(self) -> int:
        """Day, replicate and burden terms: the first entries of psi_k."""
        return self.c + 1

    @property
    def theta(self) -> slice:
        s = self.c + 1
        return slice(s, s + self.n_genes * self.n_days)

    @property
    def u(self) -> slice:
        s = self.theta.stop
        return slice(s, s + self.n_guides)

    @property
    def size(self) -> int:
        return self.u.stop

    @classmethod
    def of(cls, experiment: Experiment) -> Layout:
        cells, guides = experiment.cells, experiment.guides
        return cls(cells.n_days, cells.n_reps, guides.n_genes, guides.n_guides)


def design_matrix(experiment: Experiment) -> sp.csr_matrix:
    """The (N x P) sparse design of one contrast, with raw (uncentred) guide columns.

    Row i has a 1 at its day intercept, its replicate, its centred burden at the slope,
    and for each of its guides a 1 at theta[gene, day_i] and a 1 at u[guide].
    """
    cells, guides = experiment.cells, experiment.guides
    lay = Layout.of(experiment)
    n, kmax = guides.guide_ids.shape
    rows = np.arange(n)
    real = guides.mask & (guides.guide_ids > 0)
    cell_of = np.broadcast_to(rows[:, None], (n, kmax))[real]
    gid = guides.guide_ids[real].astype(np.int64)  # 1..G
    gene0 = guides.gene_of_guide[gid].astype(np.int64) - 1
    day_of = cells.day[cell_of]
    r = np.concatenate([rows, rows, rows, cell_of, cell_of])
    c = np.concatenate(
        [
            lay.a.start + cells.day,
            lay.b.start + cells.rep,
            np.full(n, lay.c),
            lay.theta.start + gene0 * lay.n_days + day_of,
            lay.u.start + gid - 1,
        ]
    )
    v = np.concatenate([np.ones(n), np.ones(n), cells.burden_centered.astype(np.float64), np.ones(2 * cell_of.size)])
    return sp.csr_matrix((v, (r, c)), shape=(n, lay.size))


def random_walk_precision(tau: float, sigma_time: np.ndarray) -> np.ndarray:
    """Prior precision (D x D) of one gene's theta over days under the random walk."""
    s2 = np.concatenate([[tau], np.asarray(sigma_time)]) ** 2
    D = s2.size
    diff = np.eye(D) - np.eye(D, k=-1)  # U^-1: first value, then increments
    return diff.T @ np.diag(1.0 / s2) @ diff


def pearson_dispersion(p: np.ndarray, pi: np.ndarray, used: np.ndarray | float = 0.0) -> float:
    """Quasi-likelihood dispersion of soft labels: sum (p - pi)^2 / sum pi (1 - pi) (1 - h).

    For fate probabilities p ~ Dirichlet(c pi) this estimates 1 / (c + 1); the soft-label
    cross-entropy treated as a likelihood then needs the weight 1 / dispersion for its
    curvature to match the actual variability of p. ``used`` is the share of each cell's
    residual that the fit absorbed (its leverage, (N,) or one number): fitted
    residuals are smaller than the noise by that share, as in a GLM's Pearson estimate
    with its residual degrees of freedom.
    """
    num = float(((p - pi) ** 2).sum())
    den = float(((pi * (1.0 - pi)).sum(axis=1) * (1.0 - np.asarray(used))).sum())
    return num / max(den, 1e-300)


def guide_slots(gene_of_guide: np.ndarray, n_genes: int) -> np.ndarray:
    """Position of each guide among its gene's guides (in guide order)."""
    order = np.argsort(gene_of_guide, kind="stable")
    counts = np.bincount(gene_of_guide, minlength=n_genes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.empty(gene_of_guide.size, dtype=np.int64)
    slot[order] = np.arange(order.size) - starts[gene_of_guide[order]]
    return slot


def centre_within_gene(x: np.ndarray, gene_of_guide: np.ndarray, n_genes: int) -> np.ndarray:
    """``x`` (..., G, K) minus the mean over each gene's guides."""
    counts = np.bincount(gene_of_guide, minlength=n_genes).astype(np.float64)
    onehot = sp.csr_matrix((np.ones(gene_of_guide.size), (gene_of_guide, np.arange(gene_of_guide.size))), shape=(n_genes, gene_of_guide.size))
    lead = x.shape[:-2]
    flat = np.moveaxis(x, -2, 0).reshape(x.shape[-2], -1)  # (G, rest)
    means = (onehot @ flat) / np.maximum(counts, 1)[:, None]
    centred = flat - means[gene_of_guide]
    return np.moveaxis(centred.reshape((x.shape[-2], *lead, x.shape[-1])), 0, -2)


def gene_blocks(layout: Layout, gene_of_guide: np.ndarray, n_contrasts: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the full parameter vector of each gene's block, padded.

    A gene's block is its theta over contrasts and days, then its guides' u over
    contrasts. Returns ``index`` (L, B) and a validity ``mask`` (L, B).
    """
    L, D, P, K = layout.n_genes, layout.n_days, layout.size, n_contrasts
    counts = np.bincount(gene_of_guide, minlength=L)
    n_max = int(counts.max()) if counts.size else 0
    guides_by_gene = np.full((L, n_max), -1)
    guides_by_gene[gene_of_guide, guide_slots(gene_of_guide, L)] = np.arange(gene_of_guide.size)
    k_off = (np.arange(K) * P)[:, None]
    theta_idx = (k_off[None] + layout.theta.start + np.arange(L)[:, None, None] * D + np.arange(D)[None, None, :])
    theta_idx = theta_idx.reshape(L, K * D)
    u_idx = k_off[None] + layout.u.start + np.where(guides_by_gene < 0, 0, guides_by_gene)[:, None, :]
    u_idx = u_idx.reshape(L, K * n_max)
    u_mask = np.broadcast_to((guides_by_gene >= 0)[:, None, :], (L, K, n_max)).reshape(L, K * n_max)
    index = np.concatenate([theta_idx, u_idx], axis=1)
    mask = np.concatenate([np.ones_like(theta_idx, dtype=bool), u_mask], axis=1)
    return index, mask


def thread_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` on a few threads, in order.

    For independent pieces of work that spend their time in numpy, scipy.sparse or
    LAPACK code, which release the GIL; the results are the same as in one thread.
    """
    items = list(items)
    workers = min(len(items), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def lower_to_symmetric(a: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Copy the lower triangle of the square ``a`` onto its upper triangle in place, in column chunks."""
    n = a.shape[0]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        diag = a[start:stop, start:stop]
        upper = np.triu_indices(stop - start, 1)
        diag[upper] = diag.T[upper]
        a[start:stop, stop:] = a[stop:, start:stop].T
    return a
