"""Clone-level quantities at the mode: leverage, the clone effects' covariance, CR2 and its degrees of freedom.

One pass over the clones (:func:`clone_pass`, in chunks of clones of similar size) reads
``S^-1`` at the columns each clone's cells touch and gives

* the full posterior covariance of each clone's effect (with psi's uncertainty), which
  the estimate of the clone covariance uses (:mod:`fatebias_core.model.empirical_bayes`);
* each cell's leverage in the joint fit of (psi, clone effects), the share of its
  residual the fit absorbed, which the Pearson dispersion corrects for;
* for the cluster-robust covariance, each clone's residuals adjusted for its leverage
  (Bell and McCaffrey's CR2) under the random-effect working model, and the factors
  behind the Bell-McCaffrey degrees of freedom of every effect (:func:`bm_degrees_of_freedom`).

Working model. With the clone effects integrated out, the linearised residuals ``e_c``
of clone c's cells have precision ``M_c = W_c - W_c E (B_c)^-1 E^T W_c`` (``W_c`` its
cells' curvature, ``E`` the stacking of identities, ``B_c = E^T W_c E + Sigma_b^-1``),
and the residuals at the joint mode are ``r_c = M_c e_c``; psi's score from the clone is
``X_c^T r_c``. Standardised, ``M_c^1/2 e_c`` has covariance ``I - A_c`` with
``A_c = M_c^1/2 X_c S^-1 X_c^T M_c^1/2`` (the clone's leverage), so the CR2 score is
``X_c^T M_c^1/2 (I - A_c)^-1/2 M_c^+1/2 r_c``. Without clone effects ``M_c = W_c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.stats import norm
from scipy.stats import t as student_t

from fatebias_core.mash.blas_threads import blas_threads_for
from fatebias_core.model.algebra import DenseAlgebra, PosteriorAlgebra
from fatebias_core.model.design import thread_map
from fatebias_core.model.glmm import LaplaceProblem, LaplaceResult

LEVERAGE_CAP = 1.0 - 1e-6


@dataclass
class ClonePass:
    """What one pass over the clones at the mode found (see the module docstring).

    Attributes
    ----------
    beta_cov
        (C, K, K) posterior covariance of each clone's effect, psi's uncertainty included
        (None without clone effects).
    cell_leverage
        (N,) share of each cell's residual absorbed by the joint fit (its leverage's trace
        over the contrasts).
    adjusted
        (N, K) CR2-adjusted residuals (None unless asked for).
    factors
        Per chunk of clones, ``(cells, valid, M^1/2)`` (n_cl, m K, m K): a clone's
        model-based share of an effect's variance is the squared norm of ``M_c^1/2``
        times its cells' linear predictors' change (None unless asked for).
    blocks
        Per chunk of clones, the within-clone blocks of ``X S^-1 X^T``
        (:func:`clone_leverage_blocks`), kept when asked for so that a second pass at
        the same mode reuses them (None otherwise).
    """

    beta_cov: np.ndarray | None
    cell_leverage: np.ndarray
    adjusted: np.ndarray | None = None
    factors: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    blocks: list[np.ndarray] | None = None


def padded_clusters(cluster: np.ndarray, max_cells: int, cell_nnz: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
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
    by_size = by_size[sizes[by_size] > 0]
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


def clone_leverage_blocks(X: sp.csr_matrix, ceff: np.ndarray, cells: np.ndarray, valid: np.ndarray, K: int) -> np.ndarray:
    """Within-clone blocks of ``X S^-1 X^T`` over (cell, contrast), from the raw design rows.

    Parameters
    ----------
    X
        (N, P) raw design (one contrast's columns).
    ceff
        (K P, K P) covariance of the effective parameters (:meth:`DenseAlgebra.effective`).
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
    s = max(int(counts.max(initial=0)), 1)
    cols = np.zeros((n_cl, s), dtype=np.int64)
    cols[keys // P, pos] = keys % P
    A = np.zeros((n_cl, m, s))
    np.add.at(A, (clone, row % m, pos[inv]), val)
    out = np.empty((n_cl, m, K, m, K))
    upper = np.triu_indices(s)
    for k in range(K):
        for j in range(k, K):
            if j == k:  # a symmetric block: read its upper triangle only (the reads are the pass's cost)
                vals = ceff[k * P + cols[:, upper[0]], k * P + cols[:, upper[1]]]
                sub_cov = np.empty((n_cl, s, s))
                sub_cov[:, upper[0], upper[1]] = vals
                sub_cov[:, upper[1], upper[0]] = vals
            else:
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


def _sym_sqrt(a: np.ndarray, inverse: bool = False, rtol: float = 1e-10) -> np.ndarray:
    """Symmetric square root of a batch of PSD matrices (with ``inverse``: of the pseudo-inverse)."""
    lam, vec = np.linalg.eigh(0.5 * (a + a.transpose(0, 2, 1)))
    floor = rtol * np.maximum(lam.max(axis=1, keepdims=True), 1e-300)
    pos = lam > floor
    root = np.sqrt(np.where(pos, lam, 0.0))
    if inverse:
        root = np.where(pos, 1.0 / np.where(pos, root, 1.0), 0.0)
    return np.einsum("nij,nj,nkj->nik", vec, root, vec)


def clone_pass(
    problem: LaplaceProblem,
    res: LaplaceResult,
    algebra: PosteriorAlgebra,
    robust: bool,
    max_cells: int = 512,
    keep_blocks: bool = False,
    blocks: list[np.ndarray] | None = None,
) -> ClonePass:
    """One pass over the clones at the mode ``res`` (see the module docstring and :class:`ClonePass`).

    ``keep_blocks`` keeps each chunk's leverage blocks in the result; ``blocks`` (those
    of an earlier pass at the same mode and ``max_cells``) are used instead of reading
    them off ``S^-1`` again, the pass's costliest part.
    """
    K = problem.n_contrasts
    curv = res.curvature if res.curvature is not None else problem.curvature(res.pi)
    W = curv.W
    resid = problem.residuals(res.pi)
    clusters = problem.clusters
    X = problem.X.tocsr()
    B_inv = curv.B_inv
    n = problem.n_cells
    leverage = np.zeros(n)
    beta_cov = None if B_inv is None else np.zeros_like(B_inv)
    adjusted = np.empty_like(resid) if robust else None
    factors: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = [] if robust else None

    def one(item: tuple[int, tuple[np.ndarray, np.ndarray]]) -> tuple:
        i, (cells, valid) = item
        n_cl, m = cells.shape
        flat = cells.ravel()
        lev = algebra.leverage_blocks(X, cells, valid, K) if blocks is None else blocks[i]  # (n_cl, mK, mK)
        w_cells = np.where(valid[:, :, None, None], W[flat].reshape(n_cl, m, K, K), 0.0)
        Wc = _block_diag(w_cells)
        diag = np.arange(m)
        var_eta = lev.reshape(n_cl, m, K, m, K)[:, diag, :, diag, :].transpose(1, 0, 2, 3)  # (n_cl, m, K, K)
        M = Wc
        v_psi = None
        if B_inv is not None:
            binv = B_inv[clusters[cells[:, 0]]]  # (n_cl, K, K)
            WE = w_cells.reshape(n_cl, m * K, K)  # the clone's cells' W, stacked
            LWE = lev @ WE  # (n_cl, mK, K): x_i S^-1 H_psi,b for every cell
            v_psi = WE.transpose(0, 2, 1) @ LWE  # H_b,psi S^-1 H_psi,b
            cross = (LWE @ binv).reshape(n_cl, m, K, K)  # x_i S^-1 H_psi,b B^-1
            var_eta = var_eta - cross - cross.transpose(0, 1, 3, 2)
            M = Wc - WE @ binv @ WE.transpose(0, 2, 1)
        h_partial = np.einsum("cmkj,cmjk->cm", w_cells, var_eta)
        if not robust:
            return h_partial, v_psi, None, None, lev
        m_half = _sym_sqrt(M)
        m_ihalf = _sym_sqrt(M, inverse=True)
        a = m_half @ lev @ m_half
        lam, vec = np.linalg.eigh(0.5 * (a + a.transpose(0, 2, 1)))
        lam = np.clip(lam, 0.0, LEVERAGE_CAP)
        inv_root = np.einsum("nij,nj,nkj->nik", vec, 1.0 / np.sqrt(1.0 - lam), vec)
        r = np.where(np.repeat(valid, K, axis=1), resid[flat].reshape(n_cl, m * K), 0.0)
        adj = np.einsum("cij,cj->ci", m_half @ inv_root @ m_ihalf, r).reshape(n_cl, m, K)
        return h_partial, v_psi, adj, m_half, lev

    chunks = padded_clusters(clusters, max_cells, np.diff(X.indptr))
    if blocks is not None and len(blocks) != len(chunks):
        raise ValueError("the leverage blocks are not those of this problem's clones")
    kept: list[np.ndarray] | None = [] if keep_blocks else None
    if blocks is None:
        algebra.prepare_leverage()
    passes = thread_map(one, list(enumerate(chunks)))
    algebra.release()
    for (cells, valid), (h, v_psi, adj, f, lev) in zip(chunks, passes, strict=True):
        if kept is not None:
            kept.append(lev)
        leverage[cells[valid]] = h[valid]
        if v_psi is not None:
            beta_cov[clusters[cells[:, 0]]] = v_psi
        if robust:
            adjusted[cells[valid]] = adj[valid]
            factors.append((cells, valid, f))
    if B_inv is not None:
        beta_cov = B_inv + B_inv @ beta_cov @ B_inv  # full posterior covariance of each clone's effect
        # the clone effect's own variance in each cell's linear predictor: tr(W_i V_c)
        leverage += np.einsum("nkj,njk->n", W, beta_cov[clusters])
    return ClonePass(beta_cov=beta_cov, cell_leverage=leverage / K, adjusted=adjusted, factors=factors, blocks=kept)


def cluster_scores(problem: LaplaceProblem, resid: np.ndarray) -> list[sp.csr_matrix]:
    """Per contrast, the (C, P) raw scores ``sum over a clone's cells of resid_ik x_i`` (centre with ``centre_rows``)."""
    ind = problem.cluster_of
    return [(ind.multiply(resid[:, k][None, :]) @ problem.X).tocsr() for k in range(problem.n_contrasts)]


def robust_blocks(problem: LaplaceProblem, algebra: PosteriorAlgebra, adjusted: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Per-gene blocks (L, B, B) of the cluster-robust covariance ``S^-1 (Q + J) S^-1``.

    J is the sum over clones of the outer product of their CR2-adjusted scores. Where
    the working model holds, ``E[J] = S - Q`` and this is ``S^-1``; where a clone's cells
    move together more than it says, J is larger and so are the intervals. Keeping the
    prior precision Q in the middle keeps weakly informed parameters at their prior
    spread instead of shrinking their variance to zero, as a bare sandwich would.
    """
    scores = cluster_scores(problem, adjusted)
    if not isinstance(algebra, DenseAlgebra):
        return algebra.robust_blocks(scores, algebra._genes_of(index))
    cols = [s.tocsc() for s in scores]
    rows = [s.T.tocsr() for s in scores]
    K = problem.n_contrasts
    pairs = [(k, j) for k in range(K) for j in range(k, K)]
    raw = dict(zip(pairs, thread_map(lambda kj: rows[kj[0]] @ cols[kj[1]], pairs), strict=True))  # products release the GIL
    J = problem.symmetric_blocks(lambda k, j: raw[(k, j)])
    rows = np.unique(index)
    if 2 * rows.size < algebra.size:  # a few genes' blocks (the NTC check's pseudo-genes): only their rows
        with blas_threads_for(algebra.size):
            left = algebra.inv[rows] @ problem.add_prior_hessian(J)
        return _blocks_of_product(left, algebra.inv, index, np.searchsorted(rows, index))
    with blas_threads_for(algebra.size):  # one large product: every thread
        left = algebra.inv @ problem.add_prior_hessian(J)
    return _blocks_of_product(left, algebra.inv, index)


def _blocks_of_product(
    left: np.ndarray, right: np.ndarray, index: np.ndarray, left_index: np.ndarray | None = None, genes: int = 32
) -> np.ndarray:
    """The symmetrised diagonal blocks ``(left @ right)[index_l, index_l]`` of a symmetric ``right``, without the full product.

    ``left_index`` gives the rows of ``left`` that hold rows ``index`` of the product
    (default ``index``: ``left`` has every row).
    """
    L, B = index.shape
    left_index = index if left_index is None else left_index
    out = np.empty((L, B, B))
    for start in range(0, L, genes):
        idx = index[start : start + genes]
        # right is symmetric: its rows are its columns, and rows are gathered contiguously
        blk = np.matmul(left[left_index[start : start + genes]], right[idx].transpose(0, 2, 1))  # (g, B, P) @ (g, P, B)
        out[start : start + genes] = 0.5 * (blk + blk.transpose(0, 2, 1))
    return out


def bm_degrees_of_freedom(
    problem: LaplaceProblem, algebra: PosteriorAlgebra, cp: ClonePass, effects: np.ndarray, chunk: int = 128
) -> np.ndarray:
    """Bell-McCaffrey degrees of freedom of the cluster-robust variance of each effect.

    For an effect ``l`` (an index into the parameters) the robust variance is
    ``v = h^T Q h + sum_c g_c^2`` with ``h = S^-1 e_l`` and ``g_c`` clone c's CR2-adjusted
    pull on it, a quadratic form in the residuals. Under the working model, CR2 makes
    each clone's expected share ``E[g_c^2] = mu_c = ||M_c^1/2 X_c h||^2`` (its
    model-based share of the variance) and ``E[v] = S^-1_ll``; the variance of ``v`` is
    ``2 sum_c mu_c^2`` plus terms in the leverage between different clones, which are
    dropped. The Satterthwaite degrees of freedom are then ``(S^-1_ll)^2 / sum_c mu_c^2``:
    the effective number of clones behind the effect, weighted by what each contributes
    under the model rather than by its realised residuals (which would make the
    variance's uncertainty depend on the noise it is meant to describe). Few clones
    behind an effect, or one clone dominating it, give few.
    """
    K, P = problem.n_contrasts, problem.layout.size
    X = problem.X
    diag = algebra.diagonal()[effects]
    denom = np.zeros(effects.size)

    def part(start: int) -> np.ndarray:
        cols = effects[start : start + chunk]
        H = algebra.columns(cols)  # (K P, e)
        Y = [np.asarray(X @ problem.centre_rows(H[k * P : (k + 1) * P], k)) for k in range(K)]  # K x (N, e)
        out = np.zeros(cols.size)
        for cells, valid, f in cp.factors:
            n_cl, m = cells.shape
            flat = cells.ravel()
            yc = np.stack([y[flat] for y in Y], axis=1).reshape(n_cl, m * K, cols.size)  # a cell's contrasts together
            yc[~np.repeat(valid, K, axis=1)] = 0.0
            mu = ((f @ yc) ** 2).sum(axis=1)
            out += (mu**2).sum(axis=0)
        return out

    for start, val in zip(range(0, effects.size, chunk), thread_map(part, range(0, effects.size, chunk)), strict=True):
        denom[start : start + chunk] = val
    return diag**2 / np.maximum(denom, 1e-300)


def t_scale(df: np.ndarray, tail: float) -> np.ndarray:
    """Factor that widens a normal interval to the Student-t one with ``df`` degrees of freedom at the one-sided ``tail``.

    ``tail`` is the tail probability the calls use (e.g. 0.05 / D for an any-day call at
    lfsr 0.05): the SD is scaled so that the normal's quantile there equals the t's.
    """
    q = 1.0 - tail
    return student_t.ppf(q, np.maximum(df, 1.0)) / norm.ppf(q)
