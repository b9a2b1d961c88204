"""Mixture weights as R's mixsqp 0.3 computes them for ashr, step for step.

:func:`fatebias_core.mash.mixture_weights.mixsqp` iterates to the optimum. R's mixsqp
(Kim, Carbonetto, Stephens & Anitescu 2020) stops earlier in one situation: its
convergence test looks at the dual residual of the *non-zero* weights only
(``1 + min(g[x > 0]) >= -convtol``), so it can stop with a component left at zero that
would raise the likelihood. Where the likelihood is nearly flat, as with the many
overlapping components of a half-uniform mixture truncated to the data's range,
that early stop moves posterior means by up to ~1e-3. To give ashr's answer there,
:func:`mixsqp_r` follows mixsqp's published algorithm with ashr's settings:

* the likelihood rows scaled to a maximum of 1, the row weights to a sum of 1, and
  ``eps`` (ashr: 1e-6) added to every (L x)_i;
* ``numiter_em`` EM updates from equal weights (ashr: 20);
* then up to ``maxiter`` SQP iterations, each one EM update, weights at or below 1e-8
  set to zero, the convergence test above (tolerance 1e-8), the quadratic subproblem
  solved by at most ``min(20, m + 1)`` active-set iterations started from the current
  weights (Cholesky with an added multiple of the identity, Nocedal & Wright
  Algorithm 3.3, solved as Armadillo's ``solve()`` does), and a backtracking line
  search (sufficient decrease 0.01, step factor 0.75, minimum step 1e-8).

It does not use mixsqp's truncated-SVD approximation of L, which mixsqp applies only
when L is numerically low rank. The subproblems are ill-conditioned where this matters,
so rounding can make a weight of ~1e-3 land on one of two nearly identical components
rather than the other; posterior summaries are insensitive to that split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_solve, lapack

from fatebias_core.errors import FitError

from .blas_threads import single_threaded_blas
from .parallel import map_blocks, row_slices

CONVTOL_SQP = 1e-8
CONVTOL_ACTIVESET = 1e-10
ZERO_THRESHOLD_SOLUTION = 1e-8
ZERO_THRESHOLD_SEARCHDIR = 1e-14
SUFFDECR = 0.01
STEPSIZE_REDUCE = 0.75
MIN_STEPSIZE = 1e-8
IDENTITY_CONTRIB_INCREASE = 10.0

#: Bytes of L per row block: the EM update's temporaries stay in cache, and a small
#: problem (the reference cases) is one block, computed exactly as one matrix.
BLOCK_BYTES = 1 << 22


@dataclass(frozen=True)
class MixsqpRResult:
    """Outcome of :func:`mixsqp_r`.

    Attributes
    ----------
    x
        Mixture weights (non-negative, summing to 1).
    n_iter
        SQP iterations run.
    converged
        Whether mixsqp's convergence test was met within ``maxiter``.
    """

    x: np.ndarray
    n_iter: int
    converged: bool


def mixsqp_r(
    L: np.ndarray,
    w: np.ndarray | None = None,
    eps: float = 1e-6,
    numiter_em: int = 20,
    maxiter: int = 1000,
    overwrite: bool = False,
) -> MixsqpRResult:
    """Maximum-likelihood mixture weights the way ashr's call to R mixsqp finds them.

    Minimises ``-sum_i w_i log((L x)_i + eps)`` over the simplex by mixsqp's EM warm
    start and SQP iterations (see the module documentation).

    Parameters
    ----------
    L
        (n, m) non-negative likelihoods, every row with a positive entry.
    w
        (n,) non-negative row weights; equal when ``None``.
    eps
        Added to each (L x)_i (ashr passes 1e-6).
    numiter_em
        EM updates before the SQP iterations (ashr passes 20).
    maxiter
        Maximum SQP iterations (mixsqp's default 1000).
    overwrite
        Scale the rows of ``L`` in place (the caller's copy is not needed afterwards).
    """
    L = np.asarray(L, dtype=np.float64)
    n, m = L.shape
    # sum and min instead of elementwise masks: no n x m temporaries
    if not np.isfinite(L.sum()) or L.min() < 0:
        raise FitError("mixture likelihood matrix has negative or non-finite entries")
    rowmax = L.max(axis=1)
    if not (rowmax > 0).all():
        raise FitError("mixture likelihood matrix has a row of zeros: some unit fits no component")
    if m == 1:
        return MixsqpRResult(np.ones(1), 0, True)
    L = np.divide(L, rowmax[:, None], out=L if overwrite else None)
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    w = w / w.sum()
    e = eps  # mixsqp: eps - min(0, min(L)), and L >= 0 here
    x = np.full(m, 1.0 / m)
    B = _Blocks(L)
    with single_threaded_blas():
        for _ in range(numiter_em):
            x = B.em_update(w, x)
        converged = False
        it = 0
        while it < maxiter:
            it += 1
            x = B.em_update(w, x)
            nz = x > ZERO_THRESHOLD_SOLUTION
            x = np.where(nz, x, 0.0)
            u = B.matvec(x) + e
            f = -float(w @ np.log(u))
            g = -B.rmatvec(w / u)
            H = B.gram(np.sqrt(w) / u)
            if 1.0 + g[nz].min() >= -CONVTOL_SQP:
                converged = True
                break
            y = _active_set_qp(H, g - H @ x + 1.0, x.copy(), min(20, m + 1))
            x = _line_search(f, B, w, g, x, y, e)
    return MixsqpRResult(x / x.sum(), it, converged)


class _Blocks:
    """mixsqp's products with L, by blocks of rows (on threads), sums added in block order."""

    def __init__(self, L: np.ndarray):
        self.L = L
        n, m = L.shape
        self.blocks = row_slices(n, max(1024, BLOCK_BYTES // (8 * m)))

    def _sum(self, fn: Callable[[slice], np.ndarray]) -> np.ndarray:
        parts = map_blocks(fn, self.blocks)
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total

    def em_update(self, w: np.ndarray, x: np.ndarray) -> np.ndarray:
        """One EM update of mixsqp (with its 1e-15 safeguards)."""
        xe = (x + 1e-15)[None, :]

        def block(b: slice) -> np.ndarray:
            P = self.L[b] * xe
            P /= P.max(axis=1, keepdims=True)
            P += 1e-15
            P /= P.sum(axis=1, keepdims=True)
            return P.T @ w[b]

        return self._sum(block)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """L x."""
        return np.concatenate(map_blocks(lambda b: self.L[b] @ x, self.blocks))

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        """L' v."""
        return self._sum(lambda b: self.L[b].T @ v[b])

    def gram(self, scale: np.ndarray) -> np.ndarray:
        """Z'Z with Z = diag(scale) L."""

        def block(b: slice) -> np.ndarray:
            Z = self.L[b] * scale[b, None]
            return Z.T @ Z

        return self._sum(block)


def _feasible_step(x: np.ndarray, p: np.ndarray) -> tuple[int, float]:
    """The largest step in [0, 1] keeping x + a p >= 0, and the blocking coordinate (-1: none)."""
    neg = np.flatnonzero(p < 0)
    if neg.size == 0:
        return -1, 1.0
    t = -x[neg] / p[neg]
    j = int(np.argmin(t))
    return int(neg[j]), float(min(t[j], 1.0))


def _search_direction(H: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve (H + a I) p = -b, a the smallest of 0, 1e-15, 1e-14, ... that makes it positive definite.

    As Armadillo's ``solve()`` does for a symmetric positive definite matrix: Cholesky
    solve, unless LAPACK's estimate of the reciprocal condition number is below machine
    precision, in which case the minimum-norm least-squares solution (``gelsd``, cutoff
    max(m, n) * eps) is taken.
    """
    k = H.shape[0]
    d = float(np.diag(H).min())
    a = 0.0 if d > 1e-15 else 1e-15 - d
    eye = np.eye(k)
    while True:
        B = H + a * eye
        if a * IDENTITY_CONTRIB_INCREASE > 1e15:
            break
        c, info = lapack.dpotrf(B, lower=0)
        if info == 0:
            break
        a = 1e-15 if a <= 0 else a * IDENTITY_CONTRIB_INCREASE
    return _arma_solve(B, -b)


def _guess_sympd(A: np.ndarray) -> bool:
    """Armadillo's ``sym_helper::guess_sympd`` (used by ``solve()`` for 16 x 16 and larger)."""
    n = A.shape[0]
    if n < 16:
        return False
    d = np.diag(A)
    if (d <= 0).any():
        return False
    iu = np.triu_indices(n, 1)
    aij, aji = A[iu[1], iu[0]], A[iu]  # below and above the diagonal
    absmax = np.maximum(np.abs(aij), np.abs(aji))
    delta = np.abs(aij - aji)
    tol = 100 * np.finfo(float).eps
    if (np.abs(aij) >= d.max()).any() or ((delta > tol) & (delta > absmax * tol)).any():
        return False
    return not (2 * np.abs(aij) >= d[iu[0]] + d[iu[1]]).any()


def _arma_solve(B: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Armadillo's default ``solve(B, rhs)`` for a square B.

    Cholesky (``guess_sympd``) or LU, with LAPACK's estimate of the reciprocal 1-norm
    condition number; below machine precision, the minimum-norm least-squares solution
    (``gelsd``, cutoff max(m, n) * eps).
    """
    eps = np.finfo(float).eps
    anorm = float(np.abs(B).sum(axis=0).max())
    if _guess_sympd(B):
        c, info = lapack.dpotrf(B, lower=0)
        if info == 0:
            rcond, _ = lapack.dpocon(c, anorm)
            if rcond >= eps:
                return cho_solve((c, False), rhs)
            return np.linalg.lstsq(B, rhs, rcond=None)[0]
    lu, piv, info = lapack.dgetrf(B)
    if info == 0:
        rcond, _ = lapack.dgecon(lu, anorm, norm="1")
        if rcond >= eps:
            return lapack.dgetrs(lu, piv, rhs)[0]
    return np.linalg.lstsq(B, rhs, rcond=None)[0]


def _active_set_qp(H: np.ndarray, c: np.ndarray, y: np.ndarray, maxiter: int) -> np.ndarray:
    """mixsqp's active-set method for min 0.5 y'Hy + c'y, y >= 0, from y (at most ``maxiter`` steps)."""
    free = y > 0
    for _ in range(maxiter):
        F = np.flatnonzero(free)
        W = np.flatnonzero(~free)
        y[W] = 0.0
        b = c.copy()
        b[F] += H[np.ix_(F, F)] @ y[F]
        p = np.zeros_like(y)
        p[F] = _search_direction(H[np.ix_(F, F)], b[F])
        if np.abs(p).max() <= ZERO_THRESHOLD_SEARCHDIR:
            b = c + H @ y
            if W.size == 0 or b[W].min() >= -CONVTOL_ACTIVESET:
                break
            free[W[int(np.argmin(b[W]))]] = True
        else:
            k, a = _feasible_step(y, p)
            add = k >= 0 and a < 1 and F.size > 1
            y = y + a * p
            y[y < 0] = 0.0
            if add:
                free[k] = False
                y[k] = 0.0
    return y


def _line_search(
    f: float, L: _Blocks, w: np.ndarray, g: np.ndarray, x: np.ndarray, y: np.ndarray, e: float
) -> np.ndarray:
    """mixsqp's backtracking line search from x towards y."""
    _, afeas = _feasible_step(x, y - x)
    if afeas <= MIN_STEPSIZE:
        return afeas * y + (1 - afeas) * x
    a = min(1.0, afeas)
    slope = float((y - x) @ (g + 1.0))
    while True:
        xn = a * y + (1 - a) * x
        u = L.matvec(xn) + e
        if (u > 0).all():
            fn = -float(w @ np.log(u))
            if xn.min() >= 0 and fn + xn.sum() <= f + x.sum() + SUFFDECR * a * slope:
                return xn
        if a * STEPSIZE_REDUCE < MIN_STEPSIZE:
            xn = MIN_STEPSIZE * y + (1 - MIN_STEPSIZE) * x
            return x if xn.min() < 0 else xn
        a *= STEPSIZE_REDUCE
