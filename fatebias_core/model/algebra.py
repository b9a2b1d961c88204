"""The linear algebra of the posterior: the inverse of the eliminated Hessian, and what is read off it.

Every quantity the Laplace step needs from the posterior precision ``S`` (the Hessian
of psi with the clone effects eliminated, :meth:`LaplaceProblem.schur_hessian`) is one
of: solves with S, the per-gene diagonal blocks of ``S^-1`` (the posterior covariance
the exports keep), ``S^-1`` at the few columns a clone's cells touch (leverage), and
``S^-1`` at the columns of the gene/day effects (degrees of freedom).
:class:`DenseAlgebra` gives them from a dense Cholesky factor;
:class:`~fatebias_core.model.block_algebra.BlockAlgebra` by gene blocks, in memory that
grows linearly with the screen. :func:`make_algebra` makes the one a fit asked for, and
:func:`choose_algebra` picks one for ``auto``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import scipy.linalg as sla

from fatebias_core.errors import FitError
from fatebias_core.mash.blas_threads import factor_threads_for
from fatebias_core.model.design import lower_to_symmetric
from fatebias_core.model.glmm import LaplaceProblem, LaplaceResult

if TYPE_CHECKING:
    from fatebias_core.model.block_algebra import BlockAlgebra

#: Dense (K P) x (K P) matrices held at the peak of the Laplace step (the factor, the
#: inverse, its symmetric copy, the effective covariance and the robust products);
#: measured: 7.2 GB at K P = 14,414 is 4.3 of them.
DENSE_MATRICES_AT_PEAK = 4.5
#: Seconds per (K P)^3 of the Laplace step on 2 cores (``benchmarks/laplace_growth.py``: at
#: 8,114 parameters and 50,000 cells it took 85.3 s, of which about 10 s grows with the cells):
#: a factor and an inverse per empirical Bayes update, and the robust product.
SECONDS_PER_CUBE = 1.4e-10
#: Share of this machine's memory the dense step may plan to use.
MEMORY_SHARE = 0.85


def machine_memory() -> int:
    """Bytes of memory this process may use: physical memory, or a lower cgroup limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return int(total)


@dataclass(frozen=True)
class MemoryEstimate:
    """What a Laplace step needs for a screen, and whether this machine has it."""

    size: int
    bytes_needed: int
    bytes_available: int

    @property
    def fits(self) -> bool:
        return self.bytes_needed <= MEMORY_SHARE * self.bytes_available

    def require(self, what: str) -> None:
        """A one-line error, naming ``what`` needs the memory, when this machine cannot hold it."""
        if not self.fits:
            gb = 1024**3
            raise FitError(
                f"{what}: about {self.bytes_needed / gb:.1f} GB, and this machine has {self.bytes_available / gb:.1f} GB; "
                "run it on a machine with more memory, or set posterior_method: meanfield"
            )


@dataclass(frozen=True)
class DenseEstimate(MemoryEstimate):
    """What the dense Laplace step needs for a screen, and whether this machine has it."""

    seconds: float = 0.0

    def describe(self) -> str:
        """One line for ``fatebias check``."""
        gb = 1024**3
        return (
            f"Laplace step: a dense {self.size} x {self.size} system, about {self.bytes_needed / gb:.1f} GB at its peak "
            f"(this machine: {self.bytes_available / gb:.0f} GB) and about {_duration(self.seconds)} of dense algebra on 2 cores"
        )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class BlockEstimate(MemoryEstimate):
    """What the gene-block Laplace step needs for a screen, and whether this machine has it."""

    def describe(self) -> str:
        """One line for ``fatebias check``."""
        gb = 1024**3
        return (
            f"Laplace step: gene blocks for {self.size} parameters, about {self.bytes_needed / gb:.1f} GB at its peak "
            f"(this machine: {self.bytes_available / gb:.0f} GB)"
        )


#: Bytes per non-zero of the design held by the gene-block step: the square-root rows
#: (K^2 entries per design entry, with the local reordering and its CSC copy) and the
#: clone pass's copies. Set to cover the measured peak: at 2,000 genes, 10,000 guides and
#: 200,000 cells it estimates 2.8 GB where benchmarks/laplace_growth.py measured 2.46 GB.
BLOCK_BYTES_PER_NNZ_K2 = 110


def block_estimate_for(size: int, design_nnz: int, n_contrasts: int) -> BlockEstimate:
    """Memory of the gene-block Laplace step: linear in the design's non-zeros and the parameters."""
    from fatebias_core.model.block_algebra import GENE_BATCH_BYTES

    # the first-order elimination's batch is held about three times over (its rows, their product, the result)
    need = BLOCK_BYTES_PER_NNZ_K2 * n_contrasts**2 * design_nnz + 3 * GENE_BATCH_BYTES + 8 * 64 * size
    return BlockEstimate(size, int(need), machine_memory())


def dense_estimate(size: int) -> DenseEstimate:
    """Memory and time of the dense Laplace step for ``size`` = K P parameters on this machine."""
    return DenseEstimate(size, int(DENSE_MATRICES_AT_PEAK * 8 * size**2), machine_memory(), SECONDS_PER_CUBE * size**3)


class DenseAlgebra:
    """``S^-1`` from a dense Cholesky factorisation of the (K P, K P) eliminated Hessian.

    Parameters
    ----------
    problem
        The problem ``hessian`` belongs to (for the within-gene centring).
    hessian
        (K P, K P) eliminated Hessian, prior included; overwritten.
    """

    def __init__(self, problem: LaplaceProblem, hessian: np.ndarray):
        self.problem = problem
        self.size = hessian.shape[0]
        # The symmetric Hessian's transpose is itself and a Fortran-ordered view of it:
        # LAPACK's upper-triangular routines then work in place without a copy.
        with factor_threads_for(self.size):
            chol, info = sla.lapack.dpotrf(hessian.T, lower=0, clean=1, overwrite_a=1)
            if info != 0:
                raise FitError("the Laplace Hessian at the mode is not positive definite; use posterior_method: meanfield")
            self.chol = chol  # upper, Fortran-ordered: S = R^T R
            inv, info = sla.lapack.dpotri(chol.copy(order="F"), lower=0, overwrite_c=1)
        if info != 0:
            raise FitError("the Laplace Hessian at the mode is not invertible")
        self.inv = np.ascontiguousarray(lower_to_symmetric(inv.T))

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """``S^-1 rhs`` for a (K P,) or (K P, m) right-hand side."""
        return sla.cho_solve((self.chol, False), rhs, check_finite=False)

    def solver(self) -> Callable[[np.ndarray], np.ndarray]:
        """:meth:`solve` holding the factor alone (a preconditioner that keeps no inverse alive)."""
        chol = self.chol
        return lambda rhs: sla.cho_solve((chol, False), rhs, check_finite=False)

    def blocks(self, index: np.ndarray) -> np.ndarray:
        """(L, B, B) diagonal blocks of ``S^-1`` at the (L, B) indices."""
        return self.inv[index[:, :, None], index[:, None, :]]

    def diagonal(self) -> np.ndarray:
        return np.diag(self.inv).copy()

    def columns(self, cols: np.ndarray) -> np.ndarray:
        """(K P, m) columns of ``S^-1``."""
        return self.inv[:, cols]

    def effective(self) -> np.ndarray:
        """``T S^-1 T^T``: the covariance of the effective parameters (u replaced by delta); a new array.

        ``T`` is block-diagonal over the contrasts with ``T_k`` the within-gene centring,
        so that ``x_raw,k (T S^-1 T^T)_kj x_raw,j^T = (x T)_k S^-1_kj (x T)_j^T``: a
        cell's raw design row reads its linear predictor's covariance off it. Not kept:
        the clone pass, its one reader, lets it go when done (one dense matrix less at
        the Laplace step's peak).
        """
        K, P = self.problem.n_contrasts, self.problem.layout.size
        out = self.inv.copy()
        for k in range(K):
            for j in range(K):
                self.problem.centre_block_inplace(out[k * P : (k + 1) * P, j * P : (j + 1) * P], k, j)
        return out

    def leverage_blocks(self, X, cells: np.ndarray, valid: np.ndarray, K: int) -> np.ndarray:
        """Within-clone blocks of ``X S^-1 X^T`` (:func:`~fatebias_core.model.robust.clone_leverage_blocks`) from the effective covariance, made once."""
        from fatebias_core.model.robust import clone_leverage_blocks

        return clone_leverage_blocks(X, self._ceff, cells, valid, K)

    def prepare_leverage(self) -> None:
        """Make the effective covariance :meth:`leverage_blocks` reads (before a clone pass's threads start)."""
        self._ceff = self.effective()

    def release(self) -> None:
        """Let the effective covariance go (the clone pass is done)."""
        self._ceff = None

    def prior_trace(self) -> float:
        """``tr(S^-1 Q)``: the prior's share of the posterior (parameters minus effective degrees of freedom)."""
        p = self.problem
        K, P, lay = p.n_contrasts, p.layout.size, p.layout
        val = float((np.diag(self.inv) * p.prior_diag.ravel()).sum())
        D = lay.n_days
        for k in range(K):
            base = k * P + lay.theta.start + np.arange(lay.n_genes)[:, None] * D + np.arange(D)[None, :]
            blocks = self.inv[base[:, :, None], base[:, None, :]]
            val += float(np.einsum("lde,ed->", blocks, p.rw_precision[k]))
        return val


def check_dense_size(size: int, n_guides: int, n_genes: int, n_contrasts: int) -> DenseEstimate:
    """The dense step's estimate; a one-line error when this machine cannot hold it."""
    est = dense_estimate(size)
    est.require(
        f"posterior_method laplace/bootstrap needs a dense {size} x {size} system for {n_guides} guides, "
        f"{n_genes} genes and {n_contrasts} contrasts"
    )
    return est

#: What a fit reads ``S^-1`` through.
PosteriorAlgebra = Union[DenseAlgebra, "BlockAlgebra"]
#: Parameters (K P) up to which ``auto`` keeps the dense algebra where it fits: there it is
#: exact and takes at most a minute or two; above it the gene blocks are several times faster
#: (1,000 genes: 74 s against 736 s) and their error shrinks as the genes grow.
DENSE_AUTO_MAX = 8000


def choose_algebra(kind: str, size: int) -> str:
    """``dense`` or ``blocks`` for the setting ``kind`` (``auto``, ``dense``, ``blocks``) and K P = ``size``."""
    if kind != "auto":
        return kind
    return "dense" if size <= DENSE_AUTO_MAX and dense_estimate(size).fits else "blocks"


def make_algebra(problem: LaplaceProblem, res: LaplaceResult, kind: str, correct: bool = True) -> PosteriorAlgebra:
    """The algebra of ``S`` at the mode ``res`` (``dense`` factors the Hessian ``res`` kept, in place).

    ``correct`` False makes the gene blocks without the first-order elimination of the
    other genes (``blocks`` only; see :class:`~fatebias_core.model.block_algebra.BlockAlgebra`).
    """
    if kind == "blocks":
        from fatebias_core.model.block_algebra import BlockAlgebra

        curv = res.curvature if res.curvature is not None else problem.curvature(res.pi)
        return BlockAlgebra(problem, curv, correct=correct)
    hess = res.hessian if res.hessian is not None else problem.schur_hessian(res.curvature or problem.curvature(res.pi))
    res.hessian = None  # factored in place: the algebra holds it now
    return DenseAlgebra(problem, hess)
