"""Multivariate adaptive shrinkage (mash) and univariate ash, native numpy/scipy.

A reimplementation of R mashr (Urbut, Wang, Carbonetto & Stephens 2019) and ashr
(Stephens 2017) for the exchangeable-effects model, step by step as in mashr:

>>> data = mash_set_data(Bhat, Shat, V=V)               # doctest: +SKIP
>>> U = cov_canonical(data)                               # doctest: +SKIP
>>> fit = mash(data, U)                                   # doctest: +SKIP
>>> fit.posterior.mean, fit.posterior.lfsr                # doctest: +SKIP

and the two modes (conservative, enriched) on tables (:func:`mash_table`,
:func:`mash_file`) and the across-day ash summary (:func:`ash_table`,
:func:`ash_file`). ``mash_backend: r`` routes the modes through rpy2 and R mashr.
"""

from .api import AshResult, MashResult, ash_file, ash_table, mash_file, mash_table
from .ash import AshFit, ash, qval_from_lfdr
from .covariances import (
    CovarianceSet,
    EDResult,
    cov_canonical,
    cov_ed,
    cov_pca,
    normalize_covariances,
)
from .data import MashData, mash_set_data
from .fit import MashFit, mash
from .grid import autoselect_grid
from .likelihood import MixturePrior, expand_covariances, loglik_matrix, relative_likelihood
from .mixture_weights import MixtureWeightsResult, fit_mixture_weights, mixsqp, set_prior
from .modes import BackendFit, ModeFit, ModeSettings, NativeBackend, inflate_se, run_mode
from .null_correlation import (
    NotEnoughNullDataError,
    estimate_null_correlation_simple,
    nearest_correlation,
    regularize_null_correlation,
)
from .onebyone import OneByOneResult, get_significant_results, mash_1by1
from .posterior import (
    PosteriorMatrices,
    compute_lfsr,
    compute_posterior_matrices,
    compute_posterior_weights,
)

__all__ = [
    "AshFit",
    "AshResult",
    "BackendFit",
    "CovarianceSet",
    "EDResult",
    "MashData",
    "MashFit",
    "MashResult",
    "MixtureWeightsResult",
    "MixturePrior",
    "ModeFit",
    "ModeSettings",
    "NativeBackend",
    "NotEnoughNullDataError",
    "OneByOneResult",
    "PosteriorMatrices",
    "ash",
    "ash_file",
    "ash_table",
    "autoselect_grid",
    "compute_lfsr",
    "compute_posterior_matrices",
    "compute_posterior_weights",
    "cov_canonical",
    "cov_ed",
    "cov_pca",
    "estimate_null_correlation_simple",
    "expand_covariances",
    "fit_mixture_weights",
    "get_significant_results",
    "inflate_se",
    "loglik_matrix",
    "mash",
    "mash_1by1",
    "mash_file",
    "mash_set_data",
    "mash_table",
    "mixsqp",
    "nearest_correlation",
    "normalize_covariances",
    "qval_from_lfdr",
    "regularize_null_correlation",
    "relative_likelihood",
    "run_mode",
    "set_prior",
]
