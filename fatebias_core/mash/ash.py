"""Univariate adaptive shrinkage (ashr ``ash``) with a normal scale-mixture prior.

The prior on each effect is pi_0 delta_0 + sum_k pi_k N(0, sigma_k^2) over ashr's
automatic grid (``autoselect.mixsd``, multiplier sqrt(2)); the weights are fitted by
penalised maximum likelihood (prior ``nullbiased``, nullweight 10, as ashr's default
``method = "fdr"``), and each effect gets its posterior mean, SD, lfsr, lfdr and the
q- and s-values derived from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from ..errors import InputDataError
from .grid import GRIDMULT, autoselect_grid
from .mixture_weights import fit_mixture_weights, set_prior
from .posterior import compute_lfsr


@dataclass(frozen=True)
class AshFit:
    """ash fit and posterior summaries for n effects.

    Attributes
    ----------
    pi
        (K,) fitted mixture proportions.
    mixsd
        (K,) component standard deviations (0 for the point mass, first).
    postmean, postsd, lfsr, lfdr, negative_prob, qvalue, svalue
        (n,) posterior summaries; ``qvalue`` is ashr's q-value (from lfdr) and
        ``svalue`` its s-value (from lfsr).
    loglik
        Log-likelihood of the data under the fitted prior.
    """

    pi: np.ndarray
    mixsd: np.ndarray
    postmean: np.ndarray
    postsd: np.ndarray
    lfsr: np.ndarray
    lfdr: np.ndarray
    negative_prob: np.ndarray
    qvalue: np.ndarray
    svalue: np.ndarray
    loglik: float


def ash(
    betahat: np.ndarray,
    sebetahat: np.ndarray,
    pointmass: bool = True,
    prior: str = "nullbiased",
    nullweight: float = 10.0,
    gridmult: float = GRIDMULT,
    mixsd: np.ndarray | None = None,
    pi_thresh: float = 1e-10,
    tol: float = 1e-10,
) -> AshFit:
    """ashr ``ash(betahat, sebetahat, mixcompdist = "normal")`` with its defaults.

    Parameters
    ----------
    betahat
        (n,) estimates, finite.
    sebetahat
        (n,) standard errors, finite and positive.
    pointmass
        Include the point mass at zero.
    prior
        ``"nullbiased"`` or ``"uniform"`` Dirichlet penalty on the weights.
    nullweight
        Penalty of the null component under ``"nullbiased"``.
    gridmult
        Ratio of adjacent grid standard deviations.
    mixsd
        Grid of standard deviations (without the point mass); automatic when ``None``.
    pi_thresh
        Components with weight at or below this are left out of the posterior.
    tol
        KKT tolerance of the mixture-weight optimisation.
    """
    b = np.asarray(betahat, dtype=np.float64).ravel()
    s = np.asarray(sebetahat, dtype=np.float64).ravel()
    if b.shape != s.shape:
        raise InputDataError(f"betahat has {b.size} values but sebetahat has {s.size}")
    if b.size == 0:
        raise InputDataError("ash needs at least one effect")
    if not np.isfinite(b).all():
        raise InputDataError(f"betahat has {int((~np.isfinite(b)).sum())} NaN/infinite value(s)")
    if not (np.isfinite(s) & (s > 0)).all():
        raise InputDataError(f"sebetahat has {int((~(np.isfinite(s) & (s > 0))).sum())} non-positive or non-finite value(s)")
    sd = autoselect_grid(b, s, gridmult) if mixsd is None else np.asarray(mixsd, dtype=np.float64)
    if pointmass:
        sd = np.concatenate([[0.0], sd])
    K = sd.size
    null_comp = int(np.argmin(sd))
    pvec = set_prior(K, prior, nullweight, null_comp)

    tot_var = s[:, None] ** 2 + sd[None, :] ** 2
    ll = -0.5 * (math.log(2.0 * math.pi) + np.log(tot_var) + b[:, None] ** 2 / tot_var)
    lnorm = ll.max(axis=1)
    lik = np.exp(ll - lnorm[:, None])

    pi = np.zeros(K)
    nonzero = lik.max(axis=0) > 0
    lk, pk = lik[:, nonzero], pvec[nonzero]
    if lk.shape[1] == 1:
        pi[nonzero] = 1.0
    elif pk[1:].max() > 1 or np.min(_null_gradient(lk) + pk[0] - 1) < 0:
        pi[nonzero] = fit_mixture_weights(lk, pk, tol=tol).x
    else:
        # the gradient at the global null points inwards: pi = (1, 0, ..., 0) is optimal
        pi[np.flatnonzero(nonzero)[0]] = 1.0
    pi = np.maximum(pi, 0.0)

    keep = pi > pi_thresh
    w = lik[:, keep] * pi[keep]
    w /= w.sum(axis=1, keepdims=True)
    sk = sd[keep]
    shrink = sk**2 / (sk**2 + s[:, None] ** 2)  # (n, k)
    mu = shrink * b[:, None]
    var = shrink * s[:, None] ** 2
    postmean = (w * mu).sum(axis=1)
    postsd = np.sqrt(np.maximum((w * (mu**2 + var)).sum(axis=1) - postmean**2, 0.0))
    is_zero = var == 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        pneg = np.where(is_zero, 0.0, ndtr(-mu / np.sqrt(var)))
    lfdr = (w * is_zero).sum(axis=1)
    negp = (w * pneg).sum(axis=1)
    lfsr = compute_lfsr(negp, lfdr)
    loglik = float(np.sum(np.log(lik @ pi) + lnorm))
    return AshFit(pi, sd, postmean, postsd, lfsr, lfdr, negp, qval_from_lfdr(lfdr), qval_from_lfdr(lfsr), loglik)


def qval_from_lfdr(lfdr: np.ndarray) -> np.ndarray:
    """ashr ``qval.from.lfdr``: the mean of the sorted local rates up to each one (ties in sort order)."""
    lfdr = np.asarray(lfdr, dtype=np.float64)
    order = np.argsort(lfdr, kind="stable")
    q = np.empty_like(lfdr)
    q[order] = np.cumsum(lfdr[order]) / np.arange(1, lfdr.size + 1)
    return q


def _null_gradient(lik: np.ndarray) -> np.ndarray:
    """ashr ``gradient``: n - colSums(lik / lik[, 1]), tiny entries nudged by 1e-99."""
    lm = lik.copy()
    small = np.abs(lm) < 10e-100
    lm[small] += 10e-100
    return lik.shape[0] - (lm / lm[:, [0]]).sum(axis=0)
