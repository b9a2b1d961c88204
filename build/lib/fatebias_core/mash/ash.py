"""Univariate adaptive shrinkage (ashr ``ash``): normal or uniform mixture priors.

With ``mixcompdist = "normal"`` (ashr's default) the prior on each effect is
pi_0 delta_0 + sum_k pi_k N(0, sigma_k^2) over ashr's automatic grid
(``autoselect.mixsd``, multiplier sqrt(2)). With ``"uniform"`` the components are
U[-sigma_k, sigma_k]; with ``"halfuniform"`` they are U[-sigma_k, 0] and U[0, sigma_k]
(any unimodal prior, possibly asymmetric); ``grange`` truncates the uniform components
to a range and drops the duplicates that truncation makes, as ashr's ``constrain_mix``
does. The weights are fitted by penalised maximum likelihood (mix-SQP), and each effect
gets its posterior mean, SD, lfsr, lfdr and the q- and s-values derived from them.

Two named settings (:data:`ASH_SETTINGS`, the ``ash_settings`` configuration field):

``default``
    ashr's defaults: normal mixture, point mass at zero, ``nullbiased`` prior
    (nullweight 10).
``seed``
    the seed pipeline's call ``ash(betahat, sebetahat, mixcompdist = "halfuniform",
    pointmass = FALSE, prior = "uniform", grange = range(betahat))``. Without a point
    mass no effect is exactly zero a posteriori, so lfdr and the q-value are 0 for every
    row and the rule "lfsr < 0.05 and q < 0.10" reduces to lfsr < 0.05.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import log_ndtr, ndtr

from fatebias_core.errors import InputDataError

from .grid import GRIDMULT, autoselect_grid
from .mixsqp_r import mixsqp_r
from .mixture_weights import fit_mixture_weights, set_prior
from .posterior import compute_lfsr

MIXCOMPDISTS = ("normal", "uniform", "halfuniform")

ASH_SETTINGS: dict[str, dict[str, Any]] = {
    "default": {"mixcompdist": "normal", "pointmass": True, "prior": "nullbiased"},
    "seed": {"mixcompdist": "halfuniform", "pointmass": False, "prior": "uniform", "grange": "betahat"},
}
"""Named ash settings: keyword arguments of :func:`ash` (``grange = "betahat"`` stands
for ``range(betahat)``, resolved by :func:`ash_with_settings`)."""


@dataclass(frozen=True)
class AshFit:
    """ash fit and posterior summaries for n effects.

    Attributes
    ----------
    pi
        (K,) fitted mixture proportions.
    mixsd
        (K,) normal components: their standard deviations (0 for the point mass,
        first); uniform components: max(|a|, |b|) (0 for a point mass).
    mixcompdist
        ``normal``, ``uniform`` or ``halfuniform``.
    a, b
        (K,) uniform components: lower and upper ends (both 0 for a point mass);
        normal components: ``-inf`` and ``inf``.
    postmean, postsd, lfsr, lfdr, negative_prob
        (n,) posterior summaries.
    loglik
        Log-likelihood of the data under the fitted prior.
    qvalue, svalue
        (n,) ashr's q-value (from lfdr) and s-value (from lfsr), computed when first
        asked for (two sorts; ``mash_1by1`` needs neither).
    """

    pi: np.ndarray
    mixsd: np.ndarray
    mixcompdist: str
    a: np.ndarray
    b: np.ndarray
    postmean: np.ndarray
    postsd: np.ndarray
    lfsr: np.ndarray
    lfdr: np.ndarray
    negative_prob: np.ndarray
    loglik: float

    @functools.cached_property
    def qvalue(self) -> np.ndarray:
        """ashr's q-value: the running mean of the sorted lfdr."""
        return qval_from_lfdr(self.lfdr)

    @functools.cached_property
    def svalue(self) -> np.ndarray:
        """ashr's s-value: the running mean of the sorted lfsr."""
        return qval_from_lfdr(self.lfsr)


def ash(
    betahat: np.ndarray,
    sebetahat: np.ndarray,
    mixcompdist: str = "normal",
    pointmass: bool = True,
    prior: str = "nullbiased",
    nullweight: float = 10.0,
    gridmult: float = GRIDMULT,
    mixsd: np.ndarray | None = None,
    grange: tuple[float, float] = (-math.inf, math.inf),
    pi_thresh: float = 1e-10,
    tol: float = 1e-10,
    optimizer: str = "mixsqp_r",
) -> AshFit:
    """ashr ``ash(betahat, sebetahat, ...)`` at mode 0 with a normal likelihood.

    The defaults are ashr's ``ash(betahat, sebetahat, mixcompdist = "normal")``.

    Parameters
    ----------
    betahat
        (n,) estimates, finite.
    sebetahat
        (n,) standard errors, finite and positive.
    mixcompdist
        ``"normal"`` (N(0, sigma_k^2)), ``"uniform"`` (U[-sigma_k, sigma_k]) or
        ``"halfuniform"`` (U[-sigma_k, 0] and U[0, sigma_k]).
    pointmass
        Include the point mass at zero.
    prior
        ``"nullbiased"`` or ``"uniform"`` Dirichlet penalty on the weights.
    nullweight
        Penalty of the null component under ``"nullbiased"``.
    gridmult
        Ratio of adjacent grid values.
    mixsd
        Grid (standard deviations or half-widths, without the point mass); automatic
        when ``None``.
    grange
        (lower, upper) range of the prior: uniform components are truncated to it and
        duplicates dropped (ashr's ``constrain_mix``). A range that ends at 0 turns
        ``uniform``/``halfuniform`` into one-sided components, as in ashr. Must be
        unbounded for ``"normal"``.
    pi_thresh
        Components with weight at or below this are left out of the posterior.
    tol
        KKT tolerance of the mixture-weight optimisation (``optimizer = "optimum"``).
    optimizer
        ``"mixsqp_r"``: the weights R's mixsqp finds with ashr's settings
        (:func:`~fatebias_core.mash.mixsqp_r.mixsqp_r`), which can stop short of the
        optimum where the likelihood is flat; ``"optimum"``: iterate to the optimum
        (:func:`~fatebias_core.mash.mixture_weights.fit_mixture_weights`).
    """
    b, s, lo, hi = _checked_inputs(betahat, sebetahat, mixcompdist, grange, optimizer)
    sd = autoselect_grid(b, s, gridmult) if mixsd is None else np.asarray(mixsd, dtype=np.float64)
    if pointmass:
        sd = np.concatenate([[0.0], sd])
    pvec = set_prior(sd.size, prior, nullweight, int(np.argmin(sd)))
    ll, ca, cb, pvec = _component_loglik(b, s, sd, pvec, mixcompdist, lo, hi)
    lnorm = ll.max(axis=1)
    lik = np.exp(ll - lnorm[:, None])
    pi = _mixture_weights(lik, pvec, optimizer, tol)

    keep = pi > pi_thresh
    w = lik[:, keep] * pi[keep]
    w /= w.sum(axis=1, keepdims=True)
    if mixcompdist == "normal":
        postmean, postsd, is_zero, pneg = _normal_posterior(b, s, sd[keep], w)
        mixsd_out = sd
    else:
        postmean, postsd, is_zero, pneg = _uniform_mixture_posterior(b, s, ca[keep], cb[keep], w)
        mixsd_out = np.maximum(np.abs(ca), np.abs(cb))
    lfdr = (w * is_zero).sum(axis=1)
    negp = (w * pneg).sum(axis=1)
    lfsr = compute_lfsr(negp, lfdr)
    loglik = float(np.sum(np.log(lik @ pi) + lnorm))
    return AshFit(pi, mixsd_out, mixcompdist, ca, cb, postmean, postsd, lfsr, lfdr, negp, loglik)


def _checked_inputs(
    betahat: np.ndarray,
    sebetahat: np.ndarray,
    mixcompdist: str,
    grange: tuple[float, float],
    optimizer: str,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Flat float64 estimates and standard errors and the range (lo, hi), after checking all."""
    if optimizer not in ("mixsqp_r", "optimum"):
        raise ValueError(f"optimizer must be 'mixsqp_r' or 'optimum', got {optimizer!r}")
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
    if mixcompdist not in MIXCOMPDISTS:
        raise ValueError(f"mixcompdist must be one of {', '.join(MIXCOMPDISTS)}, got {mixcompdist!r}")
    lo, hi = float(min(grange)), float(max(grange))
    if mixcompdist == "normal" and (lo > -math.inf or hi < math.inf):
        raise ValueError("grange applies to uniform mixture components only (a normal mixture is unbounded)")
    return b, s, lo, hi


def _component_loglik(
    b: np.ndarray,
    s: np.ndarray,
    sd: np.ndarray,
    pvec: np.ndarray,
    mixcompdist: str,
    lo: float,
    hi: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(n, K) log likelihood of each effect under each component; the components' ends and penalties."""
    if mixcompdist == "normal":
        # formed as (K, n) and returned transposed: column-major, each component's column
        # contiguous, which the mixture-weight iterations read fastest
        tot_var = sd[:, None] ** 2 + s[None, :] ** 2
        ll = -0.5 * (math.log(2.0 * math.pi) + np.log(tot_var) + b[None, :] ** 2 / tot_var)
        return ll.T, np.full(sd.size, -math.inf), np.full(sd.size, math.inf), pvec
    ca, cb, pvec = _uniform_components(sd, pvec, mixcompdist, lo, hi)
    return _uniform_log_density(b, s, ca, cb), ca, cb, pvec


def _mixture_weights(lik: np.ndarray, pvec: np.ndarray, optimizer: str, tol: float) -> np.ndarray:
    """(K,) fitted mixture proportions (components that no effect supports get 0)."""
    pi = np.zeros(lik.shape[1])
    nonzero = lik.max(axis=0) > 0
    lk, pk = (lik, pvec) if nonzero.all() else (lik[:, nonzero], pvec[nonzero])
    if lk.shape[1] == 1:
        pi[nonzero] = 1.0
    elif pk[1:].max() > 1 or np.min(_null_gradient(lk) + pk[0] - 1) < 0:
        if optimizer == "optimum":
            pi[nonzero] = fit_mixture_weights(lk, pk, tol=tol).x
        else:
            # ashr's mixSQP: one identity row of weight prior_k - 1 per penalised component
            pen = np.flatnonzero(pk != 1)
            A = lk
            if pen.size:  # stacked in lk's memory order (column-major for a normal mixture)
                A = np.empty((pen.size + lk.shape[0], pk.size), order="F" if lk.flags.f_contiguous else "C")
                A[: pen.size] = np.eye(pk.size)[pen]
                A[pen.size :] = lk
            wts = np.concatenate([pk[pen] - 1.0, np.ones(lk.shape[0])])
            pi[nonzero] = mixsqp_r(A, wts, overwrite=pen.size > 0).x
    else:
        # the gradient at the global null points inwards: pi = (1, 0, ..., 0) is optimal
        pi[np.flatnonzero(nonzero)[0]] = 1.0
    return np.maximum(pi, 0.0)


def _normal_posterior(
    b: np.ndarray, s: np.ndarray, sk: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mean and SD over normal components ``sk``, and each one's point mass and P(< 0)."""
    shrink = sk**2 / (sk**2 + s[:, None] ** 2)  # (n, k)
    mu = shrink * b[:, None]
    var = shrink * s[:, None] ** 2
    postmean = (w * mu).sum(axis=1)
    postsd = np.sqrt(np.maximum((w * (mu**2 + var)).sum(axis=1) - postmean**2, 0.0))
    is_zero = var == 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        pneg = np.where(is_zero, 0.0, ndtr(-mu / np.sqrt(var)))
    return postmean, postsd, is_zero, pneg


def _uniform_mixture_posterior(
    b: np.ndarray, s: np.ndarray, a: np.ndarray, c: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mean and SD over uniform components U[a, c], and each one's point mass and P(< 0)."""
    m1, m2, pneg = _uniform_posterior(b, s, a, c)
    postmean = (w * m1).sum(axis=1)
    second = np.maximum((w * m2).sum(axis=1), 0.0)
    postsd = np.sqrt(np.maximum(second - postmean**2, 0.0))
    is_zero = np.broadcast_to((a == 0.0) & (c == 0.0), w.shape)
    return postmean, postsd, is_zero, pneg


def ash_with_settings(betahat: np.ndarray, sebetahat: np.ndarray, settings: str = "default") -> AshFit:
    """:func:`ash` with one of the named :data:`ASH_SETTINGS` (``default`` or ``seed``).

    ``seed`` is ``mixcompdist = "halfuniform", pointmass = False, prior = "uniform",
    grange = range(betahat)``: lfdr and the q-value are then 0 for every row.
    """
    if settings not in ASH_SETTINGS:
        raise ValueError(f"ash settings must be one of {', '.join(ASH_SETTINGS)}, got {settings!r}")
    kwargs = dict(ASH_SETTINGS[settings])
    if kwargs.get("grange") == "betahat":
        bb = np.asarray(betahat, dtype=np.float64)
        kwargs["grange"] = (float(np.min(bb)), float(np.max(bb))) if bb.size and np.isfinite(bb).all() else (-math.inf, math.inf)
    return ash(betahat, sebetahat, **kwargs)


def _uniform_components(
    sd: np.ndarray, prior: np.ndarray, mixcompdist: str, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ends (a, b) and penalties of ashr's uniform components, constrained to [lo, hi].

    ``sd`` is the grid with the point mass (0) first when there is one; ``prior`` its
    penalties. As ashr: a range ending at the mode (0) makes the components one-sided;
    ``halfuniform`` reflects each component (the point mass once); truncation to the
    range keeps the first of any duplicated (a, b).
    """
    if mixcompdist in ("uniform", "halfuniform") and lo == 0.0:
        mixcompdist = "+uniform"
    elif mixcompdist in ("uniform", "halfuniform") and hi == 0.0:
        mixcompdist = "-uniform"
    zero = np.zeros_like(sd)
    if mixcompdist == "uniform":
        a, b = -sd, sd.copy()
    elif mixcompdist == "+uniform":
        a, b = zero, sd.copy()
    elif mixcompdist == "-uniform":
        a, b = -sd, zero
    else:  # halfuniform: U[-s, 0] for every grid value, then U[0, s] for the non-null ones
        pos = sd > 0 if sd.min() == 0 else np.ones(sd.size, dtype=bool)
        a = np.concatenate([-sd, zero[pos]])
        b = np.concatenate([zero, sd[pos]])
        prior = np.concatenate([prior, prior[pos]])
    a = np.maximum(a + 0.0, lo)  # + 0.0 turns -0.0 into 0.0
    b = np.minimum(b, hi)
    _, first = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    keep = np.sort(first)
    return a[keep], b[keep], prior[keep]


def _log_interval_prob(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """log(Phi(upper) - Phi(lower)) for lower <= upper, accurate in both tails."""
    flip = lower > 0
    lo = np.where(flip, -upper, lower)
    up = np.where(flip, -lower, upper)
    lu, ll = log_ndtr(up), log_ndtr(lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        return lu + np.log1p(-np.exp(ll - lu))


def _uniform_log_density(x: np.ndarray, s: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, K) log density of x_j under U[a_k, b_k] convolved with N(0, s_j^2) (a point mass when a = b)."""
    xs, ss = x[:, None], s[:, None]
    width = b - a
    point = width == 0
    with np.errstate(divide="ignore"):
        out = _log_interval_prob((a - xs) / ss, (b - xs) / ss) - np.log(np.where(point, 1.0, width))
    z = (xs - b) / ss
    dens = -0.5 * (math.log(2.0 * math.pi) + z**2) - np.log(ss)
    return np.where(point, dens, out)


def _uniform_posterior(
    x: np.ndarray, s: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per component, the posterior mean, mean square and P(effect < 0).

    Under U[a, b] and x ~ N(effect, s^2) the posterior is N(x, s^2) truncated to
    [a, b]: effect = x + s Z with Z a standard normal truncated to
    [(a - x) / s, (b - x) / s]. A point mass (a = b) gives a with probability one.
    """
    xs, ss = x[:, None], s[:, None]
    lo, up = (a - xs) / ss, (b - xs) / ss
    point = np.broadcast_to(a == b, lo.shape)
    m1z = _etruncnorm(lo, up)
    m2z = _e2truncnorm(lo, up)
    mean = np.where(point, a, xs + ss * m1z)
    mean2 = np.where(point, a**2, xs**2 + 2.0 * xs * ss * m1z + ss**2 * m2z)
    # P(effect < 0): 1 when b <= 0, 0 when a >= 0, else the truncated normal's mass below 0
    c = -xs / ss
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.exp(_log_interval_prob(lo, np.minimum(c, up)) - _log_interval_prob(lo, up))
    frac = np.where(np.isfinite(frac), frac, (0.0 - a) / np.where(b > a, b - a, 1.0))
    straddle = (a < 0) & (b > 0)
    pneg = np.where(b <= 0, 1.0, np.where(straddle, frac, 0.0))
    pneg = np.where(point, 0.0, pneg)
    return mean, mean2, pneg


def _etruncnorm(lo: np.ndarray, up: np.ndarray) -> np.ndarray:
    """E[Z | lo < Z < up] for a standard normal Z (ashr ``my_etruncnorm``)."""
    flip = (lo > 0) | (up > np.abs(lo))
    al = np.where(flip, -up, lo)
    be = np.where(flip, -lo, up)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ldphi_a = -0.5 * (math.log(2.0 * math.pi) + al**2)
        ldphi_b = -0.5 * (math.log(2.0 * math.pi) + be**2)
        # after the flip phi(be) >= phi(al): E[Z] = -(phi(be) - phi(al)) / (Phi(be) - Phi(al)),
        # both differences on the log scale
        lnum = ldphi_b + np.log1p(-np.exp(ldphi_a - ldphi_b))
        lden = _log_interval_prob(al, be)
        res = -np.exp(lnum - lden)
    equal = ~np.isfinite(lden)
    res = np.where(equal, (al + be) / 2.0, res)
    with np.errstate(divide="ignore", invalid="ignore"):
        lower_bd = np.maximum(be + 1.0 / be, (al + be) / 2.0)
        bad = (be < 0) & ((res < lower_bd) | (res > be))
    res = np.where(bad, lower_bd, res)
    return np.where(flip, -res, res)


def _e2truncnorm(lo: np.ndarray, up: np.ndarray) -> np.ndarray:
    """E[Z^2 | lo < Z < up] for a standard normal Z (ashr ``my_e2truncnorm``)."""
    flip = (lo > 0) & (up > 0)
    al = np.where(flip, -up, lo)
    be = np.where(flip, -lo, up)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lden = _log_interval_prob(al, be)
        ldphi_a = -0.5 * (math.log(2.0 * math.pi) + al**2)
        ldphi_b = -0.5 * (math.log(2.0 * math.pi) + be**2)
        a_frac = np.where(np.isfinite(al), al * np.exp(ldphi_a - lden), 0.0)
        b_frac = np.where(np.isfinite(be), be * np.exp(ldphi_b - lden), 0.0)
        res = 1.0 + a_frac - b_frac
        equal = ~np.isfinite(lden)
        res = np.where(equal, (al + be) ** 2 / 4.0, res)
        upper_bd = np.minimum(be**2 + 2.0 * (1.0 + 1.0 / be**2), (al**2 + al * be + be**2) / 3.0)
        bad = (be < 0) & ((res < be**2) | (res > upper_bd))
    return np.where(bad, upper_bd, res)


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
    lm[lm < 10e-100] += 10e-100  # likelihoods are non-negative
    return lik.shape[0] - lm.T @ (1.0 / lm[:, 0])
