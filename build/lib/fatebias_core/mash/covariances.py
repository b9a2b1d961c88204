"""Prior covariance matrices: canonical, PCA and extreme deconvolution (mashr ``cov_*``).

A :class:`CovarianceSet` is an ordered, named stack of R x R matrices U_k. mash scales
each by the grid (omega_l^2 U_k) to build the mixture prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fatebias_core.errors import FitError, InputDataError

from .batched import BatchedCholesky
from .data import MashData

SIMPLE_HET_CORRS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class CovarianceSet:
    """Named prior covariance matrices.

    Attributes
    ----------
    names
        K names, unique (e.g. ``identity``, ``singletons_d0``, ``ED_PCA_1``).
    matrices
        (K, R, R) float64 symmetric positive semi-definite matrices.
    """

    names: tuple[str, ...]
    matrices: np.ndarray

    def __post_init__(self) -> None:
        if self.matrices.ndim != 3 or self.matrices.shape[1] != self.matrices.shape[2]:
            raise ValueError("matrices must have shape (K, R, R)")
        if len(self.names) != self.matrices.shape[0]:
            raise ValueError("one name per matrix")

    def __len__(self) -> int:
        return len(self.names)

    def __add__(self, other: CovarianceSet) -> CovarianceSet:
        return CovarianceSet(self.names + other.names, np.concatenate([self.matrices, other.matrices]))

    @property
    def n_conditions(self) -> int:
        """R, the dimension of each matrix."""
        return int(self.matrices.shape[1])

    def as_dict(self) -> dict[str, np.ndarray]:
        """Name -> matrix."""
        return dict(zip(self.names, self.matrices, strict=True))


def cov_canonical(data: MashData | int, conditions: Sequence[str] | None = None) -> CovarianceSet:
    """The canonical covariances of mashr ``cov_canonical``.

    In order: ``identity``; one singleton per condition (1 at (r, r), 0 elsewhere);
    ``equal_effects`` (all ones); ``simple_het_1..3`` (unit diagonal, off-diagonal
    0.25, 0.5, 0.75).

    Parameters
    ----------
    data
        A :class:`MashData` (its conditions name the singletons), or the number R.
    conditions
        Singleton names when ``data`` is an int.
    """
    if isinstance(data, MashData):
        R, conditions = data.n_conditions, data.conditions
    else:
        R = int(data)
        conditions = tuple(conditions) if conditions is not None else tuple(str(r + 1) for r in range(R))
    mats = [np.eye(R)]
    names = ["identity"]
    for r in range(R):
        single = np.zeros((R, R))
        single[r, r] = 1.0
        mats.append(single)
        names.append(f"singletons_{conditions[r]}")
    mats.append(np.ones((R, R)))
    names.append("equal_effects")
    for i, rho in enumerate(SIMPLE_HET_CORRS, start=1):
        het = np.full((R, R), rho)
        np.fill_diagonal(het, 1.0)
        mats.append(het)
        names.append(f"simple_het_{i}")
    return CovarianceSet(tuple(names), np.stack(mats))


def cov_pca(data: MashData, npc: int, subset: np.ndarray | None = None) -> CovarianceSet:
    """PCA covariances of mashr ``cov_pca``: the ``npc`` rank-one v_i v_i' and ``tPCA``.

    The singular vectors are those of ``Bhat`` on the ``subset`` rows (not of the z
    scores, as in mashr); ``tPCA`` is V_npc D^2 V_npc' / n_subset.

    Parameters
    ----------
    data
        The mash data.
    npc
        Number of principal components, 2 <= npc <= R (mashr requires npc > 1).
    subset
        Row indices (or mask) to use; all rows when ``None``.
    """
    R = data.n_conditions
    if not 1 < npc <= R:
        raise InputDataError(f"cov_pca needs 2 <= npc <= {R} (number of conditions), got npc = {npc}")
    X = data.Bhat if subset is None else data.Bhat[subset]
    n = X.shape[0]
    if n < 1:
        raise FitError("cov_pca: the subset is empty")
    _, d, vt = np.linalg.svd(X, full_matrices=False)
    f = vt[:npc]
    mats = [np.outer(f[i], f[i]) for i in range(npc)]
    tpca = (f.T * d[:npc] ** 2) @ f / n
    names = tuple(f"PCA_{i + 1}" for i in range(npc)) + ("tPCA",)
    return CovarianceSet(names, np.stack(mats + [tpca]))


@dataclass(frozen=True)
class EDResult:
    """Result of extreme deconvolution.

    Attributes
    ----------
    covariances
        Refined covariances named ``ED_<initial name>``, each with mashr's
        ``diag(1 / sqrt(n_subset))`` added (see :func:`cov_ed`).
    pi
        Fitted mixture proportions.
    avg_loglik
        Average log-likelihood per unit at the last E-step.
    n_iter
        EM iterations run.
    converged
        Whether the change in average log-likelihood fell to ``tol``.
    """

    covariances: CovarianceSet
    pi: np.ndarray
    avg_loglik: float
    n_iter: int
    converged: bool


def cov_ed(
    data: MashData,
    init: CovarianceSet,
    subset: np.ndarray | None = None,
    tol: float = 1e-6,
    maxiter: int = 100_000,
) -> EDResult:
    """Extreme deconvolution (Bovy, Hogg & Roweis 2011) as mashr ``cov_ed`` runs it.

    Fits a zero-mean Gaussian mixture sum_k pi_k N(0, U_k) to the rows of ``Bhat``
    observed with per-row error covariance diag(s_j) V diag(s_j), by EM started from
    ``init`` with equal proportions, stopping when the average log-likelihood rises by
    no more than ``tol`` (mashr's ``bovy_wrapper`` defaults: ``tol = 1e-6``, fixed
    zero means, no split-and-merge, no regularisation). As in Bovy's C code the
    M-step follows the last E-step, and the EM keeps each U_k in the span of its
    start (a rank-one start stays rank one).

    Then, as mashr's ``bovy_wrapper`` does after ``extreme_deconvolution`` (mashr
    0.2.81, ``R/ed.R``; mashr issue #91), ``epsilon = diag(1 / sqrt(n))`` is added to
    every fitted covariance, n being the number of rows fitted. The covariances that
    enter the mash prior are therefore full rank. ``pi`` and ``avg_loglik`` are those
    of the EM, before the addition.

    When the EM has not converged after ``maxiter`` iterations the result is returned
    as it stands with ``converged = False`` (mashr's limit is 1e9 iterations, in effect
    none); the caller decides whether to warn.

    Parameters
    ----------
    data
        The mash data (its V is used for the error covariances).
    init
        Initial covariances (usually :func:`cov_pca`).
    subset
        Rows to fit (usually the strong rows); all rows when ``None``.
    tol
        Convergence threshold on the rise in average log-likelihood.
    maxiter
        Maximum EM iterations.
    """
    B = data.Bhat if subset is None else data.Bhat[subset]
    S = data.Shat if subset is None else data.Shat[subset]
    n, R = B.shape
    K = len(init)
    if n == 0:
        raise FitError("cov_ed: the subset is empty")
    # error covariance entries diag(s_j) V diag(s_j), as (n, 1) columns over the batch (n, K)
    err = [[(S[:, i] * data.V[i, j] * S[:, j])[:, None] for j in range(R)] for i in range(R)]
    b = [B[:, r][:, None] for r in range(R)]
    U = init.matrices.copy()
    pi = np.full(K, 1.0 / K)
    const = -0.5 * R * np.log(2.0 * np.pi)
    frozen = np.zeros(K, dtype=bool)
    old = avg = -np.inf
    converged = False
    n_iter = 0
    while n_iter < maxiter:
        n_iter += 1
        Uk = U.copy()
        chol = BatchedCholesky(lambda i, j, Uk=Uk: err[i][j] + Uk[None, :, i, j], R)
        y = chol.forward(b)
        quad = sum(v * v for v in y)
        with np.errstate(divide="ignore"):
            logq = np.log(pi)[None, :] + const - 0.5 * chol.logdet() - 0.5 * quad
        mx = logq.max(axis=1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(logq - mx).sum(axis=1))
        q = np.exp(logq - lse[:, None])
        avg = float(lse.mean())
        # M-step: U_k = sum_j q_jk (b_jk b_jk' + B_jk) / sum_j q_jk with
        # b_jk = U_k T_jk^{-1} y_j and B_jk = U_k - U_k T_jk^{-1} U_k (T_jk = U_k + error).
        qk = q.sum(axis=0)
        qk[qk < np.finfo(float).tiny] = 0.0
        z = chol.backward(y)
        bk = [sum(Uk[None, :, r, s] * z[s] for s in range(R)) for r in range(R)]
        W = [chol.forward([Uk[None, :, i, c] for i in range(R)]) for c in range(R)]
        new = np.empty_like(U)
        for r in range(R):
            for t in range(r, R):
                inner = bk[r] * bk[t] - sum(W[r][i] * W[t][i] for i in range(R))
                new[:, r, t] = (q * inner).sum(axis=0) + qk * Uk[:, r, t]
                new[:, t, r] = new[:, r, t]
        upd = ~frozen & (qk > 0)
        U[upd] = new[upd] / qk[upd, None, None]
        # a component that loses all its mass keeps its last value, as in Bovy's code
        frozen |= qk == 0
        pi = qk / n
        if n_iter > 1 and avg - old <= tol:
            converged = True
            break
        old = avg
    names = tuple(f"ED_{nm}" for nm in init.names)
    U = U + np.eye(R)[None, :, :] / np.sqrt(n)  # mashr bovy_wrapper's epsilon
    return EDResult(CovarianceSet(names, U), pi, avg, n_iter, converged)


def normalize_covariances(cov: CovarianceSet) -> CovarianceSet:
    """Divide each matrix by its largest diagonal element (mashr ``normalize_Ulist``)."""
    d = np.diagonal(cov.matrices, axis1=1, axis2=2).max(axis=1)
    scale = np.where(d != 0, d, 1.0)
    return CovarianceSet(cov.names, cov.matrices / scale[:, None, None])
