"""Empirical Bayes: the variance hyperparameters and the likelihood weight, with clones as the units.

Given the hyperparameters, :func:`~fatebias_core.model.glmm.newton_mode` finds the mode of
(psi, clone effects) and the eliminated Hessian gives psi's Laplace posterior. The
hyperparameters it needs are estimated here from the same Laplace posterior, in turn
with the mode (a Laplace-EM, type-II maximum likelihood):

* **the clone covariance** Sigma_b: the EM update ``(sum_c b_c b_c^T + V_c) / C`` with
  ``V_c`` the clone effect's full posterior covariance (psi's uncertainty included, so
  the effects the guide deviations absorb are not lost, as they would be with psi held
  at its mode); given psi, the clone effects and Sigma_b are iterated to their fixed
  point, which is cheap (clones are independent given psi);
* **the spread of guide deviations** sigma_guide (per contrast): MacKay's fixed point
  ``sigma^2 = ||delta||^2 / gamma``, with ``gamma`` the number of well-determined
  guide deviations (their number minus their posterior variance in prior units), so a
  guide seen in few clones counts as little as it is known;
* **the likelihood weight** w = 1 / the Pearson dispersion of the fate probabilities
  around the fit, each cell's residual scaled up by its leverage in the joint fit (the
  clone effects absorb much of a small clone's residuals): the dispersion is the cells'
  scatter within their clones.

Each is estimated only when it is not fixed (``likelihood_weight`` a number,
``fixed_sigma_guide``, ``fixed_clone_cov``). Iterations stop when no hyperparameter
changes by more than ``tol`` (relative, 0.5%) from one to the next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from fatebias_core.model.algebra import PosteriorAlgebra, make_algebra
from fatebias_core.model.design import gene_blocks, pearson_dispersion
from fatebias_core.model.glmm import (
    LaplaceProblem,
    LaplaceResult,
    newton_mode,
    optimise_clone_effects,
)
from fatebias_core.model.robust import ClonePass, clone_pass

log = logging.getLogger("fatebias.laplace")

#: Smallest sigma_guide and clone SD estimated (logit scale): a variance at the boundary
#: is reached in the limit only, and below this it no longer changes any interval.
SIGMA_FLOOR = 0.01

#: Fewer clones of two or more cells than this leave the clone covariance without data:
#: the clone effect is then left out (every clone a single cell cannot tell its effect
#: from the cell's own noise).
MIN_MULTICELL_CLONES = 20


@dataclass
class EBResult:
    """The converged fit: the problem at the final hyperparameters, its mode, ``S^-1`` and the clone pass."""

    problem: LaplaceProblem
    result: LaplaceResult
    algebra: PosteriorAlgebra
    clones: ClonePass
    trace: list[dict] = field(default_factory=list)
    converged: bool = True
    runtime_s: float = 0.0
    #: With the gene blocks: their check (model-based, robust SEs' largest relative errors) once made.
    block_check: tuple[float, float] | None = None
    #: The gene blocks' check failed and the dense algebra finished the fit.
    dense_fallback: bool = False

    @property
    def newton_iterations(self) -> int:
        return int(sum(row["newton_iterations"] for row in self.trace))


def fit_empirical_bayes(
    problem: LaplaceProblem,
    psi0: np.ndarray,
    *,
    estimate_weight: bool,
    estimate_sigma_guide: bool,
    estimate_clone_cov: bool,
    max_updates: int = 40,
    tol: float = 5e-3,
    progress: bool = False,
    desc: str = "laplace",
    robust: bool = False,
    precondition: Callable[[np.ndarray], np.ndarray] | None = None,
    algebra: str = "dense",
) -> EBResult:
    """Alternate the Newton mode and the hyperparameter updates until the hyperparameters settle.

    The updates are a fixed-point map of the hyperparameters (on the log scale); it is
    accelerated by SQUAREM (Varadhan and Roland 2008): two updates give the direction
    and the rate of the sequence, a step extrapolates along it, and an update from the
    extrapolated point keeps it on the map. Stops when an update changes no
    hyperparameter by more than ``tol`` (relative): half a per cent of a variance scale
    changes no interval by more than that, and a scale the data barely inform (near
    zero) would otherwise drift towards its boundary for many updates. The fit returned
    is that last update's: the mode, ``S^-1`` and clone pass at hyperparameters within
    ``tol`` of the fixed point.

    Parameters
    ----------
    problem
        The problem at the starting hyperparameters (``weight``, ``sigma_guide``,
        ``clone_cov``; ``clone_cov`` None: no clone effect).
    psi0
        (K, P) start.
    estimate_weight, estimate_sigma_guide, estimate_clone_cov
        Which hyperparameters to estimate (the others stay as ``problem`` has them).
    max_updates, tol
        At most this many updates (each a Newton solve); the convergence tolerance.
    progress
        Show a progress bar with the objective and the hyperparameters.
    robust
        Make the final clone pass the cluster-robust one (CR2 residuals and factors), for
        a cluster-robust covariance at the converged fit.
    precondition
        ``x -> H^-1 x`` for a Hessian near the first update's (e.g. the start's), to
        precondition its Newton systems (None: the first Newton step factors its own).
    algebra
        ``dense`` (:class:`~fatebias_core.model.algebra.DenseAlgebra`) or ``blocks``
        (:class:`~fatebias_core.model.block_algebra.BlockAlgebra`): how ``S^-1`` is read.
        With ``blocks`` the updates first run to their fixed point with each gene's block
        alone (no first-order elimination of the other genes, a fraction of the cost), then
        go on from there with the eliminated blocks until they settle again: the fit
        returned is always the eliminated blocks', at their fixed point.
    """
    t0 = time.perf_counter()
    fpm = _FixedPointMap(
        problem, psi0, estimate_weight, estimate_sigma_guide, estimate_clone_cov and problem.has_clone_effects, precondition,
        algebra,
    )
    bar = tqdm(total=max_updates, desc=desc, unit="update", dynamic_ncols=True, mininterval=0.5) if progress else None
    fpm.bar = bar
    try:
        x = fpm.encode(problem)
        if algebra == "blocks" and fpm.size:
            # The updates without the first-order elimination of the other genes reach a
            # nearby fixed point for a fraction of the cost; the updates with it start there
            # and settle in one or two.
            fpm.correct = False
            x, _ = _iterate(fpm, x, max_updates, tol)
            fpm.correct = True
        x, converged = _iterate(fpm, x, fpm.calls + max_updates, tol)
        if converged and fpm.last is not None:
            # The last update's input is within tol of its image, the fixed point: its
            # mode, S^-1 and clone pass are the converged fit's (no further solve).
            problem, res, algebra, cp = fpm.last
            cp = clone_pass(problem, res, algebra, robust=True, blocks=cp.blocks) if robust else replace(cp, blocks=None)
        else:
            if not converged:
                log.warning("empirical Bayes: the hyperparameters did not settle in %d updates", fpm.calls)
            problem = fpm.at(x)
            res, algebra = fpm.mode(problem, tol=NEWTON_TOL)
            cp = clone_pass(problem, res, algebra, robust=robust)
            fpm.trace.append(_trace_row(len(fpm.trace) + 1, problem, res))
        fpm.last = None
    finally:
        if bar is not None:
            bar.close()
    return EBResult(problem, res, algebra, cp, fpm.trace, converged, time.perf_counter() - t0)


def _iterate(fpm: _FixedPointMap, x: np.ndarray, max_calls: int, tol: float) -> tuple[np.ndarray, bool]:
    """SQUAREM-accelerated updates of ``fpm`` from ``x`` until one changes nothing by more than ``tol``; the last point and whether it settled."""
    if fpm.size == 0:
        return x, True
    while fpm.calls < max_calls:
        x1 = fpm(x)
        if fpm.change(x1, x) < tol:
            return x1, True
        x2 = fpm(x1)
        if fpm.change(x2, x1) < tol:
            return x2, True
        x3 = fpm.clamp(squarem_point(x, x1, x2))
        x = fpm(x3) if np.all(np.isfinite(x3)) and np.abs(x3 - x2).max() < 5.0 else x2
    return x, False


def squarem_point(x0: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """SQUAREM's extrapolation (Varadhan and Roland 2008, step length S3) from two steps of a fixed-point map.

    ``x1 = F(x0)``, ``x2 = F(x1)``; the step length is at least that of one plain step.
    """
    r, v = x1 - x0, x2 - 2.0 * x1 + x0
    alpha = min(-np.linalg.norm(r) / max(np.linalg.norm(v), 1e-300), -1.0)
    return x0 - 2.0 * alpha * r + alpha**2 * v


#: Newton's convergence tolerance at every update (decrement per cell): each update's mode may be the final one.
NEWTON_TOL = 1e-8


class _FixedPointMap:
    """One empirical Bayes update as a map of the log hyperparameters, warm-starting each Newton solve from the last."""

    def __init__(
        self, problem: LaplaceProblem, psi: np.ndarray, weight: bool, sigma_guide: bool, clone_cov: bool,
        precondition: Callable[[np.ndarray], np.ndarray] | None = None,
        algebra: str = "dense",
    ):
        self.base = problem
        self.kind = algebra
        self.correct = True  # BlockAlgebra: eliminate the other genes to first order in each gene's block
        self.psi, self.beta = psi.copy(), None
        self.sigma_of_psi = problem.sigma_guide.copy()  # the sigma_guide psi's u is scaled for
        self.flags = (weight, sigma_guide and problem.layout.n_guides > 0, clone_cov)
        self.size = self.encode(problem).size
        self.calls = 0
        self.trace: list[dict] = []
        self.bar = None
        self.solve = precondition  # S^-1 at the last update's mode: it preconditions the next Newton solve
        self.last: tuple[LaplaceProblem, LaplaceResult, PosteriorAlgebra, ClonePass] | None = None  # the last update's fit

    # ----------------------------------------------------------------- encoding
    def encode(self, problem: LaplaceProblem, updates: dict | None = None) -> np.ndarray:
        u = updates or {}
        parts = []
        if self.flags[0]:
            parts.append([np.log(u.get("weight", problem.weight))])
        if self.flags[1]:
            parts.append(np.log(np.maximum(u.get("sigma_guide", problem.sigma_guide), SIGMA_FLOOR)))
        if self.flags[2]:
            L = np.linalg.cholesky(u.get("clone_cov", problem.clone_cov))
            low = np.tril_indices(L.shape[0])
            vals = L[low].copy()
            diag = low[0] == low[1]
            vals[diag] = np.log(np.maximum(vals[diag], SIGMA_FLOOR))
            parts.append(vals)
        return np.concatenate(parts) if parts else np.zeros(0)

    def clamp(self, x: np.ndarray) -> np.ndarray:
        """``x`` with the log scales at or above :data:`SIGMA_FLOOR`."""
        x = x.copy()
        i = int(self.flags[0])
        K = self.base.n_contrasts
        if self.flags[1]:
            x[i : i + K] = np.maximum(x[i : i + K], np.log(SIGMA_FLOOR))
            i += K
        if self.flags[2]:
            low = np.tril_indices(K)
            diag = np.flatnonzero(low[0] == low[1])
            x[i + diag] = np.maximum(x[i + diag], np.log(SIGMA_FLOOR))
        return x

    def at(self, x: np.ndarray) -> LaplaceProblem:
        """The problem at hyperparameters ``x``."""
        changes: dict = {}
        i = 0
        K = self.base.n_contrasts
        if self.flags[0]:
            changes["weight"] = float(np.exp(x[i]))
            i += 1
        if self.flags[1]:
            changes["sigma_guide"] = np.exp(x[i : i + K])
            i += K
        if self.flags[2]:
            low = np.tril_indices(K)
            n = low[0].size
            vals = x[i : i + n].copy()
            diag = low[0] == low[1]
            vals[diag] = np.exp(vals[diag])
            L = np.zeros((K, K))
            L[low] = vals
            changes["clone_cov"] = L @ L.T
        return self.base.with_hyper(**changes) if changes else self.base

    def psi_for(self, problem: LaplaceProblem) -> np.ndarray:
        """The last mode, its u rescaled so that delta = sigma (u - mean) stays where it was."""
        psi = self.psi.copy()
        lay = problem.layout
        if lay.n_guides:
            psi[:, lay.u] *= (self.sigma_of_psi / problem.sigma_guide)[:, None]
        return psi

    def mode(self, problem: LaplaceProblem, tol: float) -> tuple[LaplaceResult, PosteriorAlgebra]:
        """The mode of ``problem`` from the last one, and ``S^-1`` there.

        Newton's systems are preconditioned by the last mode's factor, which is dropped
        before the new one is made (one factor alive at a time); the Hessian at the mode
        is factored in place.
        """
        res = newton_mode(
            problem, self.psi_for(problem), self.beta, tol=tol, precondition=self.solve, structured=self.kind == "blocks"
        )
        res.solve = self.solve = None
        algebra = make_algebra(problem, res, self.kind, correct=self.correct)
        self.solve = algebra.solver()
        return res, algebra

    @staticmethod
    def change(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max()) if a.size else 0.0

    # ----------------------------------------------------------------- one update
    def __call__(self, x: np.ndarray) -> np.ndarray:
        problem = self.at(x)
        self.last = None  # one S^-1 alive at a time
        res, algebra = self.mode(problem, tol=NEWTON_TOL)
        cp = clone_pass(problem, res, algebra, robust=False, keep_blocks=True)
        self.last = (problem, res, algebra, cp)
        self.psi, self.beta, self.sigma_of_psi = res.psi, res.beta, problem.sigma_guide.copy()
        updates = _updates(problem, res, algebra, cp, *self.flags)
        if "beta" in updates:
            self.beta = updates.pop("beta")
        self.calls += 1
        self.trace.append(_trace_row(self.calls, problem, res))
        if self.bar is not None:
            self.bar.set_postfix_str(_postfix(self.trace[-1]), refresh=False)
            self.bar.update(1)
        log.debug("empirical Bayes %d: %s", self.calls, _postfix(self.trace[-1]))
        return self.encode(problem, updates)


def _updates(
    problem: LaplaceProblem, res: LaplaceResult, algebra: PosteriorAlgebra, cp: ClonePass,
    weight: bool, sigma_guide: bool, clone_cov: bool,
) -> dict:
    out: dict = {}
    if sigma_guide and problem.layout.n_guides:
        out["sigma_guide"] = sigma_guide_update(problem, res.psi, algebra)
    if clone_cov and problem.has_clone_effects:
        cov, beta = clone_cov_update(problem, res, cp)
        out["clone_cov"], out["beta"] = cov, beta
    if weight:
        phi = pearson_dispersion(problem.p, res.pi, np.clip(cp.cell_leverage, 0.0, 0.99))
        out["weight"] = 1.0 / phi if phi > 0 else problem.weight
    return out


def sigma_guide_update(problem: LaplaceProblem, psi: np.ndarray, algebra: PosteriorAlgebra) -> np.ndarray:
    """MacKay's fixed point for sigma_guide per contrast: ``sigma^2 ||C u||^2 / gamma``.

    ``C`` is the within-gene centring; ``gamma = (G - L) - tr(C V_u C)`` the number of
    well-determined deviations (V_u the posterior covariance of u, in prior units),
    read off each gene's block of ``S^-1``.
    """
    lay, K = problem.layout, problem.n_contrasts
    gog, n_l = problem.gene_of_guide, problem.guides_per_gene
    out = problem.sigma_guide.copy()
    dof = float(gog.size - (n_l > 0).sum())
    if dof <= 0:
        return out
    index, mask = gene_blocks(lay, gog, K)
    blocks = algebra.blocks(index)
    D = lay.n_days
    slots = (index.shape[1] - K * D) // K
    onehot = problem.onehot
    for k in range(K):
        u = psi[k, lay.u]
        centred = u - ((onehot @ u) / np.maximum(n_l, 1))[gog]
        s = K * D + k * slots + np.arange(slots)
        valid = mask[:, s].astype(np.float64)  # (L, slots)
        sub = blocks[:, s[:, None], s[None, :]] * valid[:, :, None] * valid[:, None, :]
        diag = np.einsum("lss->", sub)
        sums = sub.sum(axis=(1, 2))  # 1^T V_l 1 per gene
        trace = float(diag - (sums / np.maximum(n_l, 1)).sum())
        gamma = max(dof - trace, 1e-3)
        out[k] = problem.sigma_guide[k] * np.sqrt(max(float(centred @ centred) / gamma, 1e-12))
    return out


def clone_cov_update(problem: LaplaceProblem, res: LaplaceResult, cp: ClonePass, max_iter: int = 30, tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """The clone covariance's EM fixed point with psi held at its mode, and the clone effects there.

    ``V_c`` keeps psi's share of the clone effect's uncertainty from the clone pass
    (``B^-1 K_c B^-1``, with ``K_c`` computed once at the current S^-1) while ``B_c``
    follows Sigma_b.
    """
    B0_inv = res.curvature.B_inv
    psi_part = cp.beta_cov - B0_inv  # B^-1 K_c B^-1 at the current Sigma_b
    # K_c = B psi_part B: the psi part in the clones' own units, carried to new Sigma_b
    B0 = res.curvature.B
    Kc = B0 @ psi_part @ B0
    prec0 = np.linalg.inv(problem.clone_cov)
    state = {"beta": res.beta, "calls": 0}

    def em(cov: np.ndarray) -> np.ndarray:
        state["beta"] = optimise_clone_effects(problem.with_hyper(clone_cov=cov), res.psi, state["beta"])
        state["calls"] += 1
        B = B0 - prec0[None] + np.linalg.inv(cov)[None]  # the clones' curvature held at the mode's
        B_inv = np.linalg.inv(B)
        V = B_inv + B_inv @ Kc @ B_inv
        beta = state["beta"]
        new = (beta.T @ beta + V.sum(axis=0)) / beta.shape[0]
        return 0.5 * (new + new.T)

    def change(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(np.sqrt(np.diag(a)) / np.sqrt(np.diag(b)) - 1.0).max())

    # EM converges slowly where the clone effects are strongly shrunk; SQUAREM steps
    # (Varadhan and Roland 2008) reach the same fixed point in a few EM evaluations.
    cov = problem.clone_cov.copy()
    while state["calls"] < max_iter:
        c1 = em(cov)
        if change(c1, cov) < tol:
            return c1, state["beta"]
        c2 = em(c1)
        if change(c2, c1) < tol:
            return c2, state["beta"]
        c3 = squarem_point(cov, c1, c2)
        if np.linalg.eigvalsh(c3).min() <= 1e-12 * np.abs(c2).max():
            c3 = c2
        cov = em(c3)
    return cov, state["beta"]


def _trace_row(it: int, problem: LaplaceProblem, res: LaplaceResult) -> dict:
    row = {
        "iteration": it,
        "objective_per_cell": res.objective / max(problem.n_cells, 1),
        "newton_iterations": res.n_iter,
        "weight": float(problem.weight),
    }
    for k, s in enumerate(problem.sigma_guide):
        row[f"sigma_guide_{k}"] = float(s)
    if problem.clone_cov is not None:
        for k, s in enumerate(np.sqrt(np.diag(problem.clone_cov))):
            row[f"clone_sd_{k}"] = float(s)
    return row


def _postfix(row: dict) -> str:
    parts = [f"obj {row['objective_per_cell']:.4f}/cell", f"w {row['weight']:.3g}"]
    sg = [v for k, v in row.items() if k.startswith("sigma_guide_")]
    if sg:
        parts.append("sigma_guide " + "/".join(f"{v:.3g}" for v in sg))
    cs = [v for k, v in row.items() if k.startswith("clone_sd_")]
    if cs:
        parts.append("clone SD " + "/".join(f"{v:.3g}" for v in cs))
    return ", ".join(parts)


def clone_cov_moments(problem: LaplaceProblem, res: LaplaceResult) -> np.ndarray:
    """A moment estimate of the clone covariance from a fit without clone effects.

    Residuals of two different cells of one clone are uncorrelated without a clone
    effect and have covariance ``W_i Sigma_b W_i'`` with one; so Sigma_b solves
    ``sum_c sum_{i != i'} W_i Sigma_b W_i' = sum_c sum_{i != i'} r_i r_i'^T`` over the
    clones' pairs of cells. Only pairs within a clone enter, so the cells' own noise (and
    the likelihood weight) does not. Projected onto the positive semi-definite matrices.
    """
    K = problem.n_contrasts
    r = problem.residuals(res.pi)
    W = problem.cell_weights(res.pi)
    s = problem.cluster_sum(r)  # (C, K)
    cross = s.T @ s - r.T @ r  # sum over clones of the off-diagonal cell pairs' r_i r_i'^T
    H = problem.cluster_sum(W)  # (C, K, K)
    lhs = np.einsum("cij,ckl->ikjl", H, H) - np.einsum("nij,nkl->ikjl", W, W)  # sum_{i != i'} W_i (x) W_i'
    vec = np.linalg.lstsq(lhs.reshape(K * K, K * K), cross.reshape(K * K), rcond=None)[0].reshape(K, K)
    vec = 0.5 * (vec + vec.T)
    lam, q = np.linalg.eigh(vec)
    return (q * np.maximum(lam, 0.0)) @ q.T


def multicell_clones(cluster: np.ndarray) -> int:
    """Clones of two or more cells."""
    return int((np.bincount(cluster) >= 2).sum())
