"""The ``r`` mash backend: the same modes run by R mashr through rpy2 (``mash_backend: r``).

Needs the optional extra ``pip install fatebias[r]`` (rpy2) and an R with the mashr
package (``install.packages("mashr")``). Standard-error inflation and the V
regularisation stay in :mod:`fatebias_core.mash.modes`, shared with the native backend;
R runs ``estimate_null_correlation_simple``, ``cov_canonical``, ``mash_1by1``,
``cov_pca``, ``cov_ed`` and ``mash``, and the posterior summaries are read with ashr's
generics (``get_pm``, ``get_psd``, ``get_lfsr``, ``get_loglik``), which mashr imports
from ashr but does not export.

P(|b| >= eps) (``plarge``) is not something mashr reports. It is computed from R's
fitted mixture (``fitted_g``: the weights pi, the normalised covariances, the grid and
the point mass) by the native posterior code (:func:`compute_posterior_matrices`), on
the same data and V; the posterior means, SDs and lfsr stay R's.

A failure in R raises :class:`RBackendError`, one line carrying R's own message; the
fit is never retried with another model. The only exception is the one the native
backend shares: too few null rows to estimate V, after which V is the identity (a
warning says so).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from fatebias_core.errors import FatebiasError

from .covariances import CovarianceSet
from .data import MashData
from .likelihood import expand_covariances, likelihood_matrix
from .modes import BackendFit, ModeSettings
from .null_correlation import NotEnoughNullDataError
from .posterior import PosteriorMatrices, compute_posterior_matrices

_R_FIT = r"""
function(B, S, V, conditions, prior, nullweight, usepointmass, datadriven,
         npc, strong_thresh, min_strong, ed_maxiter) {
  colnames(B) <- conditions
  colnames(S) <- conditions
  data <- mashr::mash_set_data(B, S, V = V)
  U <- mashr::cov_canonical(data)
  n_strong <- -1L
  if (datadriven) {
    m1 <- mashr::mash_1by1(data)
    strong <- mashr::get_significant_results(m1, strong_thresh)
    n_strong <- length(strong)
    if (n_strong >= min_strong) {
      U.pca <- mashr::cov_pca(data, npc, subset = strong)
      U.ed <- mashr::cov_ed(data, U.pca, subset = strong, maxiter = ed_maxiter)
      U <- c(U, U.ed)
    }
  }
  m <- mashr::mash(data, U, prior = prior, nullweight = nullweight,
                   usepointmass = usepointmass, output_lfdr = TRUE, verbose = FALSE)
  pi <- mashr::get_estimated_pi(m)
  g <- m$fitted_g
  list(mean = unname(ashr::get_pm(m)), sd = unname(ashr::get_psd(m)),
       lfsr = unname(ashr::get_lfsr(m)), lfdr = unname(m$result$lfdr),
       neg = unname(m$result$NegativeProb), loglik = ashr::get_loglik(m),
       pi = unname(pi), pi_names = names(pi), cov_names = names(U),
       n_strong = n_strong, g_pi = unname(g$pi), g_U = unname(simplify2array(g$Ulist)),
       g_grid = unname(g$grid), g_usepointmass = g$usepointmass)
}
"""

_R_NULLCOR = r"""
function(B, S) mashr::estimate_null_correlation_simple(mashr::mash_set_data(B, S))
"""


class RBackendError(FatebiasError):
    """A step failed in R; the message is R's, on one line."""


def r_backend_available() -> tuple[bool, str]:
    """Whether rpy2 imports and R loads mashr; the reason when not."""
    try:
        _r_session()
    except FatebiasError as exc:
        return False, str(exc)
    return True, ""


def _r_session() -> Any:
    """Import rpy2, start R and load mashr, or raise one clear FatebiasError."""
    # rpy2 reports its start-up (R home, library paths) at INFO level; keep it out of the run's log
    logging.getLogger("rpy2").setLevel(logging.WARNING)
    ld_before = os.environ.get("LD_LIBRARY_PATH")
    try:
        try:
            import rpy2.robjects as ro
            from rpy2.robjects.packages import isinstalled
        except Exception as exc:  # ImportError, or R itself missing/misconfigured
            raise FatebiasError(
                f"mash_backend 'r' needs rpy2 and R (pip install 'fatebias[r]'): {type(exc).__name__}: {exc}"
            ) from None
        if not isinstalled("mashr"):
            raise FatebiasError(
                "mash_backend 'r': the R package mashr is not installed in this R "
                "(in R: install.packages(\"mashr\"))"
            )
    finally:
        # Starting R, rpy2 prepends R's library folders (e.g. /usr/lib/x86_64-linux-gnu) to
        # LD_LIBRARY_PATH. That cannot affect this process any more, but every child
        # process would inherit it and could load the system's libpython instead of its
        # own interpreter's; put it back.
        _restore_env("LD_LIBRARY_PATH", ld_before)
    return ro


def _restore_env(name: str, value: str | None) -> None:
    """Set environment variable ``name`` back to ``value`` (unset when ``None``)."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class RBackend:
    """R mashr through rpy2. A failure in R is an :class:`RBackendError`, never retried."""

    name = "r"
    retries_failed_fit = False

    def __init__(self) -> None:
        ro = _r_session()
        from rpy2.robjects import numpy2ri
        from rpy2.robjects.conversion import localconverter

        self._ro = ro
        self._numpy2ri = numpy2ri
        self._localconverter = localconverter
        self._fit = ro.r(_R_FIT)
        self._nullcor = ro.r(_R_NULLCOR)
        self._error = _rpy2_error_type()

    def _to_r(self, x: Any) -> Any:
        """A numpy array as an R matrix/vector (inputs only; outputs are read explicitly)."""
        if not isinstance(x, np.ndarray):
            return x
        conv = self._ro.default_converter + self._numpy2ri.converter
        with self._localconverter(conv):
            return self._ro.conversion.get_conversion().py2rpy(x)

    def _call(self, fn: Any, *args: Any) -> Any:
        return fn(*(self._to_r(a) for a in args))

    def null_correlation(self, data: MashData) -> np.ndarray:
        try:
            V = self._call(self._nullcor, data.Bhat, data.Shat)
        except self._error as exc:
            if "not enough null data" in str(exc):
                raise NotEnoughNullDataError(f"R mashr: {str(exc).strip()}") from None
            raise RBackendError(f"R mashr estimate_null_correlation_simple failed: {_r_message(exc)}") from None
        R = data.n_conditions
        return _r_numeric(V).reshape((R, R), order="F")

    def fit(self, data: MashData, settings: ModeSettings, datadriven: bool) -> BackendFit:
        ro = self._ro
        args = (
            data.Bhat,
            data.Shat,
            data.V,
            ro.StrVector(list(data.conditions)),
            settings.prior,
            float(settings.nullweight),
            bool(settings.usepointmass),
            bool(datadriven),
            int(min(settings.npc, data.n_conditions)),
            float(settings.strong_lfsr),
            int(settings.min_strong),
            float(settings.ed_maxiter),
        )
        try:
            res = self._call(self._fit, *args)
        except self._error as exc:
            raise RBackendError(f"R mashr {settings.mode} fit failed: {_r_message(exc)}") from None
        J, R = data.Bhat.shape

        def mat(name: str) -> np.ndarray:
            # R matrices are stored column-major
            return _r_numeric(res.rx2(name)).reshape((J, R), order="F")

        plarge = None
        if settings.eps is not None:
            plarge = fitted_g_posterior(res, data, settings).plarge
        posterior = PosteriorMatrices(
            mat("mean"), mat("sd"), mat("lfsr"), mat("lfdr"), mat("neg"), plarge, settings.eps
        )
        pi = _r_numeric(res.rx2("pi"))
        pi_names = [str(s) for s in res.rx2("pi_names")]
        n_strong_raw = _r_numeric(res.rx2("n_strong"))[0]
        n_strong = None if n_strong_raw < 0 else int(n_strong_raw)
        return BackendFit(
            posterior=posterior,
            loglik=float(_r_numeric(res.rx2("loglik"))[0]),
            weights=dict(zip(pi_names, (float(v) for v in pi), strict=True)),
            covariance_names=tuple(str(s) for s in res.rx2("cov_names")),
            n_strong=n_strong,
        )


def fitted_g_posterior(res: Any, data: MashData, settings: ModeSettings) -> PosteriorMatrices:
    """The native posterior summaries (with P(|b| >= eps)) under R's fitted mixture ``res``."""
    R = data.n_conditions
    U = _r_numeric(res.rx2("g_U")).reshape((R, R, -1), order="F").transpose(2, 0, 1)
    names = tuple(str(s) for s in res.rx2("cov_names"))
    usepointmass = bool(res.rx2("g_usepointmass")[0])
    prior = expand_covariances(CovarianceSet(names, np.ascontiguousarray(U)), _r_numeric(res.rx2("g_grid")), usepointmass)
    pi = _r_numeric(res.rx2("g_pi"))
    lik = likelihood_matrix(data, prior, settings.chunk_rows).lik
    return compute_posterior_matrices(data, prior, pi, lik, chunk_rows=settings.chunk_rows, eps=settings.eps)


def _r_message(exc: BaseException) -> str:
    """R's error message on one line (rpy2 puts it in the exception's text)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _r_numeric(x: Any) -> np.ndarray:
    """An R numeric or integer vector or matrix as a flat float64 array."""
    return np.array([float(v) for v in x], dtype=np.float64)


def _rpy2_error_type() -> type[Exception]:
    try:
        from rpy2.rinterface_lib.embedded import RRuntimeError

        return RRuntimeError
    except ImportError:  # pragma: no cover - older rpy2
        from rpy2.rinterface import RRuntimeError  # type: ignore[attr-defined,no-redef]

        return RRuntimeError
