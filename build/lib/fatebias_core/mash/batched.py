"""Vectorised Cholesky algebra for large batches of small R x R matrices.

mash factorises one R x R matrix per (unit, prior component); R is small (the number
of days) and the batch is large. Looping LAPACK over the batch costs a call per
matrix, so the factor is instead held entrywise: ``L[i][j]`` is an array over the
whole batch, and each step of the textbook algorithm is one vectorised numpy
operation. The cost is O(R^3) array operations, independent of the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fatebias_core.errors import FitError

Entry = Callable[[int, int], np.ndarray]


class BatchedCholesky:
    """Lower Cholesky factors L (A = L L') of a batch of symmetric positive-definite matrices.

    Parameters
    ----------
    entry
        ``entry(i, j)`` (for i >= j) returns A[i, j] over the batch; the arrays
        broadcast to a common batch shape.
    R
        Matrix dimension.
    """

    def __init__(self, entry: Entry, R: int):
        self.R = R
        L: list[list[np.ndarray | None]] = [[None] * R for _ in range(R)]
        inv: list[np.ndarray] = []
        for j in range(R):
            s = np.array(entry(j, j), dtype=np.float64, copy=True)
            for k in range(j):
                s -= L[j][k] ** 2  # type: ignore[operator]
            if not (s > 0).all():
                raise FitError("a marginal covariance matrix is not positive definite")
            d = np.sqrt(s)
            L[j][j] = d
            inv_d = 1.0 / d
            inv.append(inv_d)
            for i in range(j + 1, R):
                t = np.array(entry(i, j), dtype=np.float64, copy=True)
                for k in range(j):
                    t = t - L[i][k] * L[j][k]  # type: ignore[operator]
                L[i][j] = t * inv_d
        self.L = L
        self.inv_diag = inv

    def logdet(self) -> np.ndarray:
        """log det A over the batch."""
        return 2.0 * sum(np.log(self.L[i][i]) for i in range(self.R))  # type: ignore[arg-type]

    def forward(self, b: Sequence[np.ndarray]) -> list[np.ndarray]:
        """y = L^{-1} b, with b given as R arrays broadcastable to the batch."""
        y: list[np.ndarray] = []
        for i in range(self.R):
            t = b[i]
            for k in range(i):
                t = t - self.L[i][k] * y[k]  # type: ignore[operator]
            y.append(t * self.inv_diag[i])
        return y

    def backward(self, y: Sequence[np.ndarray]) -> list[np.ndarray]:
        """x = L'^{-1} y."""
        x: list[np.ndarray | None] = [None] * self.R
        for i in range(self.R - 1, -1, -1):
            t = y[i]
            for k in range(i + 1, self.R):
                t = t - self.L[k][i] * x[k]  # type: ignore[operator]
            x[i] = t * self.inv_diag[i]
        return x  # type: ignore[return-value]

    def solve(self, b: Sequence[np.ndarray]) -> list[np.ndarray]:
        """x = A^{-1} b."""
        return self.backward(self.forward(b))
