"""Mixture weights by penalised maximum likelihood: mix-SQP.

mashr and ashr call mixsqp (Kim, Carbonetto, Stephens & Anitescu 2020, J. Comput.
Graph. Stat. 29:261-273) on

    minimise  f(x) = -sum_i w_i log((L x)_i) + sum_k x_k   over x >= 0,

whose minimiser lies on the simplex and is the maximum-likelihood estimate of the
mixture proportions (w normalised to sum to 1). As in mixsqp: a few EM updates as a
warm start, then sequential quadratic programming: each iteration minimises the
quadratic model of f under x >= 0 with a primal active-set method and takes a
backtracking line search step. The quadratic model uses the full likelihood matrix
(mixsqp may use a truncated SVD of it); the convergence test is on the exact
gradient. The problem is convex and its optimum unique in L x, so this reproduces R's
answer up to mixsqp's own tolerance (KKT residual 1e-8); it iterates to 1e-10.

The penalised problem of mashr/ashr (a Dirichlet "prior" on the proportions) is the
same problem with one extra row e_k of weight prior_k - 1 per component
(:func:`fit_mixture_weights`), exactly as ashr's ``mixSQP`` wrapper builds it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve
from scipy.linalg.blas import dsyrk

from fatebias_core.errors import FitError

from .blas_threads import single_threaded_blas
from .parallel import map_blocks, row_slices

#: Bytes of the likelihood matrix per row block of the products (stays in cache between
#: the two products of an EM step).
BLOCK_BYTES = 1 << 21


@dataclass(frozen=True)
class MixtureWeightsResult:
    """Outcome of :func:`mixsqp`.

    Attributes
    ----------
    x
        The mixture weights (non-negative, summing to 1).
    objective
        f(x) with the row weights normalised.
    n_iter
        SQP iterations.
    kkt_residual
        Largest violation of the optimality conditions at ``x``.
    converged
        Whether ``kkt_residual <= tol``.
    """

    x: np.ndarray
    objective: float
    n_iter: int
    kkt_residual: float
    converged: bool


def mixsqp(
    L: np.ndarray,
    w: np.ndarray | None = None,
    x0: np.ndarray | None = None,
    penalty: np.ndarray | None = None,
    tol: float = 1e-10,
    maxiter: int = 1000,
    numiter_em: int = 10,
) -> MixtureWeightsResult:
    """Maximum-likelihood mixture weights for a likelihood matrix.

    Minimises ``-sum_i w_i log((L x)_i) - sum_k a_k log x_k + sum_k x_k`` over x >= 0,
    with the row weights w and the penalty weights a normalised together. The penalty
    is the contribution of ashr's extra identity rows (see :func:`fit_mixture_weights`),
    handled analytically so that the likelihood matrix is never copied.

    Parameters
    ----------
    L
        (n, m) non-negative component likelihoods (rows may be scaled arbitrarily).
    w
        (n,) non-negative row weights; equal when ``None``.
    x0
        Starting weights; uniform when ``None``.
    penalty
        (m,) non-negative weights a_k of the log x_k terms; none when ``None``.
    tol
        Convergence threshold on the KKT residual.
    maxiter
        Maximum SQP iterations.
    numiter_em
        EM updates before SQP (mixsqp's default, a cheap warm start).

    Returns
    -------
    MixtureWeightsResult
    """
    n, m = L.shape
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    a = np.zeros(m) if penalty is None else np.asarray(penalty, dtype=np.float64)
    total = float(w.sum() + a.sum())
    w, a = w / total, a / total
    x = np.full(m, 1.0 / m) if x0 is None else np.asarray(x0, dtype=np.float64) / float(np.sum(x0))
    # sum and min instead of elementwise masks: no n x m temporaries
    if not np.isfinite(L.sum()) or L.min() < 0:
        raise FitError("mixture likelihood matrix has negative or non-finite entries")
    if m == 1:
        return MixtureWeightsResult(np.ones(1), _objective(L, w, a, np.ones(1)), 0, 0.0, True)
    rows = RowBlocks(L)
    if not (rows.matvec(x) > 0).all():
        raise FitError("mixture likelihood matrix has a row of zeros: some unit fits no component")
    with single_threaded_blas():
        return _sqp(rows, w, a, x, tol, maxiter, numiter_em)


class RowBlocks:
    """Products with a tall matrix L (n x m), computed by blocks of rows on threads.

    Sums over rows are added block by block in block order, so the results do not
    depend on the number of threads (:mod:`.parallel`).
    """

    def __init__(self, L: np.ndarray):
        self.L = L
        n, m = L.shape
        self.blocks = row_slices(n, max(256, BLOCK_BYTES // (8 * max(1, m))))

    def _sum(self, fn: Callable[[slice], np.ndarray]) -> np.ndarray:
        return functools.reduce(np.add, map_blocks(fn, self.blocks))

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """L x."""
        out = np.empty(self.L.shape[0])

        def block(b: slice) -> None:
            out[b] = self.L[b] @ x

        map_blocks(block, self.blocks)
        return out

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        """L' v."""
        return self._sum(lambda b: self.L[b].T @ v[b])

    def em(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """L' (w / (L x)), each block read once from memory."""

        def block(b: slice) -> np.ndarray:
            Lb = self.L[b]
            return Lb.T @ (w[b] / (Lb @ x))

        return self._sum(block)

    def gram(self, scale: np.ndarray, S: np.ndarray) -> np.ndarray:
        """L_S' diag(scale^2) L_S (symmetric rank-k updates, one per block)."""
        every = S.size == self.L.shape[1]

        def block(b: slice) -> np.ndarray:
            Lb = self.L[b] if every else self.L[b][:, S]
            A = np.multiply(Lb, scale[b, None], order="F")
            return dsyrk(1.0, A, trans=1)

        H = self._sum(block)
        return np.triu(H) + np.triu(H, 1).T


def _sqp(
    L: RowBlocks, w: np.ndarray, a: np.ndarray, x: np.ndarray, tol: float, maxiter: int, numiter_em: int
) -> MixtureWeightsResult:
    for _ in range(numiter_em):
        x = x * L.em(x, w) + a
        x /= x.sum()
    u = L.matvec(x)
    fx = _objective_u(w, a, u, x)
    it = 0
    history: list[float] = []
    while it < maxiter:
        g = _gradient(L, w, a, u, x)
        kkt = _kkt_residual(x, g)
        if kkt <= tol:
            break
        # With very many rows the gradient's own rounding error can exceed tol: below
        # mixsqp's tolerance (1e-8), stop once five iterations have not halved it.
        history.append(kkt)
        if kkt < 1e-8 and len(history) > 5 and kkt > 0.5 * history[-6]:
            break
        it += 1
        # The quadratic model is restricted to coordinates that are positive or have a
        # negative gradient; the others satisfy their optimality condition at zero.
        S = np.flatnonzero((x > 0) | (g < 0))
        H = _hessian(L, w, a, u, x, S)
        y = _active_set_qp(H, g[S] - H @ x[S], x[S])
        p = -x
        p[S] += y
        slope = float(g @ p)
        if slope >= 0:
            break  # no descent direction left: optimal to machine precision
        # Backtracking line search; a decrease below the resolution of f (near the
        # optimum) is accepted for the full step, where the quadratic model is exact.
        resolution = 1e-15 * max(1.0, abs(fx))
        step = 1.0
        while True:
            xn = np.maximum(x + step * p, 0.0)
            un = L.matvec(xn)
            fn = _objective_u(w, a, un, xn)
            if fn <= fx + 0.01 * step * slope:
                break
            if step == 1.0 and -slope < resolution and fn <= fx + resolution:
                break
            step *= 0.5
            if step < 1e-10:
                break
        if not fn <= fx + resolution:
            break  # no acceptable step: at the optimum to floating-point precision
        x, u, fx = xn, un, fn
    kkt = _kkt_residual(x, _gradient(L, w, a, u, x))
    x = x / x.sum()
    return MixtureWeightsResult(x, _objective_u(w, a, L.matvec(x), x), it, float(kkt), bool(kkt <= max(tol, 1e-8)))


def _gradient(L: RowBlocks, w: np.ndarray, a: np.ndarray, u: np.ndarray, x: np.ndarray) -> np.ndarray:
    g = 1.0 - L.rmatvec(w / u)
    pen = a > 0
    g[pen] -= a[pen] / x[pen]
    return g


def _hessian(L: RowBlocks, w: np.ndarray, a: np.ndarray, u: np.ndarray, x: np.ndarray, S: np.ndarray) -> np.ndarray:
    """L_S' diag(w / u^2) L_S + diag(a / x^2), accumulated over row blocks (bounded memory)."""
    H = L.gram(np.sqrt(w) / u, S)
    pen = a[S] > 0
    with np.errstate(divide="ignore"):
        H[np.flatnonzero(pen), np.flatnonzero(pen)] += a[S][pen] / x[S][pen] ** 2
    return H


def _active_set_qp(H: np.ndarray, c: np.ndarray, y0: np.ndarray) -> np.ndarray:
    """Minimise 0.5 y'Hy + c'y over y >= 0 by the primal active-set method from feasible y0.

    Nocedal & Wright (2006), Algorithm 16.3, for bound constraints: solve on the free
    set; if a bound blocks the step, move to it and fix that coordinate; once the free
    problem is solved, release the bound with the most negative multiplier.
    """
    m = H.shape[0]
    y = y0.copy()
    free = y > 0
    if not free.any():
        free[int(np.argmin(c))] = True
    lam_tol = 1e-13 * max(1.0, float(np.max(np.diag(H))))
    for _ in range(10 * m + 20):
        F = np.flatnonzero(free)
        dF = -_solve_pd(H[np.ix_(F, F)], (H[F] @ y) + c[F])
        yF = y[F]
        neg = dF < 0
        if neg.any():
            ratios = -yF[neg] / dF[neg]
            j = int(np.argmin(ratios))
            if ratios[j] < 1.0:
                y[F] = np.maximum(yF + ratios[j] * dF, 0.0)
                blocked = int(F[np.flatnonzero(neg)[j]])
                y[blocked] = 0.0
                free[blocked] = False
                if not free.any():
                    free[int(np.argmin(H @ y + c))] = True
                continue
        y[F] = yF + dF
        bound = np.flatnonzero(~free)
        if bound.size == 0:
            break
        lam = H[bound] @ y + c[bound]
        k = int(np.argmin(lam))
        if lam[k] >= -lam_tol:
            break
        free[bound[k]] = True
    return y


def set_prior(K: int, prior: str | np.ndarray, nullweight: float = 10.0, null_index: int = 0) -> np.ndarray:
    """Dirichlet penalty of mashr/ashr: ``uniform`` is all ones, ``nullbiased`` puts
    ``nullweight`` on the component at ``null_index`` (mashr: the first)."""
    if isinstance(prior, str):
        out = np.ones(K)
        if prior == "nullbiased":
            out[null_index] = nullweight
        elif prior != "uniform":
            raise ValueError(f"prior must be 'nullbiased' or 'uniform', got {prior!r}")
        return out
    out = np.asarray(prior, dtype=np.float64)
    if out.shape != (K,):
        raise ValueError(f"prior has length {out.size}, expected {K}")
    return out


def fit_mixture_weights(lik: np.ndarray, prior: np.ndarray, tol: float = 1e-10) -> MixtureWeightsResult:
    """Penalised mixture weights: maximise sum_j log(sum_k pi_k lik_jk) + sum_k (prior_k - 1) log pi_k.

    ashr's ``mixSQP`` wrapper stacks identity rows weighted ``prior - 1`` on the
    likelihood matrix; row e_k contributes (prior_k - 1) log pi_k, which :func:`mixsqp`
    takes as its ``penalty`` without copying the matrix.

    Parameters
    ----------
    lik
        (J, K) (relative) likelihood matrix.
    prior
        (K,) Dirichlet parameters, all >= 1.
    """
    prior = np.asarray(prior, dtype=np.float64)
    if (prior < 1).any():
        raise ValueError("prior must all be >= 1")
    return mixsqp(lik, penalty=prior - 1.0, tol=tol)


def _objective(L: np.ndarray, w: np.ndarray, a: np.ndarray, x: np.ndarray) -> float:
    return _objective_u(w, a, L @ x, x)


def _objective_u(w: np.ndarray, a: np.ndarray, u: np.ndarray, x: np.ndarray) -> float:
    if not (u > 0).all():
        return np.inf
    pen = a > 0
    if (x[pen] <= 0).any():
        return np.inf
    return float(-(w @ np.log(u)) - (a[pen] @ np.log(x[pen])) + x.sum())


def _kkt_residual(x: np.ndarray, g: np.ndarray) -> float:
    """max over k of |g_k| where x_k > 0 and of max(0, -g_k) where x_k = 0."""
    pos = x > 0
    r1 = np.abs(g[pos]).max() if pos.any() else 0.0
    r2 = np.maximum(0.0, -g[~pos]).max() if (~pos).any() else 0.0
    return float(max(r1, r2))


def _solve_pd(H: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve H d = b for a symmetric positive semi-definite H, adding a growing ridge
    when H is numerically singular (nearly collinear mixture components)."""
    if H.shape[0] == 0:
        return np.zeros(0)
    scale = float(np.max(np.diag(H)))
    ridge = 0.0
    for _ in range(12):
        try:
            c = cho_factor(H + ridge * np.eye(H.shape[0]), lower=True, check_finite=False)
            return cho_solve(c, b, check_finite=False)
        except LinAlgError:
            ridge = 1e-12 * scale if ridge == 0.0 else ridge * 10.0
    raise FitError("mixture weights: the Hessian is singular")
