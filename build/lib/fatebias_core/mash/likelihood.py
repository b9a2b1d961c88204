"""The mixture prior expanded over the grid, the whitened frame, and the likelihood matrix.

For unit j the error covariance is Sigma_j = diag(s_j) V diag(s_j) = C_j C_j' with
C_j = diag(s_j) chol(V). Prior component (l, k) has covariance t U_k, t = omega_l^2
(the point mass has 0), so the marginal covariance is C_j (I + t M_jk) C_j' with
M_jk = C_j^{-1} U_k C_j^{-T}. With w_j = C_j^{-1} bhat_j,

    log N(bhat_j; 0, Sigma_j + t U_k)
        = -1/2 [R log 2 pi + log det Sigma_j + log det(I + t M_jk)
                + w_j' (I + t M_jk)^{-1} w_j].

* A rank-one U_k = u u' (the singletons, equal effects, PCA factors) needs no matrix
  algebra: with c = C_j^{-1} u, log det(I + t M) = log(1 + t |c|^2) and
  w'(I + t M)^{-1} w = |w|^2 - (c'w)^2 / |c|^2 + (c'w)^2 / (|c|^2 (1 + t |c|^2)).
* Any other U_k: M_jk is reduced once to tridiagonal form T = Q' M_jk Q (Householder,
  entry by entry over arrays of (covariance, unit)); then for every grid value the
  LDL' factorisation of I + t T (every eigenvalue >= 1, so well conditioned) costs
  O(R): log det is the log of the product of the pivots and the quadratic form
  sum_i y_i^2 / d_i of the forward solution of Q' w_j. This shares the work across
  the grid as an eigendecomposition per (unit, covariance) would, without a LAPACK call
  per 4 x 4 matrix (which is what the time went to).

The entries of M_jk are one matrix product for the whole block of units: M_jk[a, b] =
sum_{i,l} Vinv_ai Vinv_bl U_k[i, l] / (s_ji s_jl), with Vinv = chol(V)^{-1}. Rows are
processed in blocks, on several threads (:mod:`.parallel`), so the temporaries stay in
cache whatever the number of units; only the J x P result is kept, and :func:`mash`
takes it already relative to each row's maximum (:func:`likelihood_matrix`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .covariances import CovarianceSet
from .data import MashData
from .parallel import map_blocks, row_slices

# Target entries of a row block's (components x units) arrays (2 MiB of float64); the
# grid loop works through them a few grid values at a time (GRID_ELEMENTS), so that its
# dozens of temporaries stay in the processor's cache.
BLOCK_ELEMENTS = 1 << 18

# Rank-one detection: the other eigenvalues at most this fraction of the largest.
RANK_ONE_RTOL = 1e-12


@dataclass(frozen=True)
class MixturePrior:
    """The expanded prior components (mashr ``expand_cov``).

    Component order is mashr's: the point mass first (if any), then grid-major
    ``U_1 * omega_1^2, ..., U_K * omega_1^2, U_1 * omega_2^2, ...``.

    Attributes
    ----------
    covariances
        The K base covariances U_k.
    grid
        The G grid standard deviations omega_l.
    usepointmass
        Whether component 0 is the point mass at zero.
    """

    covariances: CovarianceSet
    grid: np.ndarray
    usepointmass: bool

    @property
    def n_components(self) -> int:
        """P = G K (+ 1 with the point mass)."""
        return len(self.grid) * len(self.covariances) + int(self.usepointmass)

    @property
    def offset(self) -> int:
        """Index of the first scaled component (1 with the point mass)."""
        return int(self.usepointmass)

    @property
    def names(self) -> tuple[str, ...]:
        """``null`` then ``<U name>.<grid index>``, as mashr names them."""
        nm = tuple(f"{u}.{g + 1}" for g in range(len(self.grid)) for u in self.covariances.names)
        return ("null",) + nm if self.usepointmass else nm

    @property
    def matrices(self) -> np.ndarray:
        """(P, R, R) component covariances (built on demand; for inspection and tests)."""
        R = self.covariances.n_conditions
        scaled = (self.grid[:, None, None, None] ** 2 * self.covariances.matrices[None]).reshape(-1, R, R)
        if self.usepointmass:
            scaled = np.concatenate([np.zeros((1, R, R)), scaled])
        return scaled

    def component(self, p: int) -> tuple[int, int]:
        """(grid index, covariance index) of scaled component p; (-1, -1) for the point mass."""
        if self.usepointmass and p == 0:
            return -1, -1
        g, k = divmod(p - self.offset, len(self.covariances))
        return g, k


def expand_covariances(cov: CovarianceSet, grid: np.ndarray, usepointmass: bool = True) -> MixturePrior:
    """The prior of mashr ``expand_cov``: every U_k scaled by every omega_l^2, plus the point mass."""
    return MixturePrior(cov, np.asarray(grid, dtype=np.float64), usepointmass)


def row_blocks(n_rows: int, width: int, chunk_rows: int, elements: int = BLOCK_ELEMENTS) -> Iterator[slice]:
    """Row slices of at most ``chunk_rows`` rows and about ``elements`` entries per array
    (``width`` entries per row), at least 64 rows."""
    step = max(1, min(int(chunk_rows), max(64, elements // max(1, width))))
    yield from row_slices(n_rows, step)


@dataclass(frozen=True)
class Frame:
    """The whitened data of a block of m units.

    Attributes
    ----------
    s
        (m, R) standard errors.
    inv_s
        (m, R) their inverses.
    w
        (R, m) C_j^{-1} bhat_j, one row per condition.
    zz
        (m,) |w_j|^2, the quadratic form under the point mass.
    logdet
        (m,) log det Sigma_j.
    """

    s: np.ndarray
    inv_s: np.ndarray
    w: np.ndarray
    zz: np.ndarray
    logdet: np.ndarray


class Whitening:
    """The constants of the whitened frame for a null correlation V and covariances U_k.

    Parameters
    ----------
    V
        (R, R) null correlation (positive definite).
    cov
        The covariances U_k.

    Attributes
    ----------
    one
        (K,) True for rank-one U_k = u_k u_k'.
    u
        (K, R) the factors u_k (zero where U_k is not rank one).
    full
        Indices of the other covariances.
    zero
        (K, R) True where U_k has a zero diagonal entry: that condition is exactly 0
        under the component.
    """

    def __init__(self, V: np.ndarray, cov: CovarianceSet):
        U = cov.matrices
        K, R, _ = U.shape
        self.R = R
        self.LV = np.linalg.cholesky(V)
        self.LVinv = np.linalg.inv(self.LV)
        self.logdet_V = 2.0 * float(np.log(np.diag(self.LV)).sum())
        self.one, self.u = _rank_one(U)
        self.full = np.flatnonzero(~self.one)
        self.rank_one = np.flatnonzero(self.one)
        self.zero = np.diagonal(U, axis1=1, axis2=2) == 0
        Li = self.LVinv
        # c_k = C^{-1} u_k = Vinv (u_k / s): columns (a, k) of inv_s @ _c_map
        self._c_map = np.einsum("ai,ki->iak", Li, self.u[self.rank_one]).reshape(R, -1)
        # M_k[a, b] = sum_{i,l} Vinv_ai Vinv_bl U_k[i, l] / (s_i s_l): columns (a, b, k) of
        # the outer products 1/(s_i s_l), flattened over (i, l), times _m_map
        Uf = U[self.full]
        self._m_map = np.einsum("ai,bl,kil->ilabk", Li, Li, Uf).reshape(R * R, -1)
        # F_k = C^{-1} U_k (for posteriors): F_k[a, b] = sum_i Vinv_ai U_k[i, b] / s_i
        self._f_map = np.einsum("ai,kib->iabk", Li, Uf).reshape(R, -1)

    def frame(self, data: MashData, rows: slice) -> Frame:
        """The whitened data of ``rows``."""
        s = data.Shat[rows]
        inv_s = 1.0 / s
        w = self.LVinv @ (data.Bhat[rows] * inv_s).T  # (R, m)
        zz = np.einsum("rm,rm->m", w, w)
        logdet = 2.0 * np.log(s).sum(axis=1) + self.logdet_V
        return Frame(s, inv_s, w, zz, logdet)

    def rank_one_terms(self, fr: Frame) -> tuple[np.ndarray, np.ndarray]:
        """(K1, m) |c|^2 and c'w for the rank-one covariances, c = C^{-1} u."""
        m = fr.inv_s.shape[0]
        c = (fr.inv_s @ self._c_map).reshape(m, self.R, -1)  # (m, R, K1)
        c2 = np.einsum("mrk,mrk->km", c, c)
        cw = np.einsum("mrk,rm->km", c, fr.w)
        return c2, cw

    def full_entries(self, fr: Frame) -> np.ndarray:
        """(R, R, Kf, m) entries of M_k = C^{-1} U_k C^{-T} for the other covariances."""
        m = fr.inv_s.shape[0]
        outer = (fr.inv_s[:, :, None] * fr.inv_s[:, None, :]).reshape(m, -1)
        M = outer @ self._m_map  # (m, R * R * Kf)
        return np.ascontiguousarray(M.T).reshape(self.R, self.R, -1, m)

    def full_factor(self, fr: Frame) -> np.ndarray:
        """(R, R, Kf, m) entries of F_k = C^{-1} U_k for the other covariances."""
        m = fr.inv_s.shape[0]
        F = fr.inv_s @ self._f_map  # (m, R * R * Kf)
        return np.ascontiguousarray(F.T).reshape(self.R, self.R, -1, m)


def _rank_one(U: np.ndarray, rtol: float = RANK_ONE_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Which covariances are (numerically exactly) rank one, and their factors u (U = u u')."""
    lam, Q = np.linalg.eigh(U)
    top = lam[:, -1]
    one = (top > 0) & (np.abs(lam[:, :-1]).max(axis=1, initial=0.0) <= rtol * top)
    u = Q[:, :, -1] * np.sqrt(np.maximum(top, 0.0))[:, None]
    return one, np.where(one[:, None], u, 0.0)


def tridiagonalize(M: np.ndarray, w: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Householder reduction Q' M Q = T (tridiagonal) of a batch of symmetric matrices, and Q' w.

    Parameters
    ----------
    M
        (R, R, Kf, m) symmetric matrices, entry by entry.
    w
        (R, m) vectors.

    Returns
    -------
    a, b, z
        T's diagonal (R arrays), its subdiagonal (``b[i]`` = T[i, i - 1]; ``b[0]`` unused,
        zero) and Q' w (R arrays), each (Kf, m).
    """
    R = w.shape[0]
    shape = M.shape[2:]
    A = [[M[i, j].copy() for j in range(i + 1)] for i in range(R)]  # lower triangle

    def at(i: int, j: int) -> np.ndarray:
        return A[i][j] if j <= i else A[j][i]

    z = [np.broadcast_to(w[i], shape).copy() for i in range(R)]
    b = [np.zeros(shape) for _ in range(R)]
    for k in range(R - 2):
        idx = range(k + 1, R)
        x = [A[i][k] for i in idx]
        norm = np.sqrt(sum(xi * xi for xi in x))
        alpha = -np.copysign(norm, x[0])
        v = [x[0] - alpha, *x[1:]]
        vv = sum(vi * vi for vi in v)
        with np.errstate(divide="ignore"):
            beta = np.where(vv > 0, 2.0 / vv, 0.0)  # H = I - beta v v' (the identity when x = 0)
        # H B H for the trailing block B: B - v q' - q v', q = p - (beta / 2)(v'p) v, p = beta B v
        p = [beta * sum(at(i, j) * vj for j, vj in zip(idx, v, strict=True)) for i in idx]
        half = 0.5 * beta * sum(vi * pi for vi, pi in zip(v, p, strict=True))
        q = [pi - half * vi for pi, vi in zip(p, v, strict=True)]
        for a_, i in enumerate(idx):
            for c_, j in enumerate(idx[: a_ + 1]):
                A[i][j] = A[i][j] - v[a_] * q[c_] - q[a_] * v[c_]
        b[k + 1] = np.where(vv > 0, alpha, x[0])
        vz = beta * sum(vi * z[i] for vi, i in zip(v, idx, strict=True))
        for vi, i in zip(v, idx, strict=True):
            z[i] = z[i] - vz * vi
    if R >= 2:
        b[R - 1] = A[R - 1][R - 2]
    return [A[i][i] for i in range(R)], b, z


def grid_terms(M: np.ndarray, w: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """det(I + t M) (its log when R > 8) and w'(I + t M)^{-1} w for every t, matrix and unit.

    M is reduced once to tridiagonal form, Q' M Q = T (Householder, orthogonal: the
    determinant and the quadratic form in Q' w are unchanged); then for each t the
    LDL' factorisation of I + t T takes O(R) operations: pivots
    d_i = 1 + t a_i - (t b_i)^2 / d_{i-1} (each at least 1, as every eigenvalue of
    I + t T is), the forward solution y_i = z_i - (t b_i / d_{i-1}) y_{i-1}, and
    w'(I + t M)^{-1} w = sum_i y_i^2 / d_i, det = prod_i d_i.

    Parameters
    ----------
    M
        (R, R, Kf, m) symmetric positive semi-definite matrices, entry by entry.
    w
        (R, m) vectors.
    t
        (G,) non-negative scalars.

    Returns
    -------
    det, quad
        (G, Kf, m) arrays: the determinant or, with more than 8 conditions, its log (a
        product could overflow); and the quadratic form.
    """
    a, b, z = tridiagonalize(M, w)
    t = np.asarray(t, dtype=np.float64)
    step = max(1, GRID_ELEMENTS // max(1, a[0].size))
    parts = [_tridiagonal_terms(a, b, z, t[i : i + step]) for i in range(0, t.size, step)]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


#: Entries per (grid value, covariance, unit) temporary of the grid loop (stays in cache).
GRID_ELEMENTS = 1 << 14


def _tridiagonal_terms(
    a: list[np.ndarray], b: list[np.ndarray], z: list[np.ndarray], t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`grid_terms` from the tridiagonal form (diagonal a, subdiagonal b, Q' w = z)."""
    R = len(a)
    T = t[:, None, None]
    as_log = R > LOG_DET_ABOVE
    d = T * a[0]
    d += 1.0
    y = np.broadcast_to(z[0], d.shape)
    quad = y * y / d
    det = np.log(d) if as_log else d.copy()
    tmp = np.empty_like(d)
    for i in range(1, R):
        tb = T * b[i]
        lo = np.divide(tb, d, out=tmp)  # the multiplier l_i
        y = z[i] - lo * y
        tb *= lo
        np.multiply(T, a[i], out=d)
        d += 1.0
        d -= tb
        np.multiply(y, y, out=tb)
        tb /= d
        quad += tb
        if as_log:
            det += np.log(d)
        else:
            det *= d
    return det, quad


#: With more conditions than this, determinants are carried as logs.
LOG_DET_ABOVE = 8


@dataclass(frozen=True)
class BlockTerms:
    """The Gaussian terms of a block of m units under every component.

    Component p's log-likelihood is -1/2 (base + log det_p + quad_p); ``det`` holds
    log det instead when ``as_log``. Rows follow the component order of the prior
    (the point mass first: det 1, quad |w|^2).
    """

    base: np.ndarray
    quad: np.ndarray
    det: np.ndarray
    as_log: bool


def _block_terms(wh: Whitening, data: MashData, prior: MixturePrior, rows: slice) -> BlockTerms:
    """(P, m) quadratic forms and determinants of ``rows`` under every component."""
    fr = wh.frame(data, rows)
    m = fr.zz.size
    K = len(prior.covariances)
    t = prior.grid**2
    as_log = data.n_conditions > LOG_DET_ABOVE
    quad = np.empty((prior.n_components, m))
    det = np.empty((prior.n_components, m))
    if prior.usepointmass:
        quad[0] = fr.zz
        det[0] = 0.0 if as_log else 1.0
    q = quad[prior.offset :].reshape(t.size, K, m)
    dt = det[prior.offset :].reshape(t.size, K, m)
    if wh.rank_one.size:
        c2, cw = wh.rank_one_terms(fr)
        proj = cw * cw / c2
        rest = np.maximum(fr.zz - proj, 0.0)
        d1 = 1.0 + t[:, None, None] * c2[None]
        q[:, wh.rank_one] = rest + proj / d1
        dt[:, wh.rank_one] = np.log(d1) if as_log else d1
    if wh.full.size:
        dt[:, wh.full], q[:, wh.full] = grid_terms(wh.full_entries(fr), fr.w, t)
    base = data.n_conditions * math.log(2.0 * math.pi) + fr.logdet  # (m,)
    return BlockTerms(base, quad, det, as_log)


def _blocks_for(data: MashData, prior: MixturePrior, chunk_rows: int) -> list[slice]:
    width = max(1, prior.grid.size * len(prior.covariances))
    return list(row_blocks(data.n_effects, width, chunk_rows))


def loglik_matrix(data: MashData, prior: MixturePrior, chunk_rows: int = 50_000) -> np.ndarray:
    """J x P matrix of log N(bhat_j; 0, Sigma_p + diag(s_j) V diag(s_j)).

    Parameters
    ----------
    data
        The mash data.
    prior
        The expanded prior.
    chunk_rows
        Upper bound on the rows per block.

    Returns
    -------
    numpy.ndarray
        (J, P), in column-major (Fortran) order: each component's column is contiguous.
    """
    wh = Whitening(data.V, prior.covariances)
    out = np.empty((prior.n_components, data.n_effects))

    def block(rows: slice) -> None:
        bt = _block_terms(wh, data, prior, rows)
        logdet = bt.det if bt.as_log else np.log(bt.det)
        out[:, rows] = -0.5 * (bt.base[None, :] + logdet + bt.quad)

    map_blocks(block, _blocks_for(data, prior, chunk_rows))
    return out.T


@dataclass(frozen=True)
class RelativeLikelihood:
    """Likelihoods scaled so that each row's largest entry is 1 (mashr ``calc_relative_lik_matrix``).

    Attributes
    ----------
    lik
        (J, P) exp(loglik - row max).
    lfactors
        (J,) the row maxima of the log-likelihood.
    null_loglik
        (J,) the log-likelihood under the point mass (``None`` without one).
    """

    lik: np.ndarray
    lfactors: np.ndarray
    null_loglik: np.ndarray | None = None


def relative_likelihood(loglik: np.ndarray) -> RelativeLikelihood:
    """Subtract each row's maximum and exponentiate (on a copy)."""
    lf = loglik.max(axis=1)
    lik = loglik - lf[:, None]
    np.exp(lik, out=lik)
    return RelativeLikelihood(lik, lf)


def likelihood_matrix(data: MashData, prior: MixturePrior, chunk_rows: int = 50_000) -> RelativeLikelihood:
    """:func:`relative_likelihood` of :func:`loglik_matrix`, computed block by block.

    No log-likelihood matrix is formed: with q* the smallest quadratic form of the row,
    each entry is exp(-(q_p - q*) / 2) / sqrt(det_p) (at most 1, as every det_p >= 1),
    scaled by the row's largest; one exponential and one square root per entry instead
    of a log and an exponential. The result is (J, P) in column-major order.
    """
    wh = Whitening(data.V, prior.covariances)
    J = data.n_effects
    lik = np.empty((prior.n_components, J))
    lf = np.empty(J)
    null = np.empty(J) if prior.usepointmass else None

    def block(rows: slice) -> None:
        bt = _block_terms(wh, data, prior, rows)
        if null is not None:
            null[rows] = -0.5 * (bt.base + bt.quad[0])  # det 1
        qmin = bt.quad.min(axis=0)
        e = bt.quad
        e -= qmin
        if bt.as_log:
            e += bt.det
            e *= -0.5
            np.exp(e, out=e)
        else:
            e *= -0.5
            np.exp(e, out=e)
            e /= np.sqrt(bt.det, out=bt.det)
        mx = e.max(axis=0)
        np.divide(e, mx, out=lik[:, rows])
        lf[rows] = -0.5 * (bt.base + qmin) + np.log(mx)

    map_blocks(block, _blocks_for(data, prior, chunk_rows))
    return RelativeLikelihood(lik.T, lf, null)
