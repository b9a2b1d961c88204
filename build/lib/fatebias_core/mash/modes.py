"""The two mash modes (conservative, enriched), backend-neutral.

Both modes: standard errors inflated and floored, the null correlation V estimated
(identity when that fails) and regularised, canonical covariances. ``enriched`` adds
PCA + extreme-deconvolution covariances learned on the rows that condition-by-condition
shrinkage calls strong, when there are enough of them. Extreme deconvolution that has
not converged by ``mash_ed_maxiter`` iterations is kept, with a warning (as mashr keeps
whatever its EM returns). If the native fit fails numerically it is retried once with
identity V and canonical covariances only; the retry is a warning, a message of the
run and a ``FALLBACK`` line of :meth:`MashResult.describe`. The R backend never
retries: a failure in R is one error carrying R's message.

The statistical steps run in a :class:`MashBackend`: :class:`NativeBackend` here,
``rbackend.RBackend`` through rpy2 and R mashr.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import ConfigError, FitError

from .blas_threads import single_threaded_blas
from .covariances import cov_canonical, cov_ed, cov_pca
from .data import MashData, mash_set_data
from .fit import mash
from .null_correlation import (
    NotEnoughNullDataError,
    estimate_null_correlation_simple,
    regularize_null_correlation,
)
from .onebyone import get_significant_results, mash_1by1
from .posterior import PosteriorMatrices

log = logging.getLogger("fatebias.mash")

Mode = Literal["conservative", "enriched"]
MODES: tuple[str, ...] = ("conservative", "enriched")


@dataclass(frozen=True)
class ModeSettings:
    """The settings of one mash mode, read from the configuration.

    ``eps`` is the effect size of the posterior probabilities P(|b| >= eps) that the
    fit reports with its posterior summaries (``effect_size_eps``; ``None``: not computed).
    """

    mode: str
    se_inflate: float
    se_floor: float
    estimate_V: bool
    v_eig_floor: float
    v_shrink_rho: float
    prior: str
    nullweight: float
    usepointmass: bool
    add_datadriven: bool
    npc: int
    strong_lfsr: float
    min_strong: int
    chunk_rows: int
    ed_maxiter: int = 100_000
    eps: float | None = 0.2

    @classmethod
    def from_config(cls, config: FatebiasConfig, mode: str) -> ModeSettings:
        """Settings of ``mode`` (``conservative`` or ``enriched``) from ``config``."""
        if mode not in MODES:
            raise ConfigError(f"mash mode must be one of {', '.join(MODES)}, got {mode!r}")
        enriched = mode == "enriched"
        if enriched and config.mash_add_datadriven_cov and config.mash_cov_pca_npc < 2:
            raise ConfigError(
                f"mash_cov_pca_npc must be at least 2 (mashr's cov_pca), got {config.mash_cov_pca_npc}"
            )
        return cls(
            mode=mode,
            se_inflate=config.mash_se_inflate,
            se_floor=config.mash_se_floor,
            estimate_V=config.mash_estimate_V,
            v_eig_floor=config.mash_v_eig_floor,
            v_shrink_rho=config.mash_v_shrink_rho,
            prior=config.mash_enriched_prior if enriched else config.mash_conservative_prior,
            nullweight=config.mash_enriched_nullweight if enriched else config.mash_conservative_nullweight,
            usepointmass=config.mash_enriched_usepointmass if enriched else config.mash_conservative_usepointmass,
            add_datadriven=enriched and config.mash_add_datadriven_cov,
            npc=config.mash_cov_pca_npc,
            strong_lfsr=config.mash_strong_lfsr_for_cov,
            min_strong=config.mash_min_strong_for_cov,
            chunk_rows=config.mash_chunk_rows,
            ed_maxiter=config.mash_ed_maxiter,
            eps=config.effect_size_eps,
        )


@dataclass(frozen=True)
class BackendFit:
    """What a backend returns for one mash fit.

    Attributes
    ----------
    posterior
        J x R posterior summaries.
    loglik
        Log-likelihood under the fitted prior.
    weights
        Mixture weight per covariance (summed over the grid), ``null`` first.
    covariance_names
        The covariances of the prior (canonical, then data-driven).
    n_strong
        Strong rows found by condition-by-condition shrinkage (``None`` when not looked for).
    warnings
        What the user should know about the fit (e.g. extreme deconvolution stopped at
        its iteration limit); :func:`run_mode` logs them as warnings.
    """

    posterior: PosteriorMatrices
    loglik: float
    weights: dict[str, float]
    covariance_names: tuple[str, ...]
    n_strong: int | None
    warnings: tuple[str, ...] = ()


class MashBackend(Protocol):
    """The statistical steps of a mode, implemented natively or through R.

    ``retries_failed_fit``: whether :func:`run_mode` may retry a failed fit with
    identity V and canonical covariances (the native backend) or must let the error
    through (the R backend).
    """

    name: str
    retries_failed_fit: bool

    def null_correlation(self, data: MashData) -> np.ndarray:
        """mashr ``estimate_null_correlation_simple``; raises NotEnoughNullDataError."""
        ...

    def fit(self, data: MashData, settings: ModeSettings, datadriven: bool) -> BackendFit:
        """Covariances (canonical, plus data-driven when asked) and the mash fit."""
        ...


class NativeBackend:
    """numpy/scipy implementation (this package).

    A fit that fails numerically is retried once by :func:`run_mode` with identity V
    and canonical covariances (``retries_failed_fit``), and says so.
    """

    name = "native"
    retries_failed_fit = True

    def null_correlation(self, data: MashData) -> np.ndarray:
        return estimate_null_correlation_simple(data)

    def fit(self, data: MashData, settings: ModeSettings, datadriven: bool) -> BackendFit:
        # one BLAS thread: the matrix products are small or split into row blocks on
        # threads already (mash.parallel); idle BLAS threads would only spin
        with single_threaded_blas():
            return self._fit(data, settings, datadriven)

    def _fit(self, data: MashData, settings: ModeSettings, datadriven: bool) -> BackendFit:
        covs = cov_canonical(data)
        n_strong = None
        warnings: list[str] = []
        if datadriven:
            strong = get_significant_results(mash_1by1(data).lfsr, settings.strong_lfsr)
            n_strong = int(strong.size)
            if n_strong >= settings.min_strong:
                npc = min(settings.npc, data.n_conditions)
                ed = cov_ed(data, cov_pca(data, npc, strong), strong, maxiter=settings.ed_maxiter)
                if not ed.converged:
                    warnings.append(
                        f"extreme deconvolution had not converged after {ed.n_iter} iterations "
                        "(mash_ed_maxiter); its covariances are used as they stand"
                    )
                covs = covs + ed.covariances
        fit = mash(
            data,
            covs,
            usepointmass=settings.usepointmass,
            prior=settings.prior,
            nullweight=settings.nullweight,
            chunk_rows=settings.chunk_rows,
            eps=settings.eps,
        )
        return BackendFit(
            fit.posterior, fit.loglik, fit.weights_by_covariance(), covs.names, n_strong, tuple(warnings)
        )


@dataclass(frozen=True)
class ModeFit:
    """One mode run on one table.

    Attributes
    ----------
    settings
        The mode's settings.
    backend
        ``native`` or ``r``.
    conditions
        Condition (day) names.
    Shat
        (J, R) standard errors after inflation and floor.
    V
        The null correlation actually used.
    V_source
        How V was obtained (estimated and regularised, identity by configuration, or
        identity because the estimate failed).
    result
        The backend's fit.
    fallback
        Why the native fit was retried with identity V and canonical covariances, else
        ``None``.
    messages
        Everything noteworthy, in order (also logged).
    """

    settings: ModeSettings
    backend: str
    conditions: tuple[str, ...]
    Shat: np.ndarray
    V: np.ndarray
    V_source: str
    result: BackendFit
    fallback: str | None
    messages: tuple[str, ...] = field(default_factory=tuple)

    @property
    def datadriven_used(self) -> bool:
        """Whether data-driven covariances entered the prior."""
        return any(n.startswith("ED_") for n in self.result.covariance_names)


def inflate_se(Shat: np.ndarray, inflate: float, floor: float) -> np.ndarray:
    """Standard errors inflated and floored: S = max(S * inflate, floor)."""
    return np.maximum(np.asarray(Shat, dtype=np.float64) * inflate, floor)


def run_mode(
    Bhat: np.ndarray,
    Shat: np.ndarray,
    settings: ModeSettings,
    conditions: tuple[str, ...] | None = None,
    backend: MashBackend | None = None,
) -> ModeFit:
    """Run one mash mode on estimates and (raw) standard errors.

    Parameters
    ----------
    Bhat, Shat
        (J, R) estimates and standard errors before inflation.
    settings
        The mode (see :meth:`ModeSettings.from_config`).
    conditions
        Condition names.
    backend
        Where the statistics run; :class:`NativeBackend` when ``None``.
    """
    backend = backend or NativeBackend()
    messages: list[str] = []

    def note(msg: str, level: int = logging.INFO) -> None:
        messages.append(msg)
        log.log(level, "mash %s: %s", settings.mode, msg)

    S = inflate_se(Shat, settings.se_inflate, settings.se_floor)
    base = mash_set_data(Bhat, S, conditions=conditions)
    R = base.n_conditions
    if settings.estimate_V:
        try:
            V_raw = backend.null_correlation(base)
            V_source = "estimated (estimate_null_correlation_simple), regularised"
        except NotEnoughNullDataError as exc:
            V_raw = np.eye(R)
            V_source = "identity (null-correlation estimate failed)"
            note(f"{exc}; using identity V", logging.WARNING)
    else:
        V_raw = np.eye(R)
        V_source = "identity (mash_estimate_V is false)"
    V = regularize_null_correlation(V_raw, settings.v_eig_floor, settings.v_shrink_rho)
    fallback = None
    try:
        result = backend.fit(base.with_V(V), settings, settings.add_datadriven)
    except (FitError, np.linalg.LinAlgError, FloatingPointError, ValueError) as exc:
        if not backend.retries_failed_fit:
            raise
        fallback = f"fit failed ({exc}); retried with identity V and canonical covariances"
        note(fallback, logging.WARNING)
        V = np.eye(R)
        V_source = "identity (fallback after a failed fit)"
        result = backend.fit(base, settings, datadriven=False)
    for warning in result.warnings:
        note(warning, logging.WARNING)
    if result.n_strong is not None:
        used = any(n.startswith("ED_") for n in result.covariance_names)
        note(
            f"{result.n_strong} strong rows (lfsr < {settings.strong_lfsr:g} in any condition): "
            + ("data-driven covariances added" if used else f"fewer than {settings.min_strong}, canonical only")
        )
    return ModeFit(settings, backend.name, base.conditions, S, V, V_source, result, fallback, tuple(messages))
