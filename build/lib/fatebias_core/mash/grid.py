"""The scale grid of mashr's ``autoselect_grid`` (= ashr's ``autoselect.mixsd`` at mode 0)."""

from __future__ import annotations

import math

import numpy as np

GRIDMULT = math.sqrt(2.0)


def autoselect_grid(Bhat: np.ndarray, Shat: np.ndarray, mult: float = GRIDMULT) -> np.ndarray:
    """Grid of prior standard deviations, from small against the smallest SE to large against
    the largest effect.

    ``gmin = min(Shat) / 10``; ``gmax = 2 sqrt(max(Bhat^2 - Shat^2))`` (``8 gmin`` when no
    estimate exceeds its SE); the grid is ``mult^(-npoint..0) * gmax`` with
    ``npoint = ceil(log2(gmax / gmin) / log2(mult))``. Entries with zero or non-finite
    SE are ignored, as in mashr.

    Parameters
    ----------
    Bhat, Shat
        Estimates and standard errors (any shape, same shape).
    mult
        Ratio of adjacent grid values; 0 gives the two-point grid ``(0, gmax / 2)``.

    Returns
    -------
    numpy.ndarray
        Increasing grid values (standard deviations).
    """
    B = np.asarray(Bhat, dtype=np.float64).ravel()
    S = np.asarray(Shat, dtype=np.float64).ravel()
    keep = (S != 0) & np.isfinite(S) & ~np.isnan(B)
    B, S = B[keep], S[keep]
    gmin = S.min() / 10.0
    if np.all(B**2 <= S**2):
        gmax = 8.0 * gmin
    else:
        gmax = 2.0 * math.sqrt(float(np.max(B**2 - S**2)))
    if mult == 0:
        return np.array([0.0, gmax / 2.0])
    npoint = math.ceil(math.log2(gmax / gmin) / math.log2(mult))
    return mult ** np.arange(-npoint, 1, dtype=np.float64) * gmax
