"""Fit the mash model: grid, likelihood matrix, mixture weights, posteriors (mashr ``mash``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fatebias_core.errors import FitError

from .covariances import CovarianceSet, normalize_covariances
from .data import MashData
from .grid import GRIDMULT, autoselect_grid
from .likelihood import MixturePrior, expand_covariances, likelihood_matrix
from .mixture_weights import fit_mixture_weights, set_prior
from .posterior import PosteriorMatrices, compute_posterior_matrices


@dataclass(frozen=True)
class MashFit:
    """A fitted mash model and its posterior summaries.

    Attributes
    ----------
    pi
        (P,) fitted mixture proportions over the expanded components.
    prior
        The expanded mixture (component covariances, names, grid, point mass).
    covariances
        The (normalised) covariances U_k the prior was built from.
    posterior
        Posterior summaries, J x R.
    loglik
        Log-likelihood of the data under the fitted prior.
    null_loglik
        Log-likelihood under the point mass alone (``None`` without a point mass).
    n_iter
        mix-SQP iterations.
    kkt_residual
        Optimality residual of the mixture weights.
    """

    pi: np.ndarray
    prior: MixturePrior
    covariances: CovarianceSet
    posterior: PosteriorMatrices
    loglik: float
    null_loglik: float | None
    n_iter: int
    kkt_residual: float

    def weights_by_covariance(self) -> dict[str, float]:
        """Mixture weight summed over the grid for each covariance (mashr ``get_estimated_pi``)."""
        out: dict[str, float] = {}
        offset = 0
        if self.prior.usepointmass:
            out["null"] = float(self.pi[0])
            offset = 1
        K = len(self.covariances)
        per = self.pi[offset:].reshape(len(self.prior.grid), K).sum(axis=0)
        out.update({nm: float(v) for nm, v in zip(self.covariances.names, per, strict=True)})
        return out


def mash(
    data: MashData,
    covariances: CovarianceSet,
    gridmult: float = GRIDMULT,
    grid: np.ndarray | None = None,
    normalize_u: bool = True,
    usepointmass: bool = True,
    prior: str | np.ndarray = "nullbiased",
    nullweight: float = 10.0,
    pi_thresh: float = 1e-10,
    chunk_rows: int = 50_000,
    tol: float = 1e-10,
    eps: float | None = None,
) -> MashFit:
    """Fit mash as mashr's ``mash()`` does (EE model, alpha = 0).

    Parameters
    ----------
    data
        The mash data (with its null correlation V).
    covariances
        Prior covariances U_k (e.g. :func:`cov_canonical`, plus data-driven ones).
    gridmult
        Ratio of adjacent grid values for the automatic grid.
    grid
        Grid of standard deviations; automatic (:func:`autoselect_grid`) when ``None``.
    normalize_u
        Scale each U_k to unit largest diagonal element first.
    usepointmass
        Include the point mass at zero (the null component, first).
    prior
        ``"nullbiased"`` (``nullweight`` on the first component, 1 elsewhere),
        ``"uniform"``, or a vector of Dirichlet parameters.
    nullweight
        Dirichlet parameter of the first component under ``"nullbiased"``.
    pi_thresh
        Components with weight at or below this are left out of the posterior.
    chunk_rows
        Upper bound on rows per block of the likelihood and posterior computations.
    tol
        KKT tolerance of the mixture-weight optimisation.
    eps
        When given, the posterior also holds P(|b| >= eps) under the fitted mixture
        (``posterior.plarge``).
    """
    if covariances.n_conditions != data.n_conditions:
        raise FitError(
            f"covariances are {covariances.n_conditions} x {covariances.n_conditions} "
            f"but the data have {data.n_conditions} conditions"
        )
    if grid is None:
        grid = autoselect_grid(data.Bhat, data.Shat, gridmult)
    U = normalize_covariances(covariances) if normalize_u else covariances
    xprior = expand_covariances(U, grid, usepointmass)
    rel = likelihood_matrix(data, xprior, chunk_rows)
    lik, lfactors, null_ll = rel.lik, rel.lfactors, rel.null_loglik
    pvec = set_prior(xprior.n_components, prior, nullweight)
    res = fit_mixture_weights(lik, pvec, tol=tol)
    if not res.converged:
        raise FitError(f"mixture weights did not converge (KKT residual {res.kkt_residual:.2e})")
    pi = res.x
    posterior = compute_posterior_matrices(data, xprior, pi, lik, pi_thresh, chunk_rows, eps)
    loglik = float(np.sum(np.log(lik @ pi) + lfactors))
    null_loglik = float(null_ll.sum()) if null_ll is not None else None
    if not math.isfinite(loglik):
        raise FitError("mash log-likelihood is not finite")
    return MashFit(pi, xprior, U, posterior, loglik, null_loglik, res.n_iter, res.kkt_residual)
