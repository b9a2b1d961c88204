"""The mash data object: effect estimates, their standard errors and the null correlation.

Mirrors mashr's ``mash_set_data`` for the exchangeable-effects model (``alpha = 0``):
row j of ``Bhat`` is distributed as N(b_j, diag(s_j) V diag(s_j)), with the true
effects b_j drawn from the mixture prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fatebias_core.errors import InputDataError


@dataclass(frozen=True)
class MashData:
    """Effects in R conditions for J units, with standard errors and error correlation.

    Attributes
    ----------
    Bhat
        (J, R) float64 effect estimates, finite.
    Shat
        (J, R) float64 standard errors, finite and positive.
    V
        (R, R) float64 error correlation matrix, symmetric positive definite.
    conditions
        R condition names (e.g. ``("d0", "d1", "d2")``).
    """

    Bhat: np.ndarray
    Shat: np.ndarray
    V: np.ndarray
    conditions: tuple[str, ...]

    @property
    def n_effects(self) -> int:
        """Number of units (rows) J."""
        return int(self.Bhat.shape[0])

    @property
    def n_conditions(self) -> int:
        """Number of conditions (columns) R."""
        return int(self.Bhat.shape[1])

    @property
    def v_is_identity(self) -> bool:
        """True when V is exactly the identity (the errors are uncorrelated)."""
        return bool(np.array_equal(self.V, np.eye(self.n_conditions)))

    def with_V(self, V: np.ndarray) -> MashData:
        """A copy with another null correlation matrix (mashr ``mash_update_data``)."""
        return mash_set_data(self.Bhat, self.Shat, V=V, conditions=self.conditions)

    def subset(self, rows: np.ndarray) -> MashData:
        """The units in ``rows`` (indices or boolean mask), same V."""
        return MashData(self.Bhat[rows], self.Shat[rows], self.V, self.conditions)


def mash_set_data(
    Bhat: np.ndarray,
    Shat: np.ndarray | float = 1.0,
    V: np.ndarray | None = None,
    conditions: Sequence[str] | None = None,
) -> MashData:
    """Validate and package effect estimates for mash (mashr ``mash_set_data``, alpha = 0).

    Parameters
    ----------
    Bhat
        (J, R) effect estimates.
    Shat
        (J, R) standard errors, or one scalar for all.
    V
        (R, R) error correlation matrix; identity when ``None``.
    conditions
        Condition names; ``c1..cR`` when ``None``.

    Returns
    -------
    MashData

    Raises
    ------
    InputDataError
        Non-finite estimates, non-positive or non-finite standard errors, mismatched
        shapes, or a V that is not symmetric positive definite.
    """
    B = np.array(Bhat, dtype=np.float64, copy=True)
    if B.ndim != 2:
        raise InputDataError(f"Bhat must be a 2-d (units x conditions) array, got {B.ndim} dimension(s)")
    J, R = B.shape
    S = np.array(Shat, dtype=np.float64, copy=True)
    if S.ndim == 0:
        S = np.full((J, R), float(S))
    if S.shape != B.shape:
        raise InputDataError(f"Bhat is {J} x {R} but Shat is {' x '.join(map(str, S.shape))}")
    bad_b = ~np.isfinite(B)
    if bad_b.any():
        rows = np.flatnonzero(bad_b.any(axis=1))
        raise InputDataError(f"Bhat has {int(bad_b.sum())} NaN/infinite value(s) in row(s) {_fmt_rows(rows)}")
    bad_s = ~(np.isfinite(S) & (S > 0))
    if bad_s.any():
        rows = np.flatnonzero(bad_s.any(axis=1))
        raise InputDataError(
            f"Shat has {int(bad_s.sum())} non-positive, NaN or infinite value(s) in row(s) {_fmt_rows(rows)}"
        )
    if conditions is None:
        conditions = tuple(f"c{r + 1}" for r in range(R))
    conditions = tuple(str(c) for c in conditions)
    if len(conditions) != R:
        raise InputDataError(f"{len(conditions)} condition names for {R} conditions")
    Vm = np.eye(R) if V is None else np.array(V, dtype=np.float64, copy=True)
    check_correlation_input(Vm, R)
    return MashData(B, S, Vm, conditions)


def check_correlation_input(V: np.ndarray, R: int) -> None:
    """Raise unless V is a finite, symmetric, positive-definite R x R matrix."""
    if V.shape != (R, R):
        raise InputDataError(f"V must be {R} x {R}, got {' x '.join(map(str, V.shape))}")
    if not np.isfinite(V).all():
        raise InputDataError("V has NaN or infinite entries")
    if not np.allclose(V, V.T, rtol=0, atol=1e-12 * max(1.0, float(np.abs(V).max()))):
        raise InputDataError("V is not symmetric")
    try:
        np.linalg.cholesky(V)
    except np.linalg.LinAlgError:
        raise InputDataError("V must be positive definite") from None


def _fmt_rows(rows: np.ndarray, limit: int = 8) -> str:
    """1-based row numbers, truncated after ``limit``."""
    shown = ", ".join(str(int(r) + 1) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} rows)" if len(rows) > limit else "")
