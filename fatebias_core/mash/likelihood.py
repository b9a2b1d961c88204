"""The mixture prior expanded over the grid, and the (log-)likelihood matrix.

For unit j the error covariance is Sigma_j = diag(s_j) V diag(s_j) = C_j C_j' with
C_j = diag(s_j) chol(V). Prior component (l, k) has covariance omega_l^2 U_k (the
point mass has 0), so the marginal covariance is C_j (I + omega_l^2 M_jk) C_j' with
M_jk = C_j^{-1} U_k C_j^{-T}. With the eigendecomposition M_jk = Q diag(lambda) Q'
and z = Q' C_j^{-1} bhat_j,

    log N(bhat_j; 0, Sigma_j + omega^2 U_k)
        = -1/2 [R log 2 pi + log det Sigma_j + sum_r log(1 + omega^2 lambda_r)
                + sum_r z_r^2 / (1 + omega^2 lambda_r)],

so one small eigendecomposition per (unit, covariance) serves every grid value, and
each (unit, component) entry costs O(R). Rows are processed in blocks so the
temporaries stay small whatever the number of units; only the J x P result is kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .covariances import CovarianceSet
from .data import MashData

# Target entries per temporary array in a row block (2 MiB of float64).
BLOCK_ELEMENTS = 1 << 18


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


def row_blocks(n_rows: int, width: int, chunk_rows: int) -> Iterator[slice]:
    """Row slices of at most ``chunk_rows`` rows and about BLOCK_ELEMENTS entries per array."""
    step = max(1, min(int(chunk_rows), BLOCK_ELEMENTS // max(1, width)))
    for a in range(0, n_rows, step):
        yield slice(a, min(n_rows, a + step))


@dataclass(frozen=True)
class WhitenedBlock:
    """Eigen-decompositions of the covariances in the whitened frame, for a block of rows.

    Attributes
    ----------
    lam
        (K, m, R) eigenvalues of M_jk = C_j^{-1} U_k C_j^{-T}, clamped at 0.
    z
        (K, m, R) Q_jk' C_j^{-1} bhat_j.
    zz
        (m,) |C_j^{-1} bhat_j|^2, the null quadratic form.
    logdet
        (m,) log det Sigma_j.
    G
        (K, m, R, R) C_j Q_jk, mapping whitened coordinates back (for posteriors).
    zero
        (K, R) True where U_k has a zero diagonal entry: that condition is exactly 0
        under the component.
    """

    lam: np.ndarray
    z: np.ndarray
    zz: np.ndarray
    logdet: np.ndarray
    G: np.ndarray
    zero: np.ndarray


def whiten(data: MashData, rows: slice, cov: CovarianceSet, with_G: bool = True) -> WhitenedBlock:
    """:class:`WhitenedBlock` of ``rows`` (``G`` is empty unless ``with_G``).

    Rank-one covariances u u' (singletons, equal effects, PCA factors) need no
    eigendecomposition: M = c c' with c = C^{-1} u has the single eigenvalue |c|^2 along
    c, and only |w|^2 - (c'w)^2/|c|^2 of the data lies in the other directions.
    """
    U = cov.matrices
    K, R, _ = U.shape
    S = data.Shat[rows]
    m = S.shape[0]
    LV = np.linalg.cholesky(data.V)
    LVinv = np.linalg.inv(LV)
    inv_s = 1.0 / S
    # C^{-1} = LV^{-1} diag(1/s): the whitened data
    w = (data.Bhat[rows] * inv_s) @ LVinv.T  # (m, R)
    zz = (w * w).sum(axis=1)
    lam = np.zeros((K, m, R))
    z = np.zeros((K, m, R))
    G = np.zeros((K, m, R, R)) if with_G else np.empty((0,))
    one, u = _rank_one(U)
    for k in np.flatnonzero(one):
        c = (u[k][None, :] * inv_s) @ LVinv.T  # (m, R)
        c2 = (c * c).sum(axis=1)
        ok = c2 > 0
        top = np.where(ok, (c * w).sum(axis=1) / np.sqrt(np.where(ok, c2, 1.0)), 0.0)
        lam[k, :, R - 1] = c2
        z[k, :, R - 1] = top
        z[k, :, 0] = np.sqrt(np.maximum(zz - top * top, 0.0))
        if with_G:
            G[k, :, :, R - 1] = u[k][None, :] / np.sqrt(np.where(ok, c2, 1.0))[:, None]
    full = np.flatnonzero(~one)
    if full.size:
        Us = U[full][:, None, :, :] * inv_s[None, :, :, None] * inv_s[None, :, None, :]
        M = LVinv[None, None] @ Us @ LVinv.T[None, None]  # (K', m, R, R)
        M = 0.5 * (M + np.swapaxes(M, -1, -2))
        lam_f, Q = np.linalg.eigh(M)
        lam[full] = np.maximum(lam_f, 0.0)
        z[full] = np.einsum("kmrs,mr->kms", Q, w)
        if with_G:
            G[full] = S[None, :, :, None] * (LV[None, None] @ Q)  # diag(s) LV Q
    logdet = 2.0 * np.log(S).sum(axis=1) + 2.0 * np.log(np.diag(LV)).sum()
    zero = np.diagonal(U, axis1=1, axis2=2) == 0
    return WhitenedBlock(lam, z, zz, logdet, G, zero)


def _rank_one(U: np.ndarray, rtol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Which covariances are (numerically exactly) rank one, and their factors u (U = u u')."""
    lam, Q = np.linalg.eigh(U)
    top = lam[:, -1]
    one = (top > 0) & (np.abs(lam[:, :-1]).max(axis=1) <= rtol * top)
    u = Q[:, :, -1] * np.sqrt(np.maximum(top, 0.0))[:, None]
    return one, u


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
    """
    J, R = data.Bhat.shape
    K = len(prior.covariances)
    P = prior.n_components
    om2 = prior.grid**2
    out = np.empty((J, P))
    const = R * math.log(2.0 * math.pi)
    for rows in row_blocks(J, K * R * R, chunk_rows):
        wb = whiten(data, rows, prior.covariances, with_G=False)
        base = const + wb.logdet  # (m,)
        z2 = wb.z * wb.z
        if prior.usepointmass:
            out[rows, 0] = -0.5 * (base + wb.zz)
        for g, o2 in enumerate(om2):
            d = 1.0 + o2 * wb.lam  # (K, m, R)
            quad = (z2 / d).sum(axis=2)
            # one log of the product is cheaper than R logs; sum the logs if it could overflow
            logd = np.log(d.prod(axis=2)) if R <= 8 else np.log(d).sum(axis=2)
            a = prior.offset + g * K
            out[rows, a : a + K] = -0.5 * (base[None, :] + logd + quad).T
    return out


@dataclass(frozen=True)
class RelativeLikelihood:
    """Likelihoods scaled so that each row's largest entry is 1 (mashr ``calc_relative_lik_matrix``).

    Attributes
    ----------
    lik
        (J, P) exp(loglik - row max).
    lfactors
        (J,) the row maxima of the log-likelihood.
    """

    lik: np.ndarray
    lfactors: np.ndarray


def relative_likelihood(loglik: np.ndarray) -> RelativeLikelihood:
    """Subtract each row's maximum and exponentiate (on a copy)."""
    lf = loglik.max(axis=1)
    lik = loglik - lf[:, None]
    np.exp(lik, out=lik)
    return RelativeLikelihood(lik, lf)
