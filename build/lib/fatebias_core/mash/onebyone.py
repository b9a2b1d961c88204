"""Condition-by-condition shrinkage (mashr ``mash_1by1``) and the strong set it selects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ash import ash
from .data import MashData
from .parallel import map_blocks


@dataclass(frozen=True)
class OneByOneResult:
    """ash run separately on each condition.

    Attributes
    ----------
    mean, sd, lfsr
        (J, R) posterior means, SDs and local false sign rates.
    loglik
        Sum over conditions of the ash log-likelihoods.
    """

    mean: np.ndarray
    sd: np.ndarray
    lfsr: np.ndarray
    loglik: float


def mash_1by1(data: MashData) -> OneByOneResult:
    """Run :func:`ash` (normal mixture, point mass, nullbiased prior) on each condition.

    As in mashr, V is ignored: each condition is shrunk on its own (the conditions'
    fits run on threads, :mod:`.parallel`).
    """
    fits = map_blocks(lambda r: ash(data.Bhat[:, r], data.Shat[:, r]), range(data.n_conditions))
    mean = np.stack([f.postmean for f in fits], axis=1)
    sd = np.stack([f.postsd for f in fits], axis=1)
    lfsr = np.stack([f.lfsr for f in fits], axis=1)
    loglik = 0.0
    for f in fits:
        loglik += f.loglik
    return OneByOneResult(mean, sd, lfsr, loglik)


def get_significant_results(lfsr: np.ndarray, thresh: float = 0.05) -> np.ndarray:
    """Rows whose smallest lfsr is below ``thresh``, most significant first (mashr
    ``get_significant_results``)."""
    top = lfsr.min(axis=1)
    sig = np.flatnonzero(top < thresh)
    return sig[np.argsort(top[sig], kind="stable")]
