"""Laplace approximation of the effect posterior at the conditional mode.

Given the variance hyperparameters (tau, sigma_time, sigma_guide) from the SVI fit,
the model is a multinomial-logit GLM in the linear latents

    psi_k = (a_k, b_k, c_k, theta_k (L x D), u_k (G))   for every contrast k,

with Gaussian priors: the random-walk prior on each gene's theta over days (precision
``U^-T diag(1/s^2) U^-1`` with U the cumulative-sum matrix) and N(0, 1) on u, which
enters the linear predictor through the within-gene centred ``delta = sigma_guide (u -
mean_gene(u))``. The negative log posterior is convex in psi, so Newton's method finds
its mode in a few steps, and the exact Hessian there gives a Gaussian posterior that
keeps every correlation the mean-field guide drops: between days of a gene (the random
walk), between contrasts (the softmax), between the guides that share cells (high MOI),
and with the day, replicate and burden terms.

Every cell contributes ``w (diag(pi) - pi pi^T)`` (over the contrasts) to the Hessian
through a sparse design row with ~3 + 2 k non-zeros, so ``X^T W X`` is a sparse product
and the (K P) x (K P) system is dense but small (P = D + R + 1 + L D + G).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.special import log_softmax, softmax
from scipy.stats import norm
from scipy.stats import t as student_t

from fatebias_core.errors import FitError
from fatebias_core.types import Experiment

log = logging.getLogger("fatebias.laplace")

# Dense (K P)^2 Hessians above this many rows use too much memory for a workstation.
MAX_LAPLACE_DIM = 16000


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


def check_laplace_size(experiment: Experiment, n_contrasts: int) -> None:
    """Raise a one-line error when the dense Laplace system would be too large."""
    cells, guides = experiment.cells, experiment.guides
    size = n_contrasts * Layout(cells.n_days, cells.n_reps, guides.n_genes, guides.n_guides).size
    if size > MAX_LAPLACE_DIM:
        raise FitError(
            f"posterior_method laplace/bootstrap needs a dense {size} x {size} Hessian for {guides.n_guides} guides, "
            f"{guides.n_genes} genes and {n_contrasts} contrasts (limit {MAX_LAPLACE_DIM}); "
            "set posterior_method: meanfield for a screen this large"
        )


def design_matrix(experiment: Experiment) -> sp.csr_matrix:
    """The (N x P) sparse design of one contrast, with raw (uncentred) guide columns.

    Row i has a 1 at its day intercept, its replicate, its centred burden at the slope,
    and for each of its guides a 1 at theta[gene, day_i] and a 1 at u[guide].
    """
    cells, guides = experiment.cells, experiment.guides
    lay = Layout(cells.n_days, cells.n_reps, guides.n_genes, guides.n_guides)
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


def pearson_dispersion(p: np.ndarray, pi: np.ndarray) -> float:
    """Quasi-likelihood dispersion of soft labels: sum (p - pi)^2 / sum pi (1 - pi).

    For fate probabilities p ~ Dirichlet(c pi) this estimates 1 / (c + 1); the soft-label
    cross-entropy treated as a likelihood then needs the weight 1 / dispersion for its
    curvature to match the actual variability of p.
    """
    num = float(((p - pi) ** 2).sum())
    den = float((pi * (1.0 - pi)).sum())
    return num / max(den, 1e-300)


@dataclass
class LaplaceProblem:
    """The conditional posterior of the linear latents given the variance hyperparameters."""

    X: sp.csr_matrix
    layout: Layout
    p: np.ndarray  # (N, F)
    ref_index: int
    contrast_index: np.ndarray  # (K,)
    gene_of_guide: np.ndarray  # (G,) 0-based
    guides_per_gene: np.ndarray  # (L,)
    sigma_guide: np.ndarray  # (K,)
    prior_diag: np.ndarray  # (K, P) diagonal prior precision (theta entries 0)
    rw_precision: np.ndarray  # (K, D, D)
    weight: float
    cluster: np.ndarray | None = None  # (N,) 0..C-1, the independent units (clones)

    @property
    def n_contrasts(self) -> int:
        return int(self.contrast_index.size)

    # ----------------------------------------------------------------- centring of u
    def centre_rows(self, m: np.ndarray, k: int) -> np.ndarray:
        """Apply T_k^T from the left on the u rows: sigma_k (I - M), M the within-gene mean."""
        out = m.copy()
        self._centre_rows_inplace(out, k)
        return out

    def _centre_rows_inplace(self, m: np.ndarray, k: int) -> None:
        """:meth:`centre_rows` on ``m`` itself, a (P,) or (P, n) array or view."""
        u = self.layout.u
        if u.start == u.stop:  # the nuisance-only problem has no guide terms
            return
        rows = m[u]  # a view, so the updates below land in m
        per_gene = self.guides_per_gene if rows.ndim == 1 else self.guides_per_gene[:, None]
        rows -= ((self._onehot @ rows) / per_gene)[self.gene_of_guide]
        rows *= self.sigma_guide[k]

    @property
    def _onehot(self) -> sp.csr_matrix:
        if not hasattr(self, "_onehot_cache"):
            G = self.gene_of_guide.size
            self._onehot_cache = sp.csr_matrix(
                (np.ones(G), (self.gene_of_guide, np.arange(G))), shape=(self.layout.n_genes, G)
            )
        return self._onehot_cache

    def centre_cols(self, m: np.ndarray, k: int) -> np.ndarray:
        return self.centre_rows(m.T, k).T

    def effective(self, psi: np.ndarray) -> np.ndarray:
        """(K, P) parameters with u replaced by delta = sigma (u - gene mean)."""
        return np.stack([self.centre_rows(psi[k], k) for k in range(self.n_contrasts)])

    # ----------------------------------------------------------------- objective
    def logits(self, psi: np.ndarray) -> np.ndarray:
        eff = self.effective(psi)
        eta = np.asarray(self.X @ eff.T)  # (N, K)
        full = np.zeros((eta.shape[0], self.p.shape[1]))
        full[:, self.contrast_index] = eta
        return full

    def prior_term(self, psi: np.ndarray) -> float:
        lay = self.layout
        val = 0.5 * float((self.prior_diag * psi**2).sum())
        th = psi[:, lay.theta].reshape(self.n_contrasts, lay.n_genes, lay.n_days)
        val += 0.5 * float(np.einsum("kld,kde,kle->", th, self.rw_precision, th))
        return val

    def objective(self, psi: np.ndarray) -> float:
        """Negative log conditional posterior (up to a constant)."""
        logpi = log_softmax(self.logits(psi), axis=1)
        return -self.weight * float((self.p * logpi).sum()) + self.prior_term(psi)

    def prior_grad(self, psi: np.ndarray) -> np.ndarray:
        lay = self.layout
        g = self.prior_diag * psi
        th = psi[:, lay.theta].reshape(self.n_contrasts, lay.n_genes, lay.n_days)
        g[:, lay.theta] += np.einsum("kde,kle->kld", self.rw_precision, th).reshape(self.n_contrasts, -1)
        return g

    def gradient_and_hessian(self, psi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gradient (K P,), Hessian (K P, K P) and fitted probabilities (N, F) at psi."""
        K, P = self.n_contrasts, self.layout.size
        pi = softmax(self.logits(psi), axis=1)
        pk, qk = pi[:, self.contrast_index], self.p[:, self.contrast_index]
        grad = np.empty((K, P))
        for k in range(K):
            g = np.asarray(self.X.T @ (self.weight * (pk[:, k] - qk[:, k])))
            grad[k] = self.centre_rows(g, k)
        grad += self.prior_grad(psi)
        hess = self._symmetric_blocks(lambda k, j: self.weighted_gram(self.weight * pk[:, k] * ((k == j) - pk[:, j])))
        self.add_prior_hessian(hess)
        return grad.ravel(), hess, pi

    def weighted_gram(self, w: np.ndarray) -> np.ndarray:
        """``X^T diag(w) X`` (P, P) dense, from the design's structure.

        A cell's theta entries are its guides' genes on its day, so per day ``d`` the
        guide-by-guide product ``M_d = U_d^T W_d U_d`` (U_d the guide incidence of the
        day's cells) gives the u-u block (summed over days) and, by summing its rows and
        columns over each gene's guides, the theta-u and theta-theta blocks of that day:
        one sparse product of ~k^2 terms per cell instead of (3 + 2k)^2.
        """
        lay, parts = self.layout, self._gram_parts()
        n0, P = lay.theta.start, lay.size
        out = np.zeros((P, P))
        xn = parts["nuisance"]
        out[:n0, :n0] = (xn.T @ xn.multiply(w[:, None])).toarray()
        u = lay.u

        def day_products(part: tuple) -> tuple[np.ndarray, np.ndarray]:
            rows, ud, udt, xnt = part
            scaled = ud.multiply(w[rows][:, None]).tocsr()
            return (udt @ scaled).toarray(), (xnt @ scaled).toarray()  # (G, G), (n0, G)

        # The days' sparse products are independent (and release the GIL): one thread each.
        for d, (m, nu) in enumerate(thread_map(day_products, parts["days"])):
            tu = self._onehot @ m  # (L, G)
            tn = (self._onehot @ nu.T).T  # (n0, L)
            tidx = lay.theta.start + np.arange(lay.n_genes) * lay.n_days + d
            out[u, u] += m
            out[:n0, u] += nu
            out[tidx, u] = tu
            out[u, tidx] = tu.T
            out[np.ix_(tidx, tidx)] = (self._onehot @ tu.T).T
            out[:n0, tidx] = tn
            out[tidx, :n0] = tn.T
        out[u, :n0] = out[:n0, u].T
        return out

    def _gram_parts(self) -> dict:
        """Cached per-day pieces of the design for :meth:`weighted_gram`."""
        if not hasattr(self, "_gram_cache"):
            lay = self.layout
            X = self.X.tocsc()
            xn = X[:, : lay.theta.start].tocsr()
            xu = X[:, lay.u].tocsr()
            xa = X[:, lay.a].tocsr()  # one entry per row: the cell's day intercept
            day = xa.indices[xa.indptr[:-1]]
            days = []
            for d in range(lay.n_days):
                rows = np.flatnonzero(day == d)
                ud = xu[rows]
                days.append((rows, ud, ud.T.tocsr(), xn[rows].T.tocsr()))
            self._gram_cache = {"nuisance": xn, "days": days}
        return self._gram_cache

    def _symmetric_blocks(self, block_of) -> np.ndarray:
        """A (K P, K P) matrix from its raw (k, j) blocks, centred on the u rows and columns."""
        K, P = self.n_contrasts, self.layout.size
        out = np.empty((K * P, K * P))
        for k in range(K):
            for j in range(k, K):
                raw = block_of(k, j)
                block = out[k * P : (k + 1) * P, j * P : (j + 1) * P]
                block[...] = raw.toarray() if sp.issparse(raw) else raw
                self.centre_block_inplace(block, k, j)
                if j != k:
                    out[j * P : (j + 1) * P, k * P : (k + 1) * P] = block.T
        return out

    def centre_block_inplace(self, m: np.ndarray, k: int, j: int) -> None:
        """``T_k^T m T_j`` in place for a (P, P) block: :meth:`centre_rows` then :meth:`centre_cols` without copies."""
        self._centre_rows_inplace(m, k)
        self._centre_rows_inplace(m.T, j)

    def prior_hessian(self) -> np.ndarray:
        """The prior precision Q (K P, K P): diagonal terms and each gene's random-walk block."""
        K, P = self.n_contrasts, self.layout.size
        return self.add_prior_hessian(np.zeros((K * P, K * P)))

    def add_prior_hessian(self, m: np.ndarray) -> np.ndarray:
        """Add the prior precision Q to the (K P, K P) matrix ``m`` in place, and return it."""
        K, P = self.n_contrasts, self.layout.size
        m.flat[:: K * P + 1] += self.prior_diag.ravel()
        lay = self.layout
        D = lay.n_days
        for k in range(K):
            base = k * P + lay.theta.start + np.arange(lay.n_genes)[:, None] * D
            rows = (base[:, :, None] + np.arange(D)[None, None, :]).reshape(lay.n_genes, D)
            m[rows[:, :, None], rows[:, None, :]] += self.rw_precision[k]
        return m

    def residuals(self, pi: np.ndarray) -> np.ndarray:
        """(N, K) weighted residuals ``w (p_ik - pi_ik)``: a cell's score is ``x_ik`` times them."""
        return self.weight * (self.p[:, self.contrast_index] - pi[:, self.contrast_index])

    def cell_weights(self, pi: np.ndarray) -> np.ndarray:
        """(N, K, K) each cell's likelihood curvature ``w (diag(pi) - pi pi^T)`` over the contrasts."""
        pk = pi[:, self.contrast_index]
        return self.weight * (pk[:, :, None] * np.eye(pk.shape[1])[None] - pk[:, :, None] * pk[:, None, :])

    def centred_design(self, k: int) -> sp.csr_matrix:
        """(N, P) design of contrast k with its guide columns centred like the parameters (X T_k)."""
        lay = self.layout
        X = self.X.tocsc()
        xu = X[:, lay.u]
        counts = self.guides_per_gene[self.gene_of_guide]
        mean_op = (self._onehot.T @ self._onehot).multiply(1.0 / counts[None, :]).tocsc()  # (G, G) within-gene mean
        centred = (xu - xu @ mean_op) * self.sigma_guide[k]
        return sp.hstack([X[:, : lay.u.start], centred], format="csr")

    @property
    def clusters(self) -> np.ndarray:
        """(N,) cluster ids 0..C-1 (every cell its own cluster when ``cluster`` is None)."""
        return np.arange(self.p.shape[0]) if self.cluster is None else np.asarray(self.cluster)

    def cluster_scores(self, resid: np.ndarray) -> list[sp.csr_matrix]:
        """Per contrast, the (C, P) raw scores ``sum over a clone's cells of resid_ik x_i``.

        ``resid`` is (N, K), :meth:`residuals` or their leverage-adjusted version. The
        scores are uncentred (raw design columns); centre them with :meth:`centre_rows`
        on the side they are multiplied with.
        """
        cluster = self.clusters
        n, n_clusters = cluster.size, int(cluster.max()) + 1
        return [
            (sp.csr_matrix((resid[:, k], (cluster, np.arange(n))), shape=(n_clusters, n)) @ self.X).tocsr()
            for k in range(self.n_contrasts)
        ]

    def score_outer(self, scores: list[sp.csr_matrix]) -> np.ndarray:
        """J (K P, K P) = sum over clusters of the outer product of their centred scores.

        With ``scores`` from :meth:`cluster_scores`, a clone's cells are summed before
        the outer product, so J measures how the data actually vary when a clone's cells
        move together.
        """
        cols = [s.tocsc() for s in scores]
        rows = [s.T.tocsr() for s in scores]
        return self._symmetric_blocks(lambda k, j: rows[k] @ cols[j])


@dataclass
class LaplaceResult:
    """Mode, posterior covariance and diagnostics of the Laplace approximation."""

    psi: np.ndarray  # (K, P)
    cov: np.ndarray | None  # (K P, K P); None when only the mode was asked for
    n_iter: int
    converged: bool
    objective: float
    pi: np.ndarray  # (N, F) at the mode


def newton_mode(
    problem: LaplaceProblem, psi0: np.ndarray, max_iter: int = 30, tol: float = 1e-8, covariance: bool = True
) -> LaplaceResult:
    """Newton's method with backtracking to the conditional mode, then the covariance.

    Converged when the Newton decrement ``g^T H^-1 g / 2`` falls below ``tol`` times the
    number of cells. ``covariance=False`` stops at the mode (``cov`` is None), which
    saves the Hessian at the mode and its inverse.
    """
    K, P = psi0.shape
    if K * P > MAX_LAPLACE_DIM:
        raise FitError(
            f"posterior_method laplace needs a dense {K * P} x {K * P} Hessian (limit {MAX_LAPLACE_DIM}); "
            "use posterior_method: meanfield for this many genes and guides"
        )
    psi = psi0.copy()
    f = problem.objective(psi)
    n = problem.p.shape[0]
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        grad, hess, _ = problem.gradient_and_hessian(psi)
        try:
            chol = sla.cho_factor(hess, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            raise FitError("the Laplace Hessian is not positive definite; use posterior_method: meanfield") from None
        step = -sla.cho_solve(chol, grad, check_finite=False).reshape(K, P)
        decrement = -0.5 * float(grad @ step.ravel())
        t = 1.0
        while True:
            cand = psi + t * step
            f_new = problem.objective(cand)
            if f_new <= f - 0.25 * t * 2 * decrement or t < 1e-6:
                break
            t *= 0.5
        psi, f = cand, f_new
        log.debug("newton %d: objective %.6f, decrement %.3g, step %.3g", it, f, decrement, t)
        if decrement < tol * n:
            converged = True
            break
    if not covariance:
        return LaplaceResult(psi=psi, cov=None, n_iter=it, converged=converged, objective=f,
                             pi=softmax(problem.logits(psi), axis=1))
    grad, hess, pi = problem.gradient_and_hessian(psi)
    chol, info = sla.lapack.dpotrf(hess, lower=1, clean=1, overwrite_a=1)
    if info != 0:
        raise FitError("the Laplace Hessian at the mode is not positive definite; use posterior_method: meanfield")
    inv, info = sla.lapack.dpotri(chol, lower=1, overwrite_c=1)
    cov = lower_to_symmetric(inv)
    return LaplaceResult(psi=psi, cov=cov, n_iter=it, converged=converged, objective=f, pi=pi)


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


def _padded_clusters(cluster: np.ndarray, max_cells: int, cell_nnz: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Chunks of whole clusters of similar size, each as a padded (n_clusters, m) cell index.

    With ``cell_nnz`` (each cell's design non-zeros), clusters of one size are further
    ordered by their non-zeros, so that a chunk's clusters touch similar numbers of
    columns and little is padded.

    Returns a list of ``(cells, valid)``: ``cells`` (n_cl, m) indices into the cells
    (padding repeats a valid index), ``valid`` the mask of real entries.
    """
    sizes = np.bincount(cluster)
    if cell_nnz is None:
        by_size = np.argsort(sizes, kind="stable")
    else:
        by_size = np.lexsort((np.bincount(cluster, weights=cell_nnz, minlength=sizes.size), sizes))
    order = np.argsort(cluster, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    chunks = []
    i = 0
    while i < by_size.size:
        m = int(sizes[by_size[i]])
        n_cl = max(1, max_cells // max(m, 1))
        take = by_size[i : i + n_cl]
        m = int(sizes[take].max())
        slot = np.arange(m)[None, :]
        valid = slot < sizes[take][:, None]
        pos = starts[take][:, None] + np.where(valid, slot, 0)
        chunks.append((order[pos], valid))
        i += take.size
    return chunks


def leverage_adjusted_residuals(problem: LaplaceProblem, res: LaplaceResult, max_cells: int = 512) -> np.ndarray:
    """Residuals corrected for each clone's leverage on the fit (the CR2 correction).

    A clone that carries a guide seen in few other clones pulls the fit towards itself,
    so its residuals understate how much it varies, and a sandwich built from them is
    too small (badly so when a guide is in only a handful of clones). Bell and
    McCaffrey's CR2 correction undoes this: with ``M_c`` the clone's block of
    ``X H^-1 X^T``, ``W_c`` its cells' likelihood curvature and
    ``A_c = W_c^1/2 M_c W_c^1/2`` (its leverage, eigenvalues in [0, 1)), the adjusted
    residuals are ``W_c^1/2 (I - A_c)^-1/2 W_c^-1/2 r_c``. For independent cells with
    the right likelihood weight this makes the sandwich unbiased, where the plain one
    is short by the average leverage (the number of parameters over the cells).

    ``M_c`` is read off the covariance of the effective parameters (u replaced by the
    centred delta, :func:`effective_covariance`) at the few columns the clone's raw
    design rows touch (:func:`clone_leverage_blocks`), so the cost grows with the cells
    times their non-zeros squared, not with the cells times the parameters. Clones are
    processed in chunks of similar size (at most ``max_cells`` cells of padded
    (clones x cells) blocks), so memory stays bounded.
    """
    K = problem.n_contrasts
    resid = problem.residuals(res.pi)
    wcell = problem.cell_weights(res.pi)  # (N, K, K)
    lam, vec = np.linalg.eigh(wcell)
    lam = np.maximum(lam, 1e-12 * lam.max(axis=1, keepdims=True))
    w_half = np.einsum("nij,nj,nkj->nik", vec, np.sqrt(lam), vec)
    w_mhalf = np.einsum("nij,nj,nkj->nik", vec, 1.0 / np.sqrt(lam), vec)
    ceff = effective_covariance(problem, res.cov)
    X = problem.X.tocsr()
    out = np.empty_like(resid)

    def adjust(chunk: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        cells, valid = chunk
        n_cl, m = cells.shape
        flat = cells.ravel()
        blocks = clone_leverage_blocks(X, ceff, cells, valid, K)  # (n_cl, m K, m K), (cell, contrast) order
        wh = _block_diag(w_half[flat].reshape(n_cl, m, K, K))
        wmh = _block_diag(w_mhalf[flat].reshape(n_cl, m, K, K))
        a = wh @ blocks @ wh
        lev, q = np.linalg.eigh(0.5 * (a + a.transpose(0, 2, 1)))
        lev = np.clip(lev, 0.0, 1.0 - 1e-6)
        f = np.einsum("cij,cj,ckj->cik", q, 1.0 / np.sqrt(1.0 - lev), q)
        r = np.where(np.repeat(valid, K, axis=1), resid[flat].reshape(n_cl, m * K), 0.0)
        return np.einsum("cij,cj->ci", wh @ f @ wmh, r).reshape(n_cl, m, K)[valid]

    chunks = _padded_clusters(problem.clusters, max_cells, np.diff(X.indptr))
    for (cells, valid), adj in zip(chunks, thread_map(adjust, chunks), strict=True):
        out[cells[valid]] = adj
    return out


def effective_covariance(problem: LaplaceProblem, cov: np.ndarray) -> np.ndarray:
    """``T cov T^T``: the covariance of the effective parameters, each contrast's u replaced by delta.

    ``T`` is block-diagonal over the contrasts with ``T_k`` the within-gene centring of
    :meth:`LaplaceProblem.centre_rows`, so that ``x_raw T_k`` is a cell's centred design
    row and ``x_raw,k (T cov T^T)_kj x_raw,j^T = (x T)_k cov_kj (x T)_j^T``.
    """
    K, P = problem.n_contrasts, problem.layout.size
    out = cov.copy()
    for k in range(K):
        for j in range(K):
            problem.centre_block_inplace(out[k * P : (k + 1) * P, j * P : (j + 1) * P], k, j)
    return out


def clone_leverage_blocks(X: sp.csr_matrix, ceff: np.ndarray, cells: np.ndarray, valid: np.ndarray, K: int) -> np.ndarray:
    """Within-clone blocks of ``X H^-1 X^T`` over (cell, contrast), from the raw design rows.

    Parameters
    ----------
    X
        (N, P) raw design (one contrast's columns).
    ceff
        (K P, K P) covariance of the effective parameters (:func:`effective_covariance`).
    cells, valid
        (n_cl, m) padded cell indices of a chunk of clones and the mask of real entries.
    K
        Number of contrasts.

    Returns
    -------
    ndarray
        (n_cl, m K, m K); rows and columns of padding cells are zero.
    """
    n_cl, m = cells.shape
    P = X.shape[1]
    sub = X[cells.ravel()]
    row = np.repeat(np.arange(n_cl * m), np.diff(sub.indptr))
    keep = valid.ravel()[row]
    row, col, val = row[keep], sub.indices[keep].astype(np.int64), sub.data[keep]
    clone = row // m
    # The distinct columns each clone's rows touch, numbered from 0 within the clone.
    keys, inv = np.unique(clone * P + col, return_inverse=True)
    counts = np.bincount(keys // P, minlength=n_cl)
    pos = np.arange(keys.size) - np.repeat(np.cumsum(counts) - counts, counts)
    s = max(int(counts.max()), 1)
    cols = np.zeros((n_cl, s), dtype=np.int64)
    cols[keys // P, pos] = keys % P
    A = np.zeros((n_cl, m, s))
    np.add.at(A, (clone, row % m, pos[inv]), val)
    out = np.empty((n_cl, m, K, m, K))
    for k in range(K):
        for j in range(k, K):
            sub_cov = ceff[k * P + cols[:, :, None], j * P + cols[:, None, :]]  # (n_cl, s, s)
            blk = A @ sub_cov @ A.transpose(0, 2, 1)  # (n_cl, m, m)
            out[:, :, k, :, j] = blk
            if j != k:
                out[:, :, j, :, k] = blk.transpose(0, 2, 1)
    return out.reshape(n_cl, m * K, m * K)


def _block_diag(blocks: np.ndarray) -> np.ndarray:
    """(n, m, K, K) per-cell blocks -> (n, m K, m K) block-diagonal matrices."""
    n, m, K, _ = blocks.shape
    out = np.zeros((n, m, K, m, K))
    idx = np.arange(m)
    out[:, idx, :, idx, :] = blocks.transpose(1, 0, 2, 3)
    return out.reshape(n, m * K, m * K)


def _blocks_of_product(left: np.ndarray, right: np.ndarray, index: np.ndarray, genes: int = 32) -> np.ndarray:
    """The symmetrised diagonal blocks ``(left @ right)[index_l, index_l]`` without the full product.

    ``index`` (L, B) holds each block's rows and columns; genes are taken ``genes`` at a time.
    """
    L, B = index.shape
    out = np.empty((L, B, B))
    for start in range(0, L, genes):
        idx = index[start : start + genes]
        blk = np.matmul(left[idx], right[:, idx].transpose(1, 0, 2))  # (g, B, P) @ (g, P, B)
        out[start : start + genes] = 0.5 * (blk + blk.transpose(0, 2, 1))
    return out


def robust_covariance(
    problem: LaplaceProblem, res: LaplaceResult, chunk: int = 64, index: np.ndarray | None = None,
    adjusted: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-robust posterior covariance ``H^-1 (Q + J) H^-1`` at the mode, and its degrees of freedom.

    H is the posterior Hessian (likelihood curvature plus the prior precision Q) and J
    the clones' score outer products (:meth:`LaplaceProblem.score_outer`) from
    leverage-adjusted residuals (:func:`leverage_adjusted_residuals`, CR2). Where the
    likelihood describes the data (independent cells, the right weight) J matches the
    likelihood curvature and this is the model-based ``H^-1``; where clones, smoothing
    or extra noise make the cells of a clone move together, J is larger and so are the
    intervals. The prior term keeps weakly informed parameters at their prior spread
    instead of shrinking their variance to zero, as a bare sandwich ``H^-1 J H^-1``
    would.

    A variance summed from few clones is itself uncertain. For every gene/day effect
    the Satterthwaite degrees of freedom of its sandwich variance,
    ``(sum_c a_c)^2 / sum_c a_c^2`` with ``a_c`` clone c's contribution (the "effective
    number of clusters"), say how much: a handful of clones gives few degrees of
    freedom, independent cells thousands.

    With ``index`` (the (L, B) gene blocks of :func:`gene_blocks`) only those blocks of
    the covariance are formed (one dense product with ``H^-1`` instead of two); that is
    all the posterior keeps. ``adjusted``: the leverage-adjusted residuals when already
    computed.

    Returns
    -------
    cov, df
        (K P, K P) covariance, or (L, B, B) blocks with ``index``, and (K, L, D) degrees
        of freedom of theta.
    """
    if adjusted is None:
        adjusted = leverage_adjusted_residuals(problem, res)
    scores = problem.cluster_scores(adjusted)  # (C, P) per contrast
    left = res.cov @ problem.add_prior_hessian(problem.score_outer(scores))
    if index is None:
        cov = left @ res.cov
        cov = 0.5 * (cov + cov.T)
    else:
        cov = _blocks_of_product(left, res.cov, index)
    lay, K, P = problem.layout, problem.n_contrasts, problem.layout.size
    theta_idx = (np.arange(K)[:, None] * P + np.arange(lay.theta.start, lay.theta.stop)[None, :]).ravel()

    def chunk_df(start: int) -> np.ndarray:
        cols = theta_idx[start : start + chunk]
        contrib = sum(
            scores[k] @ problem.centre_rows(res.cov[k * P : (k + 1) * P][:, cols], k) for k in range(K)
        )  # (C, chunk): each clone's pull on these effects
        a = np.asarray(contrib) ** 2
        return a.sum(axis=0) ** 2 / np.maximum((a**2).sum(axis=0), 1e-300)

    df = np.concatenate(thread_map(chunk_df, range(0, theta_idx.size, chunk)))
    return cov, df.reshape(K, lay.n_genes, lay.n_days)


def t_scale(df: np.ndarray, level: float = 0.9) -> np.ndarray:
    """Factor that widens a normal interval to the Student-t interval with ``df`` degrees of freedom."""
    q = 0.5 + level / 2
    return student_t.ppf(q, np.maximum(df, 2.0)) / norm.ppf(q)


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


# --------------------------------------------------------------------------- the fitted posterior
class LaplacePosterior:
    """A Gaussian posterior of the effects: the conditional mode and each gene's joint covariance.

    Stores, per gene, the covariance of its theta (contrasts x days) jointly with its
    guides' u (contrasts x guides): enough to draw every gene/day and guide/day effect,
    and any within-gene combination (across-day sums, beta = theta + delta), exactly
    under the Gaussian approximation. Cross-gene covariances are not kept: nothing
    downstream uses them.
    """

    family = "laplace"

    def __init__(self, params: dict[str, np.ndarray]):
        self.params = params

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_result(
        cls,
        res: LaplaceResult,
        problem: LaplaceProblem,
        hyper: dict[str, np.ndarray],
        df: np.ndarray | None = None,
        blocks: np.ndarray | None = None,
        adjusted: np.ndarray | None = None,
    ) -> LaplacePosterior:
        """The per-gene Gaussian blocks of ``res``.

        With ``df`` (K, L, D), the degrees of freedom of a cluster-robust covariance,
        each gene's block is scaled so that its normal intervals are as wide as the
        Student-t intervals of its least-informed effect (:func:`t_scale`): a variance
        estimated from a few clones gives honest, wider intervals, one from many clones
        is unchanged. Downstream steps (mash, calls) read a normal SD, so the scaling
        is where the t distribution enters. ``blocks`` (L, B, B), when given, are the
        per-gene blocks of the covariance to use instead of those of ``res.cov``.
        ``adjusted`` (N, K), the leverage-adjusted residuals of a cluster-robust
        covariance, is kept for the NTC check, which needs them at this mode and would
        otherwise invert the Hessian again to recompute them.
        """
        lay, K = problem.layout, problem.n_contrasts
        index, mask = gene_blocks(lay, problem.gene_of_guide, K)
        blocks = res.cov[index[:, :, None], index[:, None, :]] if blocks is None else blocks.copy()
        if df is not None:
            blocks = blocks * (t_scale(df).max(axis=(0, 2)) ** 2)[:, None, None]
        # Padding entries get unit variance and no correlation so every block is PD.
        pad = ~mask
        blocks[pad[:, :, None] | pad[:, None, :]] = 0.0
        eye = np.broadcast_to(np.eye(index.shape[1], dtype=bool), blocks.shape)
        blocks[eye & pad[:, :, None]] = 1.0
        psi = res.psi
        params = {
            "a": psi[:, lay.a],
            "b": psi[:, lay.b],
            "c": psi[:, lay.c],
            "theta": psi[:, lay.theta].reshape(K, lay.n_genes, lay.n_days).transpose(1, 0, 2),
            "u": psi[:, lay.u].T,
            "block_cov": blocks,
            "block_mask": mask,
            "sigma_guide": problem.sigma_guide,
            "weight": np.asarray(problem.weight),
            "newton_iterations": np.asarray(res.n_iter),
            "converged": np.asarray(res.converged),
            "objective": np.asarray(res.objective),
            **{f"hyper_{k}": v for k, v in hyper.items()},
        }
        if df is not None:
            params["theta_df"] = df.transpose(1, 0, 2)  # (L, K, D)
        if adjusted is not None:
            params["adjusted_residuals"] = adjusted
        return cls(params)

    # ----------------------------------------------------------------- effects
    def _delta(self, u: np.ndarray, gene_of_guide: np.ndarray, n_genes: int) -> np.ndarray:
        """delta = sigma_guide (u - gene mean of u) for u of shape (..., G, K)."""
        return self.params["sigma_guide"] * centre_within_gene(u, gene_of_guide, n_genes)

    def point(self, gene_of_guide: np.ndarray, n_genes: int) -> dict[str, np.ndarray]:
        """Mode values of a, b, c, theta (L, K, D) and delta (G, K)."""
        p = self.params
        return {
            "a": p["a"], "b": p["b"], "c": p["c"], "theta": p["theta"],
            "delta": self._delta(p["u"], gene_of_guide, n_genes),
        }

    def sample_effects(self, n: int, rng: np.random.Generator, gene_of_guide: np.ndarray, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws of theta (n, L, K, D) and delta (n, G, K) from the per-gene Gaussians."""
        p = self.params
        theta0, u0 = p["theta"], p["u"]
        L, K, D = theta0.shape
        chol = np.linalg.cholesky(p["block_cov"])  # (L, B, B)
        dev = np.einsum("lij,slj->sli", chol, rng.standard_normal((n, L, chol.shape[1])))
        theta = theta0[None] + dev[:, :, : K * D].reshape(n, L, K, D)
        u_dev = dev[:, :, K * D :].reshape(n, L, K, -1)  # (n, L, K, slots)
        slot = guide_slots(gene_of_guide, n_genes)
        u = u0[None] + u_dev[:, gene_of_guide, :, slot].transpose(1, 0, 2)
        return theta, self._delta(u, gene_of_guide, n_genes)


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


def one_step_bootstrap(problem: LaplaceProblem, res: LaplaceResult, n_boot: int, seed: int, chunk: int = 50) -> np.ndarray:
    """One-step Newton bootstrap of the conditional mode: (B, K, P) replicate parameters.

    Each replicate reweights the cells (or, with ``problem.cluster``, whole clones) by
    Poisson(1) counts and takes one Newton step from
    the full-data mode with the full-data Hessian: ``psi_b = psi - H^-1 (g_b(psi) - g(psi))``
    (g(psi) = 0 at the mode). Its covariance tends to the sandwich ``H^-1 J H^-1`` with J
    the sum of the cells' score outer products, so it stays right when the soft labels'
    spread is not the multinomial one the likelihood assumes.
    """
    K, P = res.psi.shape
    resid = -problem.residuals(res.pi)  # (N, K): w (pi - p)
    rng = np.random.default_rng(seed)
    XT = problem.X.T.tocsr()
    out = np.empty((n_boot, K, P))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        if problem.cluster is None:
            m = rng.poisson(1.0, size=(resid.shape[0], b)) - 1.0  # (N, b)
        else:  # every cell of a clone gets its clone's weight
            m = (rng.poisson(1.0, size=(int(problem.cluster.max()) + 1, b)) - 1.0)[problem.cluster]
        dg = np.empty((K, P, b))
        for k in range(K):
            dg[k] = problem.centre_rows(np.asarray(XT @ (m * resid[:, k : k + 1])), k)
        step = -res.cov @ dg.reshape(K * P, b)
        out[start : start + b] = res.psi[None] + step.T.reshape(b, K, P)
    return out


class BootstrapPosterior(LaplacePosterior):
    """Replicates of the one-step Newton bootstrap; draws resample the replicates."""

    family = "bootstrap"

    @classmethod
    def from_replicates(cls, res: LaplaceResult, problem: LaplaceProblem, hyper: dict[str, np.ndarray], reps: np.ndarray) -> BootstrapPosterior:
        base = LaplacePosterior.from_result(res, problem, hyper).params
        lay, K = problem.layout, problem.n_contrasts
        B = reps.shape[0]
        base.pop("block_cov")
        base.pop("block_mask")
        base["theta_draws"] = reps[:, :, lay.theta].reshape(B, K, lay.n_genes, lay.n_days).transpose(0, 2, 1, 3)
        base["u_draws"] = reps[:, :, lay.u].transpose(0, 2, 1)
        return cls(base)

    def sample_effects(self, n: int, rng: np.random.Generator, gene_of_guide: np.ndarray, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws resampled from the bootstrap replicates."""
        idx = rng.integers(0, self.params["theta_draws"].shape[0], size=n)
        return self.params["theta_draws"][idx], self._delta(self.params["u_draws"][idx], gene_of_guide, n_genes)


# --------------------------------------------------------------------------- entry point
def build_problem(
    experiment: Experiment,
    contrast_fates: list[str],
    ref_fate: str,
    priors,
    hyper: dict[str, np.ndarray],
    weight: float,
    uncertainty: str = "model",
) -> LaplaceProblem:
    """The conditional posterior of the linear latents of ``experiment`` (see :func:`laplace_posterior`)."""
    cells, guides = experiment.cells, experiment.guides
    lay = Layout(cells.n_days, cells.n_reps, guides.n_genes, guides.n_guides)
    K = len(contrast_fates)
    fates = list(cells.fates)
    gene0 = guides.gene_of_guide[1:].astype(np.int64) - 1
    prior_diag = np.zeros((K, lay.size))
    prior_diag[:, lay.a] = 1.0 / priors.s_alpha**2
    prior_diag[:, lay.b] = 1.0 / priors.s_rep**2
    prior_diag[:, lay.c] = 1.0 / priors.s_gamma**2
    prior_diag[:, lay.u] = 1.0
    return LaplaceProblem(
        X=design_matrix(experiment),
        layout=lay,
        p=cells.fate_probs.astype(np.float64),
        ref_index=fates.index(ref_fate),
        contrast_index=np.asarray([fates.index(f) for f in contrast_fates]),
        gene_of_guide=gene0,
        guides_per_gene=np.bincount(gene0, minlength=lay.n_genes).astype(np.float64),
        sigma_guide=np.asarray(hyper["sigma_guide"], dtype=np.float64),
        prior_diag=prior_diag,
        rw_precision=np.stack([random_walk_precision(hyper["tau"][k], hyper["sigma_time"][k]) for k in range(K)]),
        weight=float(weight),
        cluster=experiment.cells.clusters() if uncertainty == "cluster_robust" else None,
    )


def nuisance_problem(problem: LaplaceProblem) -> LaplaceProblem:
    """The same problem without guide terms: the day, replicate and burden columns only.

    Its parameter vector is the first ``layout.theta.start`` entries of the full one's.
    """
    lay = problem.layout
    n0 = lay.theta.start
    return replace(
        problem,
        X=problem.X[:, :n0].tocsr(),
        layout=Layout(lay.n_days, lay.n_reps, 0, 0),
        gene_of_guide=np.zeros(0, dtype=np.int64),
        guides_per_gene=np.zeros(0),
        prior_diag=problem.prior_diag[:, :n0],
    )


def nuisance_start(problem: LaplaceProblem) -> np.ndarray:
    """(K, P) start with zero effects and the day, replicate and burden terms at the nuisance-only mode."""
    n0 = problem.layout.theta.start
    psi = np.zeros((problem.n_contrasts, problem.layout.size))
    psi[:, :n0] = newton_mode(nuisance_problem(problem), psi[:, :n0], covariance=False).psi
    return psi


def problem_at_mode(experiment: Experiment, posterior: LaplacePosterior, contrast_fates: list[str], ref_fate: str, priors) -> tuple[LaplaceProblem, np.ndarray]:
    """The problem a fitted Laplace/bootstrap posterior was computed from, and its mode psi (K, P).

    Clusters are always attached (``problem.cluster``), so both model-based and
    cluster-robust quantities can be computed from it.
    """
    p = posterior.params
    hyper = {k: p[f"hyper_{k}"] for k in ("tau", "sigma_time", "sigma_guide")}
    problem = build_problem(experiment, contrast_fates, ref_fate, priors, hyper, float(p["weight"]), "cluster_robust")
    return problem, pack_psi(problem, p)


def pack_psi(problem: LaplaceProblem, values: dict[str, np.ndarray]) -> np.ndarray:
    """(K, P) parameter vector from a (K, D), b (K, R), c (K,), theta (L, K, D) and u (G, K)."""
    lay, K = problem.layout, problem.n_contrasts
    psi = np.zeros((K, lay.size))
    psi[:, lay.a] = values["a"]
    psi[:, lay.b] = values["b"]
    psi[:, lay.c] = values["c"]
    psi[:, lay.theta] = np.asarray(values["theta"]).transpose(1, 0, 2).reshape(K, -1)
    psi[:, lay.u] = np.asarray(values["u"]).T
    return psi


def laplace_posterior(
    experiment: Experiment,
    contrast_fates: list[str],
    ref_fate: str,
    priors,
    start: dict[str, np.ndarray] | None,
    hyper: dict[str, np.ndarray],
    weight: float,
    max_iter: int = 30,
    bootstrap: int = 0,
    seed: int = 0,
    uncertainty: str = "model",
) -> LaplacePosterior:
    """The Laplace posterior of the linear latents given the variance hyperparameters.

    Parameters
    ----------
    experiment
        The data.
    contrast_fates, ref_fate
        Contrast order and the reference fate.
    priors
        :class:`fatebias_core.model.fate_model.Priors` (s_alpha, s_rep, s_gamma).
    start
        Starting values: a (K, D), b (K, R), c (K,), theta (L, K, D), u (G, K); None
        starts from zero effects with the day, replicate and burden terms at the mode of
        the nuisance-only problem (a few cheap iterations that save Newton a full one).
    hyper
        tau (K,), sigma_time (K, D-1), sigma_guide (K,): fixed at their fitted values.
    weight
        Likelihood weight w.
    bootstrap
        When positive, the number of one-step bootstrap replicates: the posterior is then
        the bootstrap distribution (:class:`BootstrapPosterior`).
    seed
        Seed of the bootstrap weights.
    uncertainty
        ``model``: the inverse Hessian; ``cluster_robust``: :func:`robust_covariance`
        over the experiment's clusters (and the bootstrap resamples clusters).
    """
    problem = build_problem(experiment, contrast_fates, ref_fate, priors, hyper, weight, uncertainty)
    psi0 = nuisance_start(problem) if start is None else pack_psi(problem, start)
    res = newton_mode(problem, psi0, max_iter=max_iter)
    if not res.converged:
        log.warning("Laplace: Newton did not converge in %d iterations", res.n_iter)
    if bootstrap > 0:
        reps = one_step_bootstrap(problem, res, bootstrap, seed)
        return BootstrapPosterior.from_replicates(res, problem, hyper, reps)
    if uncertainty == "cluster_robust":
        index, _ = gene_blocks(problem.layout, problem.gene_of_guide, problem.n_contrasts)
        adjusted = leverage_adjusted_residuals(problem, res)
        blocks, df = robust_covariance(problem, res, index=index, adjusted=adjusted)
        return LaplacePosterior.from_result(res, problem, hyper, df=df, blocks=blocks, adjusted=adjusted)
    return LaplacePosterior.from_result(res, problem, hyper)
