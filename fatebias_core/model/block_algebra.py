"""The posterior's linear algebra without a dense Hessian: gene blocks, the nuisance terms by Schur complement.

The eliminated Hessian ``S`` of psi (:meth:`LaplaceProblem.schur_hessian`) has a few
nuisance terms (day, replicate, burden: ``n = K (D + R + 1)`` of them) coupled to
everything, and a block per gene (its theta over contrasts and days, its guides' u)
coupled to other genes only through cells that carry guides of both. With the nuisance
terms eliminated, ``S^-1``'s effect part is ``Cs^-1``, ``Cs = C - U^T A^-1 U`` (``A`` the
nuisance block, ``U`` its coupling to the effects). :class:`BlockAlgebra` approximates
``Cs^-1`` by its gene blocks, each the inverse of the gene's block with the other genes
eliminated to first order::

    V_i = (D_i - sum_{j != i} E_ij D_j^-1 E_ji)^-1,

``D_i`` the gene's block of ``Cs`` and ``E_ij`` the coupling between two genes; the cross-gene
blocks of ``Cs^-1`` are dropped. ``M`` below is that approximate ``S^-1``: block-diagonal in
the genes after the nuisance terms, and positive definite. What it gives:

* exact solves with ``S`` (conjugate gradients on the exact product, ``M`` the preconditioner);
* the gene blocks of ``S^-1`` (the ``V_i``), the nuisance block, the columns and the
  diagonal of ``M``;
* within-clone blocks of ``X S^-1 X^T`` (leverage), and the gene blocks of the
  cluster-robust covariance ``S^-1 (Q + J) S^-1`` as the sandwich of gene i's columns of
  ``S^-1`` to first order (:meth:`BlockAlgebra.robust_blocks`).

Nothing here holds a (K P)^2 array: memory grows with the design's non-zeros (cells x
guides per cell) and with the genes. Time of the first-order elimination grows as the
genes times the number of parameters (the Hessian's non-zeros); everything else as the
cells. The approximation's error on each gene block is second order in the cross-gene
coupling; :meth:`BlockAlgebra.check` solves exactly for a few genes so that a fit can
report it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from fatebias_core.errors import FitError
from fatebias_core.model.design import gene_blocks, thread_map
from fatebias_core.model.glmm import Curvature, LaplaceProblem
from fatebias_core.model.robust import _sym_sqrt

log = logging.getLogger("fatebias.laplace")

#: Relative residual of the conjugate-gradient solves with S.
SOLVE_RTOL = 1e-10
#: Iterations after which a solve with S gives up.
SOLVE_MAX_ITER = 500
#: Genes per batch of the first-order elimination (a batch holds a dense genes x B x (L B) array).
GENE_BATCH_BYTES = 256 * 1024**2


def block_gram(rows: sp.csr_matrix, weights: np.ndarray, n_blocks: int, B: int) -> np.ndarray:
    """``sum_r w_r z_r z_r^T`` restricted to each block: (n_blocks, B, B).

    ``rows`` (R, n_blocks B) has its columns grouped by block; the pairs of a row's entries
    that fall in different blocks are left out. Each row is split into one row per block
    it touches, and the split rows' gram is block-diagonal.
    """
    rows = rows.tocsr()
    rows.sort_indices()
    r = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
    blk = rows.indices // B
    new = np.ones(r.size, dtype=bool)
    new[1:] = (r[1:] != r[:-1]) | (blk[1:] != blk[:-1])
    inc = np.cumsum(new) - 1
    n_inc = int(inc[-1]) + 1 if inc.size else 0
    split = sp.csr_matrix((rows.data, rows.indices, np.searchsorted(inc, np.arange(n_inc + 1))), shape=(n_inc, n_blocks * B))
    w_inc = weights[r[new]]
    gram = (split.T @ split.multiply(w_inc[:, None]).tocsr()).tocoo()
    out = np.zeros((n_blocks, B, B))
    np.add.at(out, (gram.row // B, gram.row % B, gram.col % B), gram.data)
    return out


class BlockAlgebra:
    """``S^-1`` by gene blocks after a Schur complement on the nuisance terms (see the module docstring).

    Parameters
    ----------
    problem
        The problem whose eliminated Hessian S this approximates.
    curv
        Its curvature at the point (the mode).
    correct
        Eliminate the other genes to first order in each gene's block (else each gene's
        block is ``D_i^-1``: enough for a preconditioner).
    """

    def __init__(self, problem: LaplaceProblem, curv: Curvature, correct: bool = True):
        self.problem, self.curv = problem, curv
        lay, K = problem.layout, problem.n_contrasts
        P = lay.size
        self.size = K * P
        n0 = lay.theta.start
        self.n = n = K * n0
        index, mask = gene_blocks(lay, problem.gene_of_guide, K)
        self.index, self.mask = index, mask
        L, B = index.shape
        self.L, self.B = L, B
        # Column maps: nuisance (k, j) -> k n0 + j; a gene's block entry (g, b) -> n + g B + b.
        colmap = np.empty(K * P, dtype=np.int64)
        nuis = (np.arange(K)[:, None] * P + np.arange(n0)[None, :]).ravel()
        colmap[nuis] = np.arange(n)
        colmap[index[mask]] = n + np.flatnonzero(mask.ravel())
        self.nuis, self.colmap = nuis, colmap
        self.T = self._centring()  # (L, B, B): param -> raw within each gene block
        rows, sign = self._square_root_rows()
        self.sign = sign
        self.loc = loc = self._to_local(rows)  # the only copy kept: the product with S reads it too
        del rows
        FN, FE = loc[:, :n], loc[:, n:]
        FN_s = FN.multiply(sign[:, None]).tocsr()
        self.Q_N, self.Q_blocks = Q_N, Q_blocks = self._prior_blocks()
        A = (FN_s.T @ FN).toarray() + Q_N
        try:
            self.A_inv = np.linalg.inv(A)
        except np.linalg.LinAlgError:
            raise FitError("the Laplace Hessian's nuisance block is singular") from None
        U_raw = np.asarray((FN_s.T @ FE).todense()).reshape(n, L, B).transpose(1, 0, 2)  # (L, n, B)
        H_raw = block_gram(FE, sign, L, B)  # (L, B, B) raw gene blocks of the data part
        T = self.T
        U = U_raw @ T  # (L, n, B) parameter scale
        Z = np.einsum("ij,ljb->lib", self.A_inv, U)  # A^-1 U_i
        C = T @ H_raw @ T + Q_blocks  # S's gene blocks
        self.U = U  # S's coupling of the nuisance terms to each gene
        D = 0.5 * (C + C.transpose(0, 2, 1)) - U.transpose(0, 2, 1) @ Z
        self.D = 0.5 * (D + D.transpose(0, 2, 1))
        D_inv = _inv_pd(self.D)
        if correct:
            corr = self._first_order(FE, sign, H_raw, U_raw, U, Z, D_inv)
            V = _eliminated_inverse(self.D, D_inv, corr)
        else:
            V = D_inv
        self.V, self.Z = V, Z
        self._X_local: list[sp.csr_matrix] | None = None
        # S^-1 at the nuisance columns, exactly (n solves): the nuisance block and its
        # coupling to every effect, where the genes' common modes sit.
        if correct:
            cols = self.solve(_unit_columns(self.size, nuis))
        else:  # a preconditioner: M's own
            cols = self.apply_m(_unit_columns(self.size, nuis))
        self.nuis_cols = cols  # (K P, n)
        self.nn = cols[nuis]  # (n, n)
        self.en = self._gather(cols)[1]  # (L, B, n): S^-1_{E, N}

    # ----------------------------------------------------------------- construction
    def _centring(self) -> np.ndarray:
        """Each gene's T_i (B, B): identity on theta, sigma_k (I - 11^T / n) on contrast k's guides, 0 on padding."""
        p, lay = self.problem, self.problem.layout
        K, D = p.n_contrasts, lay.n_days
        L, B = self.index.shape
        slots = (B - K * D) // K
        T = np.zeros((L, B, B))
        T[:, np.arange(K * D), np.arange(K * D)] = 1.0
        valid = self.mask[:, K * D :].reshape(L, K, slots)
        n_l = np.maximum(valid[:, 0].sum(axis=1), 1).astype(np.float64)
        for k in range(K):
            s = K * D + k * slots + np.arange(slots)
            v = valid[:, k].astype(np.float64)
            block = p.sigma_guide[k] * (np.eye(slots)[None] * v[:, :, None] - v[:, :, None] * v[:, None, :] / n_l[:, None, None])
            T[:, s[:, None], s[None, :]] = block
        return T

    def _square_root_rows(self) -> tuple[sp.csr_matrix, np.ndarray]:
        """Rows whose signed gram is the data part of S (raw columns): ``S - Q = T^T (F^T F - G^T G) T``.

        F: per cell and contrast a, ``(W~^1/2)[a, k] x_i`` in contrast k's columns (W~ the
        cell's curvature, less its clone's share for a clone of one cell); G: per
        multi-cell clone, its summed rows scaled by a square root of ``B_c^-1``
        (:meth:`LaplaceProblem.schur_hessian`).
        """
        p, curv = self.problem, self.curv
        K, P = p.n_contrasts, p.layout.size
        W = curv.W
        multi = None
        if curv.B_inv is not None:
            sizes = np.bincount(p.clusters, minlength=p.n_clusters)
            single = sizes[p.clusters] == 1
            adj = np.einsum("nij,njk,nkl->nil", W, curv.B_inv[p.clusters], W)
            W = W - np.where(single[:, None, None], adj, 0.0)
            multi = ~single
        root = _sym_sqrt(W)
        X = p.X.tocoo()
        N = p.n_cells
        r = (X.row[None, None, :] * K + np.arange(K)[:, None, None]) + np.zeros((K, K, 1), dtype=np.int64)
        c = X.col[None, None, :] + (np.arange(K) * P)[None, :, None] + np.zeros((K, 1, 1), dtype=np.int64)
        v = root[X.row][:, :, :].transpose(1, 2, 0) * X.data[None, None, :]  # (a, k, nnz)
        F = sp.csr_matrix((v.ravel(), (r.ravel(), c.ravel())), shape=(N * K, K * P))
        sign = np.ones(N * K)
        if multi is not None and multi.any():
            R = p._clone_rows(curv, multi)  # R[k][a]: (C, P)
            G = sp.vstack([sp.hstack([R[k][a] for k in range(K)]) for a in range(K)]).tocsr()
            keep = np.flatnonzero(np.diff(G.indptr) > 0)
            G = G[keep]
            F = sp.vstack([F, G]).tocsr()
            sign = np.concatenate([sign, -np.ones(G.shape[0])])
        return F, sign

    def _to_local(self, m: sp.csr_matrix) -> sp.csr_matrix:
        """``m`` (rows x K P) with its columns in the local order (nuisance, then gene blocks)."""
        m = m.tocsr()
        out = sp.csr_matrix((m.data.copy(), self.colmap[m.indices], m.indptr.copy()), shape=(m.shape[0], self.n + self.L * self.B))
        out.sort_indices()
        return out

    def _prior_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """The prior precision's nuisance block (n, n) and gene blocks (L, B, B) (padding: identity)."""
        p, lay = self.problem, self.problem.layout
        K, D, n0 = p.n_contrasts, lay.n_days, lay.theta.start
        Q_N = np.diag(p.prior_diag[:, :n0].ravel())
        L, B = self.index.shape
        Q = np.zeros((L, B, B))
        for k in range(K):
            s = k * D + np.arange(D)
            Q[:, s[:, None], s[None, :]] += p.rw_precision[k]
        u = np.arange(K * D, B)
        Q[:, u, u] = 1.0  # N(0, 1) on u; padding entries get the same unit diagonal
        return Q_N, Q

    def _first_order(self, FE, sign, H_raw, U_raw, U, Z, D_inv) -> np.ndarray:
        """``sum_{j != i} E_ij D_j^-1 E_ji`` per gene (L, B, B), E the coupling of Cs between genes."""
        L, B, n, T = self.L, self.B, self.n, self.T
        Dt = T @ D_inv @ T  # raw-scale D_j^-1
        DtU = Dt @ U_raw.transpose(0, 2, 1)  # (L, B, n)
        W_all = np.einsum("lib,lbc,ljc->ij", U, D_inv, U)
        coupling = _raw_coupling(FE, sign)
        out = np.empty((L, B, B))
        batch = max(1, int(GENE_BATCH_BYTES // (8 * B * L * B * 2)))
        for start in range(0, L, batch):
            g = np.arange(start, min(start + batch, L))
            cols = (g[:, None] * B + np.arange(B)[None, :]).ravel()
            # The batch's columns of H_raw, laid out (L, B, genes x B) so that every product
            # below reads them in place.
            Yt = coupling(cols)
            YDt = np.matmul(Dt, Yt.reshape(L, B, cols.size)).reshape(L * B, g.size, B)
            Yg = Yt.reshape(L * B, g.size, B)
            t1 = np.stack([Yg[:, i, :].T @ YDt[:, i, :] for i in range(g.size)])
            t2 = Yt.T @ DtU.reshape(L * B, n)
            Hg = H_raw[g]
            t1 -= Hg @ Dt[g] @ Hg
            t2 = t2.reshape(g.size, B, n) - Hg @ DtU[g]
            Tg, Zg, Ug = T[g], Z[g], U[g]
            t1 = Tg @ t1 @ Tg
            t2 = Tg @ t2  # (g, B, n)
            cross = t2 @ Zg
            rest = W_all[None] - Ug @ D_inv[g] @ Ug.transpose(0, 2, 1)
            corr = t1 - cross - cross.transpose(0, 2, 1) + Zg.transpose(0, 2, 1) @ rest @ Zg
            out[g] = 0.5 * (corr + corr.transpose(0, 2, 1))
        return out

    # ----------------------------------------------------------------- M and S
    def _gather(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K P, m) -> nuisance (n, m) and gene blocks (L, B, m) (padding 0)."""
        xl = np.zeros((self.n + self.L * self.B, x.shape[1]))
        xl[self.colmap] = x
        return xl[: self.n], xl[self.n :].reshape(self.L, self.B, -1)

    def _scatter(self, xn: np.ndarray, xe: np.ndarray) -> np.ndarray:
        xl = np.concatenate([xn, xe.reshape(self.L * self.B, -1)])
        return xl[self.colmap]

    def apply_m(self, r: np.ndarray) -> np.ndarray:
        """``M r`` for a (K P,) or (K P, m) array: the approximate ``S^-1``."""
        vec = r.ndim == 1
        rn, re = self._gather(r.reshape(r.shape[0], -1))
        ye = self.V @ (re - np.einsum("lib,im->lbm", self.Z, rn))
        yn = self.A_inv @ rn - np.einsum("lib,lbm->im", self.Z, ye)
        out = self._scatter(yn, ye)
        return out[:, 0] if vec else out

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """``S v`` for a (K P, m) array, exactly."""
        p = self.problem
        K, P = p.n_contrasts, p.layout.size
        m = v.shape[1]
        raw = np.stack([p.centre_rows(v[k * P : (k + 1) * P], k) for k in range(K)]).reshape(K * P, m)
        local = np.zeros((self.loc.shape[1], m))
        local[self.colmap] = raw
        t = self.loc @ local
        t *= self.sign[:, None]
        back = np.asarray(self.loc.T @ t)[self.colmap].reshape(K, P, m)
        out = np.stack([p.centre_rows(back[k], k) for k in range(K)]).reshape(K * P, m)
        return out + self._prior_times(v)

    def _prior_times(self, v: np.ndarray) -> np.ndarray:
        p, lay = self.problem, self.problem.layout
        K, P, D = p.n_contrasts, lay.size, lay.n_days
        out = p.prior_diag.ravel()[:, None] * v
        for k in range(K):
            th = v[k * P + lay.theta.start : k * P + lay.theta.stop].reshape(lay.n_genes, D, -1)
            out[k * P + lay.theta.start : k * P + lay.theta.stop] += np.einsum("de,lem->ldm", p.rw_precision[k], th).reshape(-1, v.shape[1])
        return out

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """``S^-1 rhs`` for a (K P,) or (K P, m) right-hand side, by preconditioned conjugate gradients."""
        vec = rhs.ndim == 1
        b = rhs.reshape(rhs.shape[0], -1).astype(np.float64)
        x = block_cg(self.matvec, b, self.apply_m, SOLVE_RTOL, SOLVE_MAX_ITER)
        if x is None:
            raise FitError("conjugate gradients with the Laplace Hessian did not converge; use posterior_method: meanfield")
        return x[:, 0] if vec else x

    def solver(self) -> Callable[[np.ndarray], np.ndarray]:
        """``M`` as a preconditioner for a nearby Hessian."""
        return self.apply_m

    # ----------------------------------------------------------------- what is read off S^-1
    def _genes_of(self, index: np.ndarray) -> np.ndarray:
        """The genes whose block index rows are ``index`` (rows of :func:`gene_blocks`' index)."""
        first = index[:, 0]
        lookup = np.full(self.size, -1)
        lookup[self.index[:, 0]] = np.arange(self.L)
        genes = lookup[first]
        if (genes < 0).any() or not np.array_equal(self.index[genes], index):
            raise ValueError("BlockAlgebra reads gene blocks only")
        return genes

    def blocks(self, index: np.ndarray) -> np.ndarray:
        """(L', B, B) gene blocks of ``S^-1`` for rows of the gene-block index."""
        return self.V[self._genes_of(index)].copy()

    def diagonal(self) -> np.ndarray:
        """The diagonal of ``M`` (K P,)."""
        return self._scatter(np.diag(self.nn)[:, None], np.einsum("lbb->lb", self.V)[:, :, None])[:, 0]

    def columns(self, cols: np.ndarray) -> np.ndarray:
        """(K P, m) columns of ``M``."""
        out = np.zeros((self.size, cols.size))
        where = np.full(self.size, -1)
        where[self.nuis] = np.arange(self.n)
        is_n = where[cols] >= 0
        out[:, is_n] = self.nuis_cols[:, where[cols[is_n]]]
        g, b = np.divmod(self.colmap[cols[~is_n]] - self.n, self.B)
        m = np.flatnonzero(~is_n)
        valid = self.mask[g]  # padding indices repeat a real column: leave them out
        out[self.index[g][valid], np.broadcast_to(m[:, None], valid.shape)[valid]] = self.V[g, :, b][valid]
        out[self.nuis[:, None], m[None, :]] = self.en[g, b, :].T
        return out

    def prior_trace(self) -> float:
        """``tr(M Q)``: the prior's share of the posterior."""
        p = self.problem
        n0 = p.layout.theta.start
        val = float((np.diag(self.nn) * p.prior_diag[:, :n0].ravel()).sum())
        return val + float(np.einsum("lbc,lcb,lb->", self.V, self.Q_blocks, self.mask.astype(np.float64)))

    def check(self, genes: np.ndarray, scores: list[sp.csr_matrix] | None) -> tuple[float, float]:
        """The largest relative error of the gene/day SEs of ``genes`` against exact ones: model-based and robust (NaN without ``scores``).

        The exact ones come from conjugate-gradient solves on those genes' theta columns:
        ``S^-1``'s theta block and, with the clone ``scores``, ``W^T (Q + J) W`` for W those columns.
        """
        p = self.problem
        K, P, D = p.n_contrasts, p.layout.size, p.layout.n_days
        KD = K * D
        cols = self.index[genes, :KD].ravel()
        W = self.solve(_unit_columns(self.size, cols))
        exact = np.stack([W[self.index[g, :KD]][:, i * KD : (i + 1) * KD] for i, g in enumerate(genes)])
        approx = self.V[genes][:, :KD, :KD]
        sd = np.sqrt(np.einsum("gii->gi", exact))
        model_err = float(np.abs(np.sqrt(np.einsum("gii->gi", approx)) / sd - 1).max())
        if scores is None:
            return model_err, float("nan")
        raw = [p.centre_rows(W[k * P : (k + 1) * P], k) for k in range(K)]
        g_w = sum(scores[k] @ raw[k] for k in range(K))  # (C, m): each clone's score against each column
        JW = np.concatenate([p.centre_rows(np.asarray(scores[k].T @ g_w), k) for k in range(K)])
        QJW = JW + self._prior_times(W)
        rob = np.stack([W[:, i * KD : (i + 1) * KD].T @ QJW[:, i * KD : (i + 1) * KD] for i in range(len(genes))])
        got = self.robust_blocks(scores, np.asarray(genes))[:, :KD, :KD]
        robust_err = float(np.abs(np.sqrt(np.einsum("gii->gi", got) / np.einsum("gii->gi", rob)) - 1).max())
        return model_err, robust_err

    # ----------------------------------------------------------------- clones
    def _x_local(self) -> list[sp.csr_matrix]:
        """Per contrast k, the raw design with its columns at contrast k's local positions."""
        if self._X_local is None:
            p = self.problem
            X = p.X.tocsr()
            P = p.layout.size
            self._X_local = [
                self._to_local(sp.csr_matrix((X.data, X.indices + k * P, X.indptr), shape=(X.shape[0], self.size)))
                for k in range(p.n_contrasts)
            ]
        return self._X_local

    def leverage_blocks(self, X: sp.csr_matrix, cells: np.ndarray, valid: np.ndarray, K: int) -> np.ndarray:
        """Within-clone blocks (n_cl, m K, m K) of ``X T M T^T X^T`` over (cell, contrast) (padding rows zero)."""
        n_cl, m = cells.shape
        n = self.n
        xl = self._x_local()
        flat = cells.ravel()
        rows = sp.vstack([x[flat] for x in xl]).tocsr()  # contrast-major: row k * (n_cl m) + c
        order = (np.arange(n_cl * m)[:, None] + np.arange(K)[None, :] * (n_cl * m)).ravel()  # (cell, contrast)
        rows = rows[order]
        rows = rows.multiply(np.repeat(valid.ravel(), K)[:, None]).tocsr()
        XN = rows[:, :n].toarray().reshape(n_cl, m * K, n)
        XE = rows[:, n:].tocsr()
        Vt = self._vt()
        phi = self._phi()  # (L B, n)
        XEphi = np.asarray(XE @ phi).reshape(n_cl, m * K, n)
        nn_part = XN @ self.nn @ XN.transpose(0, 2, 1)
        cross = XEphi @ XN.transpose(0, 2, 1)
        ee = (XE @ Vt @ XE.T).toarray().reshape(n_cl, m * K, n_cl, m * K)
        ee = ee[np.arange(n_cl), :, np.arange(n_cl), :]
        return nn_part + cross + cross.transpose(0, 2, 1) + ee

    def prepare_leverage(self) -> None:
        """Make what :meth:`leverage_blocks` reads (before a clone pass's threads start)."""
        self._x_local()
        self._vt()

    def release(self) -> None:
        """Let the clone pass's arrays go."""
        self._X_local = None
        self.__dict__.pop("_vt_cache", None)

    def _vt(self) -> sp.csr_matrix:
        """``T V T`` as a block-diagonal sparse (L B, L B) matrix (raw scale)."""
        if not hasattr(self, "_vt_cache"):
            blocks = self.T @ self.V @ self.T
            L, B = self.L, self.B
            r = (np.arange(L)[:, None, None] * B + np.arange(B)[None, :, None]) + np.zeros((1, 1, B), dtype=np.int64)
            c = (np.arange(L)[:, None, None] * B + np.arange(B)[None, None, :]) + np.zeros((1, B, 1), dtype=np.int64)
            self._vt_cache = sp.csr_matrix((blocks.ravel(), (r.ravel(), c.ravel())), shape=(L * B, L * B))
        return self._vt_cache

    def _phi(self) -> np.ndarray:
        """``T S^-1_{E,N}`` (L B, n): the effect-nuisance block of ``S^-1`` at raw scale."""
        return (self.T @ self.en).reshape(self.L * self.B, self.n)

    def robust_blocks(self, scores: list[sp.csr_matrix], genes: np.ndarray) -> np.ndarray:
        """Gene blocks of the robust ``S^-1 (Q + J) S^-1`` for J from the (C, P) raw clone scores per contrast.

        Each gene's block is the sandwich ``W_i^T (Q + J) W_i`` with ``W_i`` gene i's
        columns of ``S^-1`` to first order in the coupling, the same order as ``V_i``:
        ``V_i`` on the gene, ``-D_j^-1 E_ji V_i`` on every other gene j, and on the nuisance
        terms what the Schur complement gives from those (``-A^-1 U W_i``). These are the
        exact columns of the matrix that keeps gene i's coupling to every other gene and
        drops the other genes' couplings among themselves, so the sandwich stays consistent:
        the clones' scores pull on the other genes' effects, and through them on gene i's.
        Memory: a batch of genes' columns at a time (:data:`GENE_BATCH_BYTES`); time: the
        genes times the parameters, and the genes times the clones' scores' non-zeros.
        """
        J = self._to_local(sp.hstack(scores).tocsr())
        n, L, B, T, U, V = self.n, self.L, self.B, self.T, self.U, self.V
        JN, JE = J[:, :n].tocsr(), J[:, n:].tocsr()
        coupling = _raw_coupling(self.loc[:, n:], self.sign)
        D_inv = _inv_pd(self.D)
        U_flat = U.transpose(0, 2, 1).reshape(L * B, n)  # rows (j, b): U_j^T
        g_all = np.asarray(genes, dtype=np.int64)
        out = np.empty((g_all.size, B, B))
        per_gene = 8 * B * (5 * L * B + J.shape[0])
        batch = max(1, int(GENE_BATCH_BYTES // per_gene))
        for start in range(0, g_all.size, batch):
            g = g_all[start : start + batch]
            nb = g.size
            cols = (g[:, None] * B + np.arange(B)[None, :]).ravel()
            # E_ji = T_j H_ji T_i - U_j^T A^-1 U_i in the layout (L, B, nb, B): rows (j, a), columns (i, b)
            E = np.matmul(T, coupling(cols).reshape(L, B, nb * B)).reshape(L * B, nb, B)
            E = np.matmul(E.transpose(1, 0, 2), T[g]).transpose(1, 0, 2).reshape(L, B, nb, B)
            E -= (U_flat @ self.Z[g].transpose(1, 0, 2).reshape(n, nb * B)).reshape(L, B, nb, B)
            E[g, :, np.arange(nb), :] = 0.0
            y = np.matmul(D_inv, E.reshape(L, B, nb * B)).reshape(L * B, nb, B)
            W = -np.matmul(y.transpose(1, 0, 2), V[g]).transpose(1, 0, 2).reshape(L, B, nb, B)
            W[g, :, np.arange(nb), :] = V[g]
            del E, y
            W_flat = W.reshape(L * B, nb * B)
            WN = -self.A_inv @ (U_flat.T @ W_flat)  # (n, nb B)
            TW = np.matmul(T, W.reshape(L, B, nb * B)).reshape(L * B, nb * B)
            GW = (JN @ WN + _threaded_product(JE, TW)).reshape(-1, nb, B).transpose(1, 0, 2)  # (nb, C, B)
            del TW
            rob = np.matmul(GW.transpose(0, 2, 1), GW)
            WN3 = WN.reshape(n, nb, B).transpose(1, 0, 2)
            rob += np.matmul(WN3.transpose(0, 2, 1), self.Q_N @ WN3)
            QW = np.matmul(self.Q_blocks, W.reshape(L, B, nb * B)).reshape(L * B, nb, B).transpose(1, 0, 2)
            rob += np.matmul(W_flat.reshape(L * B, nb, B).transpose(1, 2, 0), QW)
            out[start : start + nb] = 0.5 * (rob + rob.transpose(0, 2, 1))
        return out


def _raw_coupling(FE: sp.csr_matrix, sign: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``cols -> (FE^T diag(sign) FE)[:, cols]`` as a dense array: the data part of S's raw gene columns ``cols``."""
    FE_c = FE.tocsc()
    FE_s = FE.multiply(sign[:, None]).tocsr()
    return lambda cols: (FE_s.T @ FE_c[:, cols]).toarray()


def _threaded_product(a: sp.csr_matrix, x: np.ndarray) -> np.ndarray:
    """``a @ x`` for a sparse ``a`` and a dense ``x``, the rows of ``a`` split over the cores (the products release the GIL)."""
    out = np.empty((a.shape[0], x.shape[1]))
    bounds = np.linspace(0, a.shape[0], max(1, min(a.shape[0] // 1024, 8)) + 1).astype(np.int64)

    def part(i: int) -> None:
        out[bounds[i] : bounds[i + 1]] = a[bounds[i] : bounds[i + 1]] @ x

    thread_map(part, range(bounds.size - 1))
    return out


def _unit_columns(size: int, cols: np.ndarray) -> np.ndarray:
    e = np.zeros((size, cols.size))
    e[cols, np.arange(cols.size)] = 1.0
    return e


#: Relative size of the first-order term (its largest eigenvalue against the gene's own
#: block) above which a gene's block is taken as the two-term series instead of the Schur form.
SCHUR_FORM_MAX = 0.5


def _eliminated_inverse(D: np.ndarray, D_inv: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """Each gene's ``(D_i - corr_i)^-1``, or ``D_i^-1 + D_i^-1 corr_i D_i^-1`` where ``corr_i`` is large against ``D_i``.

    The two agree to first order in the coupling. Where a gene shares much of its cells
    with others (few cells per gene), the first-order term can reach ``D_i`` itself and
    the Schur form loses positive definiteness; the series keeps it (``corr_i`` is
    positive semi-definite), and the fit's check reports how far either is from exact.
    """
    chol = np.linalg.cholesky(D)
    eye = np.broadcast_to(np.eye(D.shape[-1]), D.shape)
    ci = np.linalg.solve(chol, eye)
    rel = np.linalg.eigvalsh(ci @ corr @ ci.transpose(0, 2, 1))[:, -1]
    large = rel > SCHUR_FORM_MAX
    out = np.empty_like(D)
    if (~large).any():
        out[~large] = _inv_pd(D[~large] - corr[~large])
    if large.any():
        log.info("gene blocks: %d of %d genes share so much of their cells that their blocks take the two-term series", int(large.sum()), large.size)
        out[large] = D_inv[large] + D_inv[large] @ corr[large] @ D_inv[large]
    return out


def _inv_pd(a: np.ndarray) -> np.ndarray:
    """Inverses of a batch of symmetric positive definite matrices (a one-line error where one is not)."""
    try:
        c = np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        raise FitError("a gene block of the Laplace Hessian is not positive definite; use posterior_method: meanfield") from None
    eye = np.broadcast_to(np.eye(a.shape[-1]), a.shape)
    ci = np.linalg.solve(c, eye)
    return ci.transpose(0, 2, 1) @ ci


def block_cg(
    matvec: Callable[[np.ndarray], np.ndarray],
    rhs: np.ndarray,
    precondition: Callable[[np.ndarray], np.ndarray],
    rtol: float,
    max_iter: int,
) -> np.ndarray | None:
    """Preconditioned conjugate gradients on every column of ``rhs`` (K P, m) at once (each its own step sizes).

    Returns None when a column is not solved to ``rtol`` within ``max_iter`` iterations.
    """
    bnorm = np.linalg.norm(rhs, axis=0)
    x = precondition(rhs)
    r = rhs - matvec(x)
    z = precondition(r)
    p = z.copy()
    rz = (r * z).sum(axis=0)
    done = np.linalg.norm(r, axis=0) <= rtol * bnorm
    for _ in range(max_iter):
        if done.all():
            return x
        q = matvec(p)
        pq = (p * q).sum(axis=0)
        alpha = np.where(done | (pq <= 0), 0.0, rz / np.where(pq > 0, pq, 1.0))
        x += alpha * p
        r -= alpha * q
        z = precondition(r)
        rz_new = (r * z).sum(axis=0)
        beta = np.where(done, 0.0, rz_new / np.where(rz > 0, rz, 1.0))
        p = z + beta * p
        rz = rz_new
        done = done | (np.linalg.norm(r, axis=0) <= rtol * bnorm)
    return x if done.all() else None
