"""The conditional posterior of the linear latents: a multinomial-logit GLMM with clone effects.

Given the variance hyperparameters, the fate model is a multinomial-logit GLMM:

    eta_ik = x_i T_k psi_k + b_{c(i), k},    psi_k = (a_k, b_k, c_k, theta_k, u_k),
    b_c ~ N(0, Sigma_b),

with T_k the within-gene centring of the guide deviations (``delta = sigma_guide (u -
mean_gene(u))``), Gaussian priors on psi (the random walk of each gene's theta over days,
N(0, 1) on u) and a random intercept ``b_c`` per clone c on each contrast's logit. The
likelihood is the soft-label cross-entropy with weight w. Its negative log posterior is
convex in (psi, b); :class:`LaplaceProblem` gives its value, gradient and Hessian, and
:func:`newton_mode` finds the mode.

The clone effects are eliminated clone by clone: their Hessian block is block-diagonal
(a K x K block per clone), so the Newton system for psi is the Schur complement

    S = H_psi,psi - sum_c H_psi,b_c (sum_{i in c} W_i + Sigma_b^-1)^-1 H_b_c,psi,

a sum over clones of low-rank terms whose cost is linear in the cells. Its inverse is
the covariance of psi with the clone effects integrated out (their Laplace marginal).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.special import log_softmax, softmax

from fatebias_core.errors import FitError
from fatebias_core.mash.blas_threads import factor_threads_for
from fatebias_core.model.design import Layout, thread_map

log = logging.getLogger("fatebias.laplace")


@dataclass
class LaplaceProblem:
    """The conditional posterior of (psi, clone effects) given the variance hyperparameters.

    Attributes
    ----------
    X
        (N, P) raw design of one contrast (:func:`~fatebias_core.model.design.design_matrix`).
    layout
        Positions in psi_k.
    p
        (N, F) fate probabilities.
    contrast_index
        (K,) columns of the contrast fates in ``p`` (the reference's logit is 0).
    gene_of_guide, guides_per_gene
        (G,) 0-based gene of each guide; (L,) guides per gene.
    sigma_guide
        (K,) spread of the guide deviations.
    prior_diag, rw_precision
        (K, P) diagonal prior precision (theta entries 0) and (K, D, D) each gene's
        random-walk precision.
    weight
        Likelihood weight w.
    cluster
        (N,) clone of each cell, 0..C-1 (None: every cell its own).
    clone_cov
        (K, K) covariance Sigma_b of the clone effects; None: no clone effect.
    """

    X: sp.csr_matrix
    layout: Layout
    p: np.ndarray
    ref_index: int
    contrast_index: np.ndarray
    gene_of_guide: np.ndarray
    guides_per_gene: np.ndarray
    sigma_guide: np.ndarray
    prior_diag: np.ndarray
    rw_precision: np.ndarray
    weight: float
    cluster: np.ndarray | None = None
    clone_cov: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ----------------------------------------------------------------- sizes
    @property
    def n_contrasts(self) -> int:
        return int(self.contrast_index.size)

    @property
    def n_cells(self) -> int:
        return int(self.p.shape[0])

    @property
    def clusters(self) -> np.ndarray:
        """(N,) cluster ids 0..C-1 (every cell its own cluster when ``cluster`` is None)."""
        return np.arange(self.n_cells) if self.cluster is None else np.asarray(self.cluster)

    @property
    def n_clusters(self) -> int:
        return int(self.clusters.max(initial=-1)) + 1

    @property
    def has_clone_effects(self) -> bool:
        return self.clone_cov is not None

    def with_hyper(self, **changes) -> LaplaceProblem:
        """A copy with other hyperparameters (``weight``, ``sigma_guide``, ``clone_cov``), sharing the caches that do not depend on them."""
        new = replace(self, **changes, _cache={})
        for key in ("onehot", "gram", "cluster_of", "X_T"):
            if key in self._cache:
                new._cache[key] = self._cache[key]
        return new

    # ----------------------------------------------------------------- centring of u
    @property
    def onehot(self) -> sp.csr_matrix:
        """(L, G) gene membership of the guides."""
        if "onehot" not in self._cache:
            G = self.gene_of_guide.size
            self._cache["onehot"] = sp.csr_matrix(
                (np.ones(G), (self.gene_of_guide, np.arange(G))), shape=(self.layout.n_genes, G)
            )
        return self._cache["onehot"]

    def centre_rows(self, m: np.ndarray, k: int) -> np.ndarray:
        """Apply T_k^T from the left on the u rows: sigma_k (I - M), M the within-gene mean."""
        out = np.array(m, dtype=np.float64, copy=True)
        self.centre_rows_inplace(out, k)
        return out

    def centre_rows_inplace(self, m: np.ndarray, k: int) -> None:
        """:meth:`centre_rows` on ``m`` itself, a (P,) or (P, n) array or view."""
        u = self.layout.u
        if u.start == u.stop:  # the nuisance-only problem has no guide terms
            return
        rows = m[u]  # a view, so the updates below land in m
        per_gene = self.guides_per_gene if rows.ndim == 1 else self.guides_per_gene[:, None]
        rows -= ((self.onehot @ rows) / per_gene)[self.gene_of_guide]
        rows *= self.sigma_guide[k]

    def centre_block_inplace(self, m: np.ndarray, k: int, j: int) -> None:
        """``T_k^T m T_j`` in place for a (P, P) block."""
        self.centre_rows_inplace(m, k)
        self.centre_rows_inplace(m.T, j)

    def effective(self, psi: np.ndarray) -> np.ndarray:
        """(K, P) parameters with u replaced by delta = sigma (u - gene mean)."""
        return np.stack([self.centre_rows(psi[k], k) for k in range(self.n_contrasts)])

    # ----------------------------------------------------------------- objective
    def linear(self, psi: np.ndarray, beta: np.ndarray | None = None) -> np.ndarray:
        """(N, K) contrast logits ``x_i T_k psi_k`` plus each cell's clone effect."""
        eta = np.asarray(self.X @ self.effective(psi).T)
        if beta is not None:
            eta = eta + beta[self.clusters]
        return eta

    def logits(self, psi: np.ndarray, beta: np.ndarray | None = None) -> np.ndarray:
        """(N, F) logits of every fate (the reference's is 0)."""
        eta = self.linear(psi, beta)
        full = np.zeros((eta.shape[0], self.p.shape[1]))
        full[:, self.contrast_index] = eta
        return full

    def probabilities(self, psi: np.ndarray, beta: np.ndarray | None = None) -> np.ndarray:
        return softmax(self.logits(psi, beta), axis=1)

    def prior_term(self, psi: np.ndarray) -> float:
        lay = self.layout
        val = 0.5 * float((self.prior_diag * psi**2).sum())
        th = psi[:, lay.theta].reshape(self.n_contrasts, lay.n_genes, lay.n_days)
        val += 0.5 * float(np.einsum("kld,kde,kle->", th, self.rw_precision, th))
        return val

    def clone_prior_term(self, beta: np.ndarray | None) -> float:
        if beta is None or self.clone_cov is None:
            return 0.0
        prec = np.linalg.inv(self.clone_cov)
        return 0.5 * float(np.einsum("ck,kj,cj->", beta, prec, beta))

    def objective(self, psi: np.ndarray, beta: np.ndarray | None = None) -> float:
        """Negative log conditional posterior of (psi, b) (up to a constant)."""
        logpi = log_softmax(self.logits(psi, beta), axis=1)
        return -self.weight * float((self.p * logpi).sum()) + self.prior_term(psi) + self.clone_prior_term(beta)

    def prior_grad(self, psi: np.ndarray) -> np.ndarray:
        lay = self.layout
        g = self.prior_diag * psi
        th = psi[:, lay.theta].reshape(self.n_contrasts, lay.n_genes, lay.n_days)
        g[:, lay.theta] += np.einsum("kde,kle->kld", self.rw_precision, th).reshape(self.n_contrasts, -1)
        return g

    def residuals(self, pi: np.ndarray) -> np.ndarray:
        """(N, K) weighted residuals ``w (p_ik - pi_ik)``: a cell's score is ``x_ik`` times them."""
        return self.weight * (self.p[:, self.contrast_index] - pi[:, self.contrast_index])

    def cell_weights(self, pi: np.ndarray) -> np.ndarray:
        """(N, K, K) each cell's likelihood curvature ``w (diag(pi) - pi pi^T)`` over the contrasts."""
        pk = pi[:, self.contrast_index]
        return self.weight * (pk[:, :, None] * np.eye(pk.shape[1])[None] - pk[:, :, None] * pk[:, None, :])

    def gradients(self, psi: np.ndarray, beta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Gradient in psi (K, P), in the clone effects (C, K) and the fitted probabilities (N, F)."""
        pi = self.probabilities(psi, beta)
        r = self.residuals(pi)
        XT = self.X_T
        g = np.stack([self.centre_rows(np.asarray(XT @ -r[:, k]), k) for k in range(self.n_contrasts)])
        g += self.prior_grad(psi)
        g_beta = None
        if beta is not None and self.clone_cov is not None:
            g_beta = -self.cluster_sum(r) + beta @ np.linalg.inv(self.clone_cov)
        return g, g_beta, pi

    @property
    def X_T(self) -> sp.csr_matrix:
        if "X_T" not in self._cache:
            self._cache["X_T"] = self.X.T.tocsr()
        return self._cache["X_T"]

    @property
    def cluster_of(self) -> sp.csr_matrix:
        """(C, N) indicator of each cell's clone."""
        if "cluster_of" not in self._cache:
            c = self.clusters
            self._cache["cluster_of"] = sp.csr_matrix((np.ones(c.size), (c, np.arange(c.size))), shape=(self.n_clusters, c.size))
        return self._cache["cluster_of"]

    def cluster_sum(self, x: np.ndarray) -> np.ndarray:
        """Per clone, the sum of its cells' rows of ``x`` (N, ...) -> (C, ...)."""
        flat = x.reshape(x.shape[0], -1)
        return np.asarray(self.cluster_of @ flat).reshape((self.n_clusters, *x.shape[1:]))

    # ----------------------------------------------------------------- curvature
    def curvature(self, pi: np.ndarray) -> Curvature:
        """Cell curvatures at ``pi`` and, with clone effects, each clone's block and its inverse."""
        W = self.cell_weights(pi)
        if self.clone_cov is None:
            return Curvature(W)
        prec = np.linalg.inv(self.clone_cov)
        B = self.cluster_sum(W) + prec[None]
        return Curvature(W, B, np.linalg.inv(B))

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

    def schur_hessian(self, curv: Curvature) -> np.ndarray:
        """The dense (K P, K P) Hessian of psi with the clone effects eliminated (prior included).

        ``X^T W X`` by day (:meth:`weighted_gram`), minus each clone's
        ``H_psi,b (B_c)^-1 H_b,psi``: for a clone of one cell this is a change of the
        cell's weight (``W - W B^-1 W``), folded into the gram; for larger clones the
        clone's summed design rows, scaled by a square root of ``B_c^-1``, enter as a
        sparse product.
        """
        cell_w = curv.W
        rows = None
        if curv.B_inv is not None:
            sizes = np.bincount(self.clusters, minlength=self.n_clusters)
            single = sizes[self.clusters] == 1
            Binv_cell = curv.B_inv[self.clusters]
            adj = np.einsum("nij,njk,nkl->nil", cell_w, Binv_cell, cell_w)
            cell_w = cell_w - np.where(single[:, None, None], adj, 0.0)
            if (~single).any():
                rows = self._clone_rows(curv, ~single)
        out = self.symmetric_blocks(lambda k, j: self._raw_block(cell_w[:, k, j], rows, k, j))
        return self.add_prior_hessian(out)

    def schur_matvec(self, curv: Curvature, v: np.ndarray) -> np.ndarray:
        """``S v`` for a (K, P) ``v`` without forming S (:meth:`schur_hessian`): sparse products, linear in the cells.

        ``X^T W X v``, minus for every clone ``H_psi,b B_c^-1 H_b,psi v`` (its cells'
        ``W_i x_i v`` summed, solved with ``B_c`` and spread back), plus ``Q v``.
        """
        z = np.einsum("nkj,nj->nk", curv.W, self.linear(v))
        if curv.B_inv is not None:
            t = np.einsum("ckj,cj->ck", curv.B_inv, self.cluster_sum(z))
            z -= np.einsum("nkj,nj->nk", curv.W, t[self.clusters])
        XT = self.X_T
        out = np.stack([self.centre_rows(np.asarray(XT @ z[:, k]), k) for k in range(self.n_contrasts)])
        return out + self.prior_grad(v)  # the prior is quadratic: its gradient at v is Q v

    def _raw_block(self, w: np.ndarray, rows: list[list[sp.csr_matrix]] | None, k: int, j: int) -> np.ndarray:
        block = self.weighted_gram(w)
        if rows is not None:
            for a in range(self.n_contrasts):
                block -= (rows[k][a].T @ rows[j][a]).toarray()
        return block

    def _clone_rows(self, curv: Curvature, multi: np.ndarray) -> list[list[sp.csr_matrix]]:
        """Per (k, a), the (C, P) rows ``sum_{i in c} x_i (W_i L_c)[k, a]`` of the multi-cell clones (L_c L_c^T = B_c^-1)."""
        K = self.n_contrasts
        chol = np.linalg.cholesky(curv.B_inv)  # (C, K, K)
        v = np.einsum("nkj,nja->nka", curv.W, chol[self.clusters])  # (N, K, K)
        v = np.where(multi[:, None, None], v, 0.0)
        ind = self.cluster_of
        return [[(ind.multiply(v[:, k, a][None, :]) @ self.X).tocsr() for a in range(K)] for k in range(K)]

    def symmetric_blocks(self, block_of) -> np.ndarray:
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
        if u.start == u.stop:
            return out

        def day_products(part: tuple) -> tuple[np.ndarray, np.ndarray]:
            rows, ud, udt, xnt = part
            scaled = ud.multiply(w[rows][:, None]).tocsr()
            return (udt @ scaled).toarray(), (xnt @ scaled).toarray()  # (G, G), (n0, G)

        # The days' sparse products are independent (and release the GIL): one thread each.
        for d, (m, nu) in enumerate(thread_map(day_products, parts["days"])):
            tu = self.onehot @ m  # (L, G)
            tn = (self.onehot @ nu.T).T  # (n0, L)
            tidx = lay.theta.start + np.arange(lay.n_genes) * lay.n_days + d
            out[u, u] += m
            out[:n0, u] += nu
            out[tidx, u] = tu
            out[u, tidx] = tu.T
            out[np.ix_(tidx, tidx)] = (self.onehot @ tu.T).T
            out[:n0, tidx] = tn
            out[tidx, :n0] = tn.T
        out[u, :n0] = out[:n0, u].T
        return out

    def _gram_parts(self) -> dict:
        """Cached per-day pieces of the design for :meth:`weighted_gram`."""
        if "gram" not in self._cache:
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
            self._cache["gram"] = {"nuisance": xn, "days": days}
        return self._cache["gram"]

    # ----------------------------------------------------------------- Newton pieces
    def eliminated_gradient(self, g: np.ndarray, g_beta: np.ndarray | None, curv: Curvature) -> np.ndarray:
        """(K, P) gradient of psi with the clone effects eliminated: ``g - H_psi,b B^-1 g_b``."""
        if g_beta is None or curv.B_inv is None:
            return g
        t = np.einsum("ckj,cj->ck", curv.B_inv, g_beta)  # B_c^-1 g_b,c
        per_cell = np.einsum("nkj,nj->nk", curv.W, t[self.clusters])  # W_i B^-1 g_b of the cell's clone
        out = g.copy()
        XT = self.X_T
        for k in range(self.n_contrasts):
            out[k] -= self.centre_rows(np.asarray(XT @ per_cell[:, k]), k)
        return out

    def beta_step(self, g_beta: np.ndarray, dpsi: np.ndarray, curv: Curvature) -> np.ndarray:
        """(C, K) Newton step of the clone effects given psi's: ``-B^-1 (g_b + H_b,psi dpsi)``."""
        deta = np.asarray(self.X @ self.effective(dpsi).T)  # (N, K): x_i T dpsi
        cross = self.cluster_sum(np.einsum("nkj,nj->nk", curv.W, deta))
        return -np.einsum("ckj,cj->ck", curv.B_inv, g_beta + cross)

    def nuisance_only(self) -> LaplaceProblem:
        """The same problem without guide terms: the day, replicate and burden columns only."""
        lay = self.layout
        n0 = lay.theta.start
        return replace(
            self,
            X=self.X[:, :n0].tocsr(),
            layout=Layout(lay.n_days, lay.n_reps, 0, 0),
            gene_of_guide=np.zeros(0, dtype=np.int64),
            guides_per_gene=np.zeros(0),
            prior_diag=self.prior_diag[:, :n0],
            rw_precision=self.rw_precision,
            _cache={},
        )


@dataclass
class Curvature:
    """The likelihood's curvature at a point: per cell, and per clone with the clone's prior."""

    W: np.ndarray  # (N, K, K)
    B: np.ndarray | None = None  # (C, K, K) sum of the clone's W + Sigma_b^-1
    B_inv: np.ndarray | None = None  # (C, K, K)


@dataclass
class LaplaceResult:
    """Mode and diagnostics of a Newton run; ``chol`` is the factor of the eliminated Hessian at the mode."""

    psi: np.ndarray  # (K, P)
    beta: np.ndarray | None  # (C, K) clone effects at the mode
    n_iter: int
    converged: bool
    objective: float
    pi: np.ndarray  # (N, F) at the mode
    hessian: np.ndarray | None = None  # (K P, K P) eliminated Hessian at the mode, prior included
    curvature: Curvature | None = None
    #: ``x -> S^-1 x`` for the Hessian last factored on the way (a preconditioner for a nearby problem)
    solve: Callable[[np.ndarray], np.ndarray] | None = None


def newton_mode(
    problem: LaplaceProblem,
    psi0: np.ndarray,
    beta0: np.ndarray | None = None,
    max_iter: int = 50,
    tol: float = 1e-8,
    hessian_at_mode: bool = True,
    precondition: Callable[[np.ndarray], np.ndarray] | None = None,
    structured: bool = False,
) -> LaplaceResult:
    """Newton's method with backtracking to the joint mode of (psi, clone effects).

    Each step solves the psi system with the clone effects eliminated (the Schur
    complement, :meth:`LaplaceProblem.schur_hessian`) and updates every clone's effect
    from it. Converged when the Newton decrement ``g^T H^-1 g / 2`` falls below ``tol``
    times the number of cells. With ``hessian_at_mode`` the eliminated Hessian at the
    mode is kept (``hessian``) for the posterior covariance.

    The Newton system is solved to :data:`NEWTON_CG_RTOL` by conjugate gradients with the
    exact Hessian-vector product (:meth:`LaplaceProblem.schur_matvec`), preconditioned by
    the Cholesky factor of a nearby Hessian: ``precondition`` (the inverse of the
    Hessian at an earlier mode, e.g. the previous empirical Bayes update's), else the
    Hessian of the first step, formed and factored once. The steps are Newton's to that
    tolerance, which keeps Newton's convergence to the same mode; a factor is formed
    again only when the conjugate gradients stall (the point has moved far from where it
    was made).

    With ``structured`` no dense Hessian is formed: the preconditioner is the gene-block
    approximation of ``S^-1`` (:class:`~fatebias_core.model.block_algebra.BlockAlgebra`),
    made again where the conjugate gradients stall, and ``hessian`` stays None (the
    curvature at the mode is kept).
    """
    K, P = psi0.shape
    psi = psi0.copy()
    clones = problem.has_clone_effects
    beta = None if not clones else (np.zeros((problem.n_clusters, K)) if beta0 is None else beta0.copy())
    f = problem.objective(psi, beta)
    n = problem.n_cells
    converged = False
    it = 0
    hess = curv = None
    solve = precondition
    for it in range(1, max_iter + 1):
        g, g_beta, pi = problem.gradients(psi, beta)
        curv = problem.curvature(pi)
        g_elim = problem.eliminated_gradient(g, g_beta, curv)
        rhs = -g_elim.ravel()
        dpsi = None
        cg_iter = STRUCTURED_CG_MAX_ITER if structured else NEWTON_CG_MAX_ITER
        matvec = lambda v, c=curv: problem.schur_matvec(c, v.reshape(K, P)).ravel()  # noqa: E731
        if solve is not None:
            dpsi = conjugate_gradients(matvec, rhs, solve, max_iter=cg_iter)
        if dpsi is None and structured:
            from fatebias_core.model.block_algebra import BlockAlgebra

            solve = BlockAlgebra(problem, curv, correct=False).apply_m
            dpsi = conjugate_gradients(matvec, rhs, solve, max_iter=cg_iter)
            if dpsi is None:
                raise FitError("conjugate gradients with the Laplace Hessian did not converge; use posterior_method: meanfield")
        if dpsi is None:
            solve = _factor(problem.schur_hessian(curv), K * P)
            dpsi = solve(rhs)
        dpsi = dpsi.reshape(K, P)
        dbeta = problem.beta_step(g_beta, dpsi, curv) if clones else None
        decrement = -0.5 * float(g.ravel() @ dpsi.ravel() + (0.0 if dbeta is None else (g_beta * dbeta).sum()))
        t = 1.0
        while True:
            cand = psi + t * dpsi
            cand_b = None if dbeta is None else beta + t * dbeta
            f_new = problem.objective(cand, cand_b)
            if f_new <= f - 0.25 * t * 2 * decrement or t < 1e-6:
                break
            t *= 0.5
        psi, beta, f = cand, cand_b, f_new
        log.debug("newton %d: objective %.6f, decrement %.3g, step %.3g", it, f, decrement, t)
        if decrement < tol * n:
            converged = True
            break
    pi = problem.probabilities(psi, beta)
    if hessian_at_mode:
        curv = problem.curvature(pi)
        hess = None if structured else problem.schur_hessian(curv)
    else:
        hess = curv = None
    return LaplaceResult(
        psi=psi, beta=beta, n_iter=it, converged=converged, objective=f, pi=pi, hessian=hess, curvature=curv, solve=solve
    )


#: Relative residual to which conjugate gradients solve a Newton system: an inexact Newton
#: step still converges to the mode (at a rate this small), which the decrement test decides.
NEWTON_CG_RTOL = 1e-6
#: Conjugate-gradient iterations after which a nearby factor no longer pays and the Hessian is factored afresh.
NEWTON_CG_MAX_ITER = 40
#: The same with the gene-block preconditioner, which is made again only where this many do not do.
STRUCTURED_CG_MAX_ITER = 300


def _factor(hess: np.ndarray, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> hess^-1 x`` from a Cholesky factor of ``hess`` (overwritten)."""
    try:
        with factor_threads_for(size):
            chol = sla.cho_factor(hess, lower=True, check_finite=False, overwrite_a=True)
    except np.linalg.LinAlgError:
        raise FitError("the Laplace Hessian is not positive definite; use posterior_method: meanfield") from None
    return lambda r: sla.cho_solve(chol, r, check_finite=False)


def conjugate_gradients(
    matvec: Callable[[np.ndarray], np.ndarray],
    rhs: np.ndarray,
    precondition: Callable[[np.ndarray], np.ndarray],
    rtol: float = NEWTON_CG_RTOL,
    max_iter: int = NEWTON_CG_MAX_ITER,
) -> np.ndarray | None:
    """Preconditioned conjugate gradients for ``A x = rhs`` (A symmetric positive definite).

    Returns the solution once the residual is below ``rtol`` times ``|rhs|``, or None when
    it is not within ``max_iter`` iterations (or the preconditioned system is not
    positive definite).
    """
    bnorm = float(np.linalg.norm(rhs))
    x = precondition(rhs)
    if bnorm == 0.0:
        return x
    r = rhs - matvec(x)
    z = precondition(r)
    p = z.copy()
    rz = float(r @ z)
    for _ in range(max_iter):
        if np.linalg.norm(r) <= rtol * bnorm:
            return x
        q = matvec(p)
        pq = float(p @ q)
        if not pq > 0.0 or not rz > 0.0:
            return None
        alpha = rz / pq
        x += alpha * p
        r -= alpha * q
        z = precondition(r)
        rz_new = float(r @ z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x if np.linalg.norm(r) <= rtol * bnorm else None


def optimise_clone_effects(problem: LaplaceProblem, psi: np.ndarray, beta: np.ndarray, max_iter: int = 20, tol: float = 1e-10) -> np.ndarray:
    """The clone effects' mode given psi: a Newton step per clone (clones are independent given psi).

    Every clone's objective is convex; each step is halved where it would raise its
    clone's objective.
    """
    eta0 = problem.linear(psi)
    prec = np.linalg.inv(problem.clone_cov)
    clusters = problem.clusters
    n_cl = problem.n_clusters
    K = problem.n_contrasts
    p = problem.p

    def per_clone(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        full = np.zeros((p.shape[0], p.shape[1]))
        full[:, problem.contrast_index] = eta0 + b[clusters]
        logpi = log_softmax(full, axis=1)
        f = -problem.weight * np.bincount(clusters, weights=(p * logpi).sum(axis=1), minlength=n_cl)
        f += 0.5 * np.einsum("ck,kj,cj->c", b, prec, b)
        return f, np.exp(logpi)

    f, pi = per_clone(beta)
    for _ in range(max_iter):
        r = problem.residuals(pi)
        g = -problem.cluster_sum(r) + beta @ prec
        B = problem.cluster_sum(problem.cell_weights(pi)) + prec[None]
        step = -np.linalg.solve(B, g[..., None])[..., 0]
        dec = -0.5 * (g * step).sum(axis=1)
        t = np.ones(n_cl)
        for _ in range(30):  # halvings, for the clones whose objective would rise
            cand = beta + t[:, None] * step
            f_new, pi_new = per_clone(cand)
            bad = f_new > f - 0.25 * t * 2 * dec + 1e-12
            if not bad.any():
                break
            t = np.where(bad, 0.5 * t, t)
        beta, f, pi = cand, f_new, pi_new
        if dec.sum() < tol * problem.n_cells:
            break
    return beta.reshape(n_cl, K)
