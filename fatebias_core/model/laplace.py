"""The Laplace posterior of the effects (docs/method.md, "Inference").

Given the variance hyperparameters the fate model is a multinomial-logit GLMM in the
linear latents psi = (a, b, c, theta, u) of every contrast with a random intercept per
clone (:mod:`~fatebias_core.model.glmm`). :func:`laplace_posterior` estimates the
hyperparameters it is not given by empirical Bayes (:mod:`~fatebias_core.model.empirical_bayes`),
finds the joint mode by Newton's method, and returns the Gaussian posterior of psi with
the clone effects integrated out: per gene, the joint covariance of its theta (contrasts
x days) and its guides' u, either the model's (``uncertainty: model``) or the
cluster-robust sandwich around it (``cluster_robust``, :mod:`~fatebias_core.model.robust`),
whose intervals are widened to the Student-t with each effect's Bell-McCaffrey degrees
of freedom at the tail the calls use.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fatebias_core.errors import FitError
from fatebias_core.mash.blas_threads import single_threaded_blas
from fatebias_core.model.algebra import (
    BlockEstimate,
    DenseEstimate,
    block_estimate_for,
    check_dense_size,
    choose_algebra,
    dense_estimate,
)
from fatebias_core.model.block_algebra import BlockAlgebra
from fatebias_core.model.design import (
    Layout,
    centre_within_gene,
    design_matrix,
    gene_blocks,
    guide_slots,
    random_walk_precision,
)
from fatebias_core.model.empirical_bayes import (
    MIN_MULTICELL_CLONES,
    EBResult,
    clone_cov_moments,
    fit_empirical_bayes,
    multicell_clones,
)
from fatebias_core.model.glmm import (
    LaplaceProblem,
    LaplaceResult,
    newton_mode,
    optimise_clone_effects,
)
from fatebias_core.model.robust import (
    bm_degrees_of_freedom,
    clone_pass,
    cluster_scores,
    robust_blocks,
    t_scale,
)
from fatebias_core.types import Experiment

log = logging.getLogger("fatebias.laplace")

__all__ = [
    "DenseEstimate",
    "BootstrapPosterior",
    "LaplacePosterior",
    "LaplaceProblem",
    "LaplaceResult",
    "LaplaceSettings",
    "build_problem",
    "check_laplace_size",
    "laplace_posterior",
    "newton_mode",
    "nuisance_problem",
    "nuisance_start",
    "pack_psi",
    "problem_at_mode",
]


def check_laplace_size(experiment: Experiment, n_contrasts: int, algebra: str = "auto") -> DenseEstimate | BlockEstimate:
    """The Laplace step's memory (and, dense, time) with the algebra it will take; a one-line error when this machine cannot hold it."""
    lay = Layout.of(experiment)
    if choose_algebra(algebra, n_contrasts * lay.size) == "dense":
        return check_dense_size(n_contrasts * lay.size, lay.n_guides, lay.n_genes, n_contrasts)
    est = block_estimate(experiment, n_contrasts)
    est.require(
        f"the Laplace step's gene blocks for {lay.n_guides} guides, {lay.n_genes} genes and {experiment.n_cells} cells need"
    )
    return est


def block_estimate(experiment: Experiment, n_contrasts: int) -> BlockEstimate:
    """What the gene-block Laplace step needs for ``experiment`` on this machine."""
    lay = Layout.of(experiment)
    nnz = int(experiment.guides.mask.sum()) * 2 + 3 * experiment.n_cells
    return block_estimate_for(n_contrasts * lay.size, nnz, n_contrasts)


@dataclass(frozen=True)
class LaplaceSettings:
    """How :func:`laplace_posterior` runs.

    Attributes
    ----------
    estimate_weight, estimate_sigma_guide, estimate_clone_cov
        Estimate the likelihood weight, sigma_guide and the clone covariance by empirical
        Bayes (else they stay at the values given).
    clone_effects
        Model a random intercept per clone (needs clones of two or more cells).
    uncertainty
        ``model`` (``S^-1``) or ``cluster_robust`` (the CR2 sandwich, t-widened).
    call_tail
        One-sided tail probability the calls use (``mash_lfsr_thresh_anyday`` / D with
        Bonferroni): the t widening matches the normal and t quantiles there.
    bootstrap
        One-step bootstrap replicates over clones (0: a Gaussian posterior).
    seed
        Seed of the bootstrap.
    progress
        Show the empirical Bayes iterations' progress bar.
    genes
        The genes (0-based) whose posterior the caller reads; None: every gene. Only
        their blocks are made cluster-robust and given degrees of freedom: the others
        keep the model-based blocks and NaN degrees of freedom. The robust sandwich's
        cost then grows with these genes' parameters instead of with all of them (the
        NTC check reads its pseudo-genes only).
    algebra
        How ``S^-1`` is read: ``dense`` (a dense factor), ``blocks`` (gene blocks after a
        Schur complement on the nuisance terms, memory linear in the screen) or ``auto``
        (dense for small screens that fit this machine).
    """

    estimate_weight: bool = True
    estimate_sigma_guide: bool = True
    estimate_clone_cov: bool = True
    clone_effects: bool = True
    uncertainty: str = "cluster_robust"
    call_tail: float = 0.0125
    bootstrap: int = 0
    seed: int = 0
    progress: bool = False
    genes: tuple[int, ...] | None = None
    algebra: str = "auto"


# --------------------------------------------------------------------------- the problem
def build_problem(
    experiment: Experiment,
    contrast_fates: list[str],
    ref_fate: str,
    priors,
    hyper: dict[str, np.ndarray],
    weight: float,
    clone_cov: np.ndarray | None = None,
) -> LaplaceProblem:
    """The conditional posterior of the linear latents of ``experiment`` given the hyperparameters.

    ``hyper`` holds tau (K,), sigma_time (K, D-1) and sigma_guide (K,); ``clone_cov``
    (K, K) the clone covariance (None: no clone effect). The experiment's clones are
    always attached.
    """
    cells, guides = experiment.cells, experiment.guides
    lay = Layout.of(experiment)
    K = len(contrast_fates)
    fates = list(cells.fates)
    gene0 = guides.gene_of_guide[1:].astype(np.int64) - 1
    prior_diag = np.zeros((K, lay.size))
    prior_diag[:, lay.a] = 1.0 / priors.s_alpha**2
    prior_diag[:, lay.b] = 1.0 / priors.s_rep**2
    prior_diag[:, lay.c] = 1.0 / priors.s_gamma**2
    prior_diag[:, lay.u] = 1.0
    return LaplaceProblem(
        X=design_matrix(experiment),
        layout=lay,
        p=cells.fate_probs.astype(np.float64),
        ref_index=fates.index(ref_fate),
        contrast_index=np.asarray([fates.index(f) for f in contrast_fates]),
        gene_of_guide=gene0,
        guides_per_gene=np.bincount(gene0, minlength=lay.n_genes).astype(np.float64),
        sigma_guide=np.asarray(hyper["sigma_guide"], dtype=np.float64),
        prior_diag=prior_diag,
        rw_precision=np.stack([random_walk_precision(hyper["tau"][k], hyper["sigma_time"][k]) for k in range(K)]),
        weight=float(weight),
        cluster=cells.clusters(),
        clone_cov=None if clone_cov is None else np.asarray(clone_cov, dtype=np.float64),
    )


def nuisance_problem(problem: LaplaceProblem) -> LaplaceProblem:
    """The same problem without guide terms; its parameter vector is the first ``layout.theta.start`` entries of the full one's."""
    return problem.nuisance_only()


def nuisance_start(problem: LaplaceProblem) -> np.ndarray:
    """(K, P) start with zero effects and the day, replicate and burden terms at the nuisance-only mode (no clone effects)."""
    n0 = problem.layout.theta.start
    psi = np.zeros((problem.n_contrasts, problem.layout.size))
    nuis = dataclasses.replace(problem.nuisance_only(), clone_cov=None)
    psi[:, :n0] = newton_mode(nuis, psi[:, :n0], hessian_at_mode=False).psi
    return psi


def pack_psi(problem: LaplaceProblem, values: dict[str, np.ndarray]) -> np.ndarray:
    """(K, P) parameter vector from a (K, D), b (K, R), c (K,), theta (L, K, D) and u (G, K)."""
    lay, K = problem.layout, problem.n_contrasts
    psi = np.zeros((K, lay.size))
    psi[:, lay.a] = values["a"]
    psi[:, lay.b] = values["b"]
    psi[:, lay.c] = values["c"]
    psi[:, lay.theta] = np.asarray(values["theta"]).transpose(1, 0, 2).reshape(K, -1)
    psi[:, lay.u] = np.asarray(values["u"]).T
    return psi


def problem_at_mode(
    experiment: Experiment, posterior: LaplacePosterior, contrast_fates: list[str], ref_fate: str, priors
) -> tuple[LaplaceProblem, LaplaceResult]:
    """The problem a fitted Laplace/bootstrap posterior was computed from, and its mode (clone effects re-found)."""
    p = posterior.params
    problem = build_problem(
        experiment, contrast_fates, ref_fate, priors, posterior.hyper(), float(p["weight"]), posterior.clone_cov
    )
    psi = pack_psi(problem, p)
    beta = None
    if problem.has_clone_effects:
        beta = optimise_clone_effects(problem, psi, np.zeros((problem.n_clusters, problem.n_contrasts)))
    structured = choose_algebra("auto", problem.n_contrasts * problem.layout.size) == "blocks"
    return problem, newton_mode(problem, psi, beta, structured=structured)


# --------------------------------------------------------------------------- entry point
def laplace_posterior(
    experiment: Experiment,
    contrast_fates: list[str],
    ref_fate: str,
    priors,
    start: dict[str, np.ndarray] | None,
    hyper: dict[str, np.ndarray],
    weight: float,
    settings: LaplaceSettings = LaplaceSettings(),
    clone_cov: np.ndarray | None = None,
) -> LaplacePosterior:
    """The Laplace posterior of the linear latents, with the hyperparameters not fixed estimated by empirical Bayes.

    Parameters
    ----------
    experiment
        The data (with its clones, ``cells.cluster``).
    contrast_fates, ref_fate
        Contrast order and the reference fate.
    priors
        :class:`fatebias_core.model.fate_model.Priors` (s_alpha, s_rep, s_gamma).
    start
        Starting values a (K, D), b (K, R), c (K,), theta (L, K, D), u (G, K); None: zero
        effects with the nuisance terms at the nuisance-only mode.
    hyper
        tau (K,) and sigma_time (K, D-1) (fixed), sigma_guide (K,) (fixed or the start).
    weight
        Likelihood weight (fixed, or the start).
    settings
        What to estimate, the covariance, the call tail, the bootstrap.
    clone_cov
        (K, K) clone covariance (fixed, or the start; None: a start of 0.25 on the diagonal).
    """
    K = len(contrast_fates)
    check_laplace_size(experiment, K, settings.algebra)
    size = K * Layout.of(experiment).size
    exact_fallback = settings.algebra == "auto" and settings.genes is None and dense_estimate(size).fits
    settings = dataclasses.replace(settings, algebra=choose_algebra(settings.algebra, size))
    # Everything here is small dense algebra (per clone, per gene) or sparse products, on
    # one BLAS thread each; only the factorisations of a large Hessian use them all.
    with single_threaded_blas():
        return _laplace_posterior(experiment, contrast_fates, ref_fate, priors, start, hyper, weight, settings, clone_cov, exact_fallback)


def _laplace_posterior(
    experiment: Experiment,
    contrast_fates: list[str],
    ref_fate: str,
    priors,
    start: dict[str, np.ndarray] | None,
    hyper: dict[str, np.ndarray],
    weight: float,
    settings: LaplaceSettings,
    clone_cov: np.ndarray | None,
    exact_fallback: bool = False,
) -> LaplacePosterior:
    problem = build_problem(experiment, contrast_fates, ref_fate, priors, hyper, weight)
    psi0 = nuisance_start(problem) if start is None else pack_psi(problem, start)
    cov0 = solve = None
    if settings.clone_effects:
        cov0, without = _clone_start(problem, psi0, clone_cov, settings.estimate_clone_cov, settings.algebra == "blocks")
        if without is not None:  # the mode without clone effects: a nearer start, and its factor a preconditioner
            psi0, solve = without.psi, without.solve
        if cov0 is not None:
            problem = problem.with_hyper(clone_cov=cov0)
    def fit(start: LaplaceProblem, psi: np.ndarray, precondition, algebra: str) -> EBResult:
        return fit_empirical_bayes(
            start, psi,
            precondition=precondition,
            estimate_weight=settings.estimate_weight,
            estimate_sigma_guide=settings.estimate_sigma_guide,
            estimate_clone_cov=settings.estimate_clone_cov and cov0 is not None,
            progress=settings.progress,
            robust=settings.uncertainty == "cluster_robust" and settings.bootstrap == 0,
            algebra=algebra,
        )

    eb = fit(problem, psi0, solve, settings.algebra)
    if settings.algebra == "blocks" and exact_fallback:
        robust = settings.uncertainty == "cluster_robust"
        adjusted = eb.clones.adjusted
        if robust and adjusted is None:  # the bootstrap's fit: no robust pass of its own
            adjusted = clone_pass(eb.problem, eb.result, eb.algebra, robust=True).adjusted
        eb.block_check = _block_check(eb.problem, eb.algebra, adjusted if robust else None)
        if np.nanmax(eb.block_check) > BLOCK_CHECK_WARN:
            # auto, and this machine holds the dense algebra: finish exactly, from the
            # blocks' fixed point (one or two dense updates instead of a whole dense fit).
            log.info(
                "Laplace gene blocks: SEs up to %.1f%% off on the genes checked; finishing with the dense algebra, which this machine holds",
                100 * np.nanmax(eb.block_check),
            )
            check = eb.block_check
            eb = fit(eb.problem, eb.result.psi, eb.algebra.solver(), "dense")
            eb.block_check, eb.dense_fallback = check, True
    if not eb.result.converged:
        log.warning("Laplace: Newton did not converge in %d iterations", eb.result.n_iter)
    hyper_out = {"tau": np.asarray(hyper["tau"]), "sigma_time": np.asarray(hyper["sigma_time"]), "sigma_guide": eb.problem.sigma_guide}
    if settings.bootstrap > 0:
        reps = one_step_bootstrap(eb, settings.bootstrap, settings.seed)
        return BootstrapPosterior.from_replicates(eb, hyper_out, reps)
    return LaplacePosterior.from_fit(eb, hyper_out, settings)


def _clone_start(
    problem: LaplaceProblem, psi0: np.ndarray, clone_cov: np.ndarray | None, estimate: bool, structured: bool = False
) -> tuple[np.ndarray | None, LaplaceResult | None]:
    """The clone covariance to start from (or to fix), or None for no clone effect; and the mode without clone effects when it was found.

    Without :data:`MIN_MULTICELL_CLONES` clones of two cells or more there is nothing to
    estimate it from. Otherwise, unless it is given, the moment estimate at the mode
    without clone effects (:func:`clone_cov_moments`) starts it; where the clones' cells
    share no fate bias at all (its SDs below :data:`MIN_CLONE_SD`) the clone effect is
    left out, and the cluster-robust covariance still covers what little there is.
    """
    if multicell_clones(problem.clusters) < MIN_MULTICELL_CLONES:
        log.info("no clone effect: fewer than %d clones of two or more cells", MIN_MULTICELL_CLONES)
        return None, None
    if clone_cov is not None and not estimate:
        return np.asarray(clone_cov, dtype=np.float64), None
    res = newton_mode(problem, psi0, hessian_at_mode=False, tol=START_TOL, structured=structured)
    moments = clone_cov_moments(problem, res)
    sd = np.sqrt(np.diag(moments))
    if (sd < MIN_CLONE_SD).all():
        log.info("no clone effect: the clones' cells share no fate bias (moment estimate of its SD %s)", np.round(sd, 3).tolist())
        return None, res
    return moments + np.eye(moments.shape[0]) * MIN_CLONE_SD**2, res


def _block_check(problem: LaplaceProblem, algebra: BlockAlgebra, adjusted: np.ndarray | None) -> tuple[float, float]:
    """The gene blocks' check (:meth:`BlockAlgebra.check`): the model-based and robust SEs' largest relative errors (robust: NaN without ``adjusted`` residuals)."""
    scores = None if adjusted is None else cluster_scores(problem, adjusted)
    return algebra.check(check_genes(problem.layout.n_genes), scores)


#: A clone effect whose SD (logit scale) is below this in every contrast is left out.
MIN_CLONE_SD = 0.05
#: Newton's tolerance for the mode without clone effects: a start (of the moment estimate and of empirical Bayes), not a result.
START_TOL = 1e-6


# --------------------------------------------------------------------------- the fitted posterior
class LaplacePosterior:
    """A Gaussian posterior of the effects: the mode and each gene's joint covariance.

    Stores, per gene, the covariance of its theta (contrasts x days) jointly with its
    guides' u (contrasts x guides): enough to draw every gene/day and guide/day effect,
    and any within-gene combination (across-day sums, beta = theta + delta), exactly
    under the Gaussian approximation. Cross-gene covariances are not kept: nothing
    downstream uses them.
    """

    family = "laplace"

    def __init__(self, params: dict[str, np.ndarray]):
        self.params = params

    @classmethod
    def from_fit(cls, eb: EBResult, hyper: dict[str, np.ndarray], settings: LaplaceSettings) -> LaplacePosterior:
        """The per-gene blocks of the converged fit ``eb`` (model-based, or cluster-robust and t-widened)."""
        problem, res, algebra = eb.problem, eb.result, eb.algebra
        lay, K = problem.layout, problem.n_contrasts
        index, mask = gene_blocks(lay, problem.gene_of_guide, K)
        extra: dict[str, np.ndarray] = {}
        if settings.uncertainty == "cluster_robust":
            cp = eb.clones if eb.clones.adjusted is not None else clone_pass(problem, res, algebra, robust=True)
            sel = np.arange(lay.n_genes) if settings.genes is None else np.asarray(settings.genes, dtype=np.int64)
            model = algebra.blocks(index)
            blocks = model.copy() if sel.size < lay.n_genes else np.empty_like(model)
            blocks[sel] = robust_blocks(problem, algebra, cp.adjusted, index[sel])
            theta_idx = index[sel, : K * lay.n_days]  # contrast-major (k, d)
            df = np.full((lay.n_genes, K, lay.n_days), np.nan)
            df[sel] = bm_degrees_of_freedom(problem, algebra, cp, theta_idx.ravel()).reshape(sel.size, K, lay.n_days)
            model[~(mask[:, :, None] & mask[:, None, :])] = 0.0
            extra = {"theta_df": df, "block_cov_model": model}
        else:
            blocks = algebra.blocks(index)
        if eb.dense_fallback:
            extra["block_check"], extra["dense_fallback"] = np.asarray(eb.block_check), np.asarray(True)
        elif isinstance(algebra, BlockAlgebra) and settings.genes is None:
            adjusted = cp.adjusted if settings.uncertainty == "cluster_robust" else None
            check = eb.block_check if eb.block_check is not None else _block_check(problem, algebra, adjusted)
            extra["block_check"] = np.asarray(check)
            if np.nanmax(extra["block_check"]) > BLOCK_CHECK_WARN:
                log.warning(
                    "Laplace gene blocks: SEs up to %.1f%% off the exact ones on the genes checked (model %.2f%%, robust %.2f%%); "
                    "laplace_algebra: dense is exact where this machine holds it",
                    100 * np.nanmax(extra["block_check"]), *(100 * extra["block_check"]),
                )
        return cls(_params(eb, hyper, blocks, mask, extra))

    # ----------------------------------------------------------------- effects
    @property
    def clone_cov(self) -> np.ndarray | None:
        cov = self.params.get("clone_cov")
        return None if cov is None or np.asarray(cov).size == 0 else np.asarray(cov)

    def hyper(self) -> dict[str, np.ndarray]:
        """tau, sigma_time and sigma_guide the posterior was computed at."""
        return {k: np.asarray(self.params[f"hyper_{k}"]) for k in ("tau", "sigma_time", "sigma_guide")}

    def _delta(self, u: np.ndarray, gene_of_guide: np.ndarray, n_genes: int) -> np.ndarray:
        """delta = sigma_guide (u - gene mean of u) for u of shape (..., G, K)."""
        return self.params["sigma_guide"] * centre_within_gene(u, gene_of_guide, n_genes)

    def point(self, gene_of_guide: np.ndarray, n_genes: int) -> dict[str, np.ndarray]:
        """Mode values of a, b, c, theta (L, K, D) and delta (G, K)."""
        p = self.params
        return {
            "a": p["a"], "b": p["b"], "c": p["c"], "theta": p["theta"],
            "delta": self._delta(p["u"], gene_of_guide, n_genes),
        }

    def model_based(self) -> LaplacePosterior:
        """The same posterior with the model's covariance instead of the cluster-robust one (when it kept both)."""
        if "block_cov_model" not in self.params:
            return self
        params = dict(self.params)
        blocks = params.pop("block_cov_model").copy()
        pad = ~params["block_mask"]
        eye = np.broadcast_to(np.eye(pad.shape[1], dtype=bool), blocks.shape)
        blocks[eye & pad[:, :, None]] = 1.0
        params["block_cov"] = blocks
        params.pop("theta_df", None)
        return type(self)(params)

    def t_factor(self, tail: float) -> np.ndarray | None:
        """(L, K, D) factors that widen each gene/day interval to the Student-t one at ``tail`` (None without degrees of freedom)."""
        df = self.params.get("theta_df")
        return None if df is None else t_scale(np.asarray(df), tail)

    def sample_effects(
        self, n: int, rng: np.random.Generator, gene_of_guide: np.ndarray, n_genes: int, tail: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws of theta (n, L, K, D) and delta (n, G, K) from the per-gene Gaussians.

        With ``tail`` and a cluster-robust posterior, each gene/day's deviations from the
        mode are scaled so that its normal interval is as wide as the Student-t one with
        its degrees of freedom at that one-sided tail (the calls' strictest threshold), and
        its guides' by the largest of its gene's factors: downstream steps read a normal
        SD, so this is where the t distribution enters.
        """
        p = self.params
        theta0, u0 = p["theta"], p["u"]
        L, K, D = theta0.shape
        chol = np.linalg.cholesky(p["block_cov"])  # (L, B, B)
        dev = np.einsum("lij,slj->sli", chol, rng.standard_normal((n, L, chol.shape[1])))
        factor = None if tail is None else self.t_factor(tail)
        if factor is not None:
            scale = np.concatenate(
                [factor.reshape(L, K * D), np.repeat(factor.max(axis=(1, 2))[:, None], chol.shape[1] - K * D, axis=1)], axis=1
            )
            dev = dev * scale[None]
        theta = theta0[None] + dev[:, :, : K * D].reshape(n, L, K, D)
        u_dev = dev[:, :, K * D :].reshape(n, L, K, -1)  # (n, L, K, slots)
        slot = guide_slots(gene_of_guide, n_genes)
        u = u0[None] + u_dev[:, gene_of_guide, :, slot].transpose(1, 0, 2)
        return theta, self._delta(u, gene_of_guide, n_genes)


#: Genes whose SEs the gene-block posterior checks against exact ones (spread over the screen).
BLOCK_CHECK_GENES = 3
#: Relative SE error above which that check warns.
BLOCK_CHECK_WARN = 0.01


def check_genes(n_genes: int) -> np.ndarray:
    """The genes the gene-block check solves for: evenly spread, the same on every run."""
    return np.unique(np.linspace(0, n_genes - 1, min(BLOCK_CHECK_GENES, n_genes)).round().astype(np.int64))


def _params(eb: EBResult, hyper: dict[str, np.ndarray], blocks: np.ndarray | None, mask: np.ndarray | None, extra: dict) -> dict[str, np.ndarray]:
    """What a Laplace posterior stores: the mode, the blocks, the hyperparameters and the fit's facts."""
    problem, res = eb.problem, eb.result
    lay, K = problem.layout, problem.n_contrasts
    out: dict[str, np.ndarray] = {}
    if blocks is not None:
        blocks = blocks.copy()
        pad = ~mask  # padding entries: unit variance, no correlation, so every block is PD
        blocks[pad[:, :, None] | pad[:, None, :]] = 0.0
        eye = np.broadcast_to(np.eye(mask.shape[1], dtype=bool), blocks.shape)
        blocks[eye & pad[:, :, None]] = 1.0
        out = {"block_cov": blocks, "block_mask": mask}
    psi = res.psi
    out.update({
        "a": psi[:, lay.a],
        "b": psi[:, lay.b],
        "c": psi[:, lay.c],
        "theta": psi[:, lay.theta].reshape(K, lay.n_genes, lay.n_days).transpose(1, 0, 2),
        "u": psi[:, lay.u].T,
        "sigma_guide": problem.sigma_guide,
        "weight": np.asarray(problem.weight),
        "clone_cov": np.zeros((0, 0)) if problem.clone_cov is None else problem.clone_cov,
        "newton_iterations": np.asarray(eb.newton_iterations),
        "eb_iterations": np.asarray(len(eb.trace)),
        "eb_trace": np.asarray([row["objective_per_cell"] for row in eb.trace]),
        "converged": np.asarray(res.converged and eb.converged),
        "objective": np.asarray(res.objective),
        **{f"hyper_{k}": v for k, v in hyper.items()},
    })
    out.update(extra)
    return out


def one_step_bootstrap(eb: EBResult, n_boot: int, seed: int, chunk: int = 50) -> np.ndarray:
    """One-step Newton bootstrap over clones: (B, K, P) replicate parameters.

    Each replicate reweights whole clones by Poisson(1) counts and takes one Newton step
    from the mode with the eliminated Hessian: ``psi_b = psi - S^-1 (g_b(psi) - g(psi))``
    (g = 0 at the mode; a clone's effect is at its own optimum there, so its score on psi
    is its cells' summed score). Its covariance tends to the sandwich ``S^-1 J S^-1``.
    """
    problem, res = eb.problem, eb.result
    K, P = res.psi.shape
    resid = problem.residuals(res.pi)
    scores = [s.tocsc() for s in cluster_scores(problem, resid)]  # (C, P) raw
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, K, P))
    n_cl = problem.n_clusters
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        m = rng.poisson(1.0, size=(n_cl, b)) - 1.0
        dg = np.stack([problem.centre_rows(np.asarray(sp.csr_matrix(scores[k].T) @ m), k) for k in range(K)])
        step = eb.algebra.solve(dg.reshape(K * P, b))  # the score is minus the gradient
        out[start : start + b] = res.psi[None] + step.T.reshape(b, K, P)
    return out


class BootstrapPosterior(LaplacePosterior):
    """Replicates of the one-step Newton bootstrap; draws resample the replicates."""

    family = "bootstrap"

    @classmethod
    def from_replicates(cls, eb: EBResult, hyper: dict[str, np.ndarray], reps: np.ndarray) -> BootstrapPosterior:
        lay, K = eb.problem.layout, eb.problem.n_contrasts
        params = _params(eb, hyper, None, None, {})
        B = reps.shape[0]
        params["theta_draws"] = reps[:, :, lay.theta].reshape(B, K, lay.n_genes, lay.n_days).transpose(0, 2, 1, 3)
        params["u_draws"] = reps[:, :, lay.u].transpose(0, 2, 1)
        return cls(params)

    def sample_effects(self, n: int, rng: np.random.Generator, gene_of_guide: np.ndarray, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws resampled from the bootstrap replicates."""
        idx = rng.integers(0, self.params["theta_draws"].shape[0], size=n)
        return self.params["theta_draws"][idx], self._delta(self.params["u_draws"][idx], gene_of_guide, n_genes)


def require_mode_fit(posterior) -> None:
    """Raise unless ``posterior`` is a Laplace or bootstrap posterior (it has a mode to refit from)."""
    if getattr(posterior, "family", None) not in ("laplace", "bootstrap"):
        raise FitError("this needs a fit with posterior_method laplace or bootstrap")
