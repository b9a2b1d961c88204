"""Null correlation V: mashr's simple estimate and its regularisation."""

from __future__ import annotations

import numpy as np

from fatebias_core.errors import FitError

from .data import MashData


class NotEnoughNullDataError(FitError):
    """Too few null-looking units to estimate the null correlation."""


def estimate_null_correlation_simple(data: MashData, z_thresh: float = 2.0, est_cor: bool = True) -> np.ndarray:
    """mashr ``estimate_null_correlation_simple``.

    The empirical covariance (correlation when ``est_cor``) of the z scores
    ``Bhat / Shat`` over the units whose |z| is below ``z_thresh`` in every condition.

    Raises
    ------
    NotEnoughNullDataError
        Fewer such units than conditions (mashr: "not enough null data to estimate
        null correlation").
    """
    z = data.Bhat / data.Shat
    nullish = np.abs(z).max(axis=1) < z_thresh
    n_null = int(nullish.sum())
    if n_null < data.n_conditions:
        raise NotEnoughNullDataError(
            f"not enough null data to estimate null correlation: {n_null} of {data.n_effects} rows "
            f"have |z| < {z_thresh:g} in every condition, {data.n_conditions} needed"
        )
    Vhat = np.cov(z[nullish], rowvar=False, ddof=1)
    Vhat = np.atleast_2d(Vhat)
    if est_cor:
        d = np.sqrt(np.diag(Vhat))
        if not (d > 0).all():
            raise NotEnoughNullDataError("null z scores have zero variance in some condition")
        Vhat = Vhat / np.outer(d, d)
    return Vhat


def nearest_correlation(A: np.ndarray, eig_floor: float = 0.0, max_iter: int = 200, tol: float = 1e-12) -> np.ndarray:
    """Nearest correlation matrix (Higham 2002, alternating projections with Dykstra's correction).

    Projects alternately onto the symmetric matrices with eigenvalues >= ``eig_floor``
    and onto those with unit diagonal. A matrix that already is a correlation matrix
    with eigenvalues >= ``eig_floor`` is returned unchanged.
    """
    Y = 0.5 * (A + A.T)
    if _min_eig(Y) >= eig_floor and np.allclose(np.diag(Y), 1.0, rtol=0, atol=1e-14):
        return Y
    dS = np.zeros_like(Y)
    for _ in range(max_iter):
        Rk = Y - dS
        w, Q = np.linalg.eigh(Rk)
        X = (Q * np.maximum(w, eig_floor)) @ Q.T
        dS = X - Rk
        Y_new = X.copy()
        np.fill_diagonal(Y_new, 1.0)
        if np.linalg.norm(Y_new - Y, "fro") <= tol * max(1.0, np.linalg.norm(Y, "fro")):
            Y = Y_new
            break
        Y = Y_new
    return 0.5 * (Y + Y.T)


def regularize_null_correlation(V: np.ndarray, eig_floor: float = 1e-6, rho: float = 0.05) -> np.ndarray:
    """Regularise V: nearest correlation matrix, eigenvalues floored at ``eig_floor``,
    rescaled to unit diagonal, then shrunk to the identity, (1 - rho) V + rho I.

    A well-conditioned correlation matrix passes the first three steps unchanged, so
    only the shrinkage acts on it.
    """
    R = V.shape[0]
    C = nearest_correlation(V, eig_floor=eig_floor)
    w, Q = np.linalg.eigh(C)
    if w.min() < eig_floor:
        C = (Q * np.maximum(w, eig_floor)) @ Q.T
    d = np.sqrt(np.diag(C))
    C = C / np.outer(d, d)
    C = 0.5 * (C + C.T)
    return (1.0 - rho) * C + rho * np.eye(R)


def _min_eig(A: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(A).min())
