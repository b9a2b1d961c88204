"""The mixture prior expanded over the grid, and the (log-)likelihood matrix.

For unit j and prior component p (covariance Sigma_p = omega_l^2 U_k, or 0 for the
point mass), the marginal likelihood is N(bhat_j; 0, Sigma_p + diag(s_j) V diag(s_j)).
The J x P matrix is computed in row blocks so that the temporaries stay small
whatever J is; only the J x P result itself is kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .batched import BatchedCholesky
from .covariances import CovarianceSet
from .data import MashData

# Elements per temporary array in a block (2 MiB of float64): keeps blocks cache-friendly.
BLOCK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class MixturePrior:
    """The expanded prior components (mashr ``expand_cov``).

    Attributes
    ----------
    matrices
        (P, R, R) component covariances; with a point mass, component 0 is all zeros.
    names
        P names, ``null`` then ``<U name>.<grid index>`` (grid-major order, as mashr).
    grid
        The grid of standard deviations omega_l.
    usepointmass
        Whether component 0 is the point mass at zero.
    """

    matrices: np.ndarray
    names: tuple[str, ...]
    grid: np.ndarray
    usepointmass: bool

    @property
    def n_components(self) -> int:
        """P, the number of mixture components."""
        return int(self.matrices.shape[0])


def expand_covariances(cov: CovarianceSet, grid: np.ndarray, usepointmass: bool = True) -> MixturePrior:
    """Scale every U_k by every omega_l^2 (grid-major) and prepend the point mass (mashr ``expand_cov``)."""
    grid = np.asarray(grid, dtype=np.float64)
    R = cov.n_conditions
    scaled = (grid[:, None, None, None] ** 2 * cov.matrices[None]).reshape(-1, R, R)
    names = tuple(f"{nm}.{g + 1}" for g in range(len(grid)) for nm in cov.names)
    if usepointmass:
        scaled = np.concatenate([np.zeros((1, R, R)), scaled])
        names = ("null",) + names
    return MixturePrior(scaled, names, grid, usepointmass)


def row_blocks(n_rows: int, n_components: int, chunk_rows: int) -> Iterator[slice]:
    """Row slices of at most ``chunk_rows`` rows and about BLOCK_ELEMENTS entries per array."""
    step = max(1, min(int(chunk_rows), BLOCK_ELEMENTS // max(1, n_components)))
    for a in range(0, n_rows, step):
        yield slice(a, min(n_rows, a + step))


def error_cov_entries(data: MashData, rows: slice) -> list[list[np.ndarray]]:
    """Entries of diag(s_j) V diag(s_j) for the rows, as (m, 1) columns."""
    S = data.Shat[rows]
    V = data.V
    R = data.n_conditions
    return [[(S[:, i] * (V[i, j] * S[:, j]))[:, None] for j in range(R)] for i in range(R)]


def block_cholesky(data: MashData, rows: slice, matrices: np.ndarray) -> BatchedCholesky:
    """Cholesky factors of Sigma_p + diag(s_j) V diag(s_j) over (rows, components)."""
    err = error_cov_entries(data, rows)
    return BatchedCholesky(lambda i, j: err[i][j] + matrices[None, :, i, j], data.n_conditions)


def loglik_matrix(data: MashData, matrices: np.ndarray, chunk_rows: int = 50_000) -> np.ndarray:
    """J x P matrix of log N(bhat_j; 0, Sigma_p + diag(s_j) V diag(s_j)).

    Parameters
    ----------
    data
        The mash data.
    matrices
        (P, R, R) component covariances.
    chunk_rows
        Upper bound on the rows per block.
    """
    J, R = data.Bhat.shape
    P = matrices.shape[0]
    out = np.empty((J, P))
    const = R * math.log(2.0 * math.pi)
    for rows in row_blocks(J, P, chunk_rows):
        chol = block_cholesky(data, rows, matrices)
        y = chol.forward([data.Bhat[rows, r][:, None] for r in range(R)])
        quad = sum(v * v for v in y)
        out[rows] = -0.5 * (const + chol.logdet() + quad)
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
    """Subtract each row's maximum and exponentiate (in place on a copy)."""
    lf = loglik.max(axis=1)
    lik = loglik - lf[:, None]
    np.exp(lik, out=lik)
    return RelativeLikelihood(lik, lf)
