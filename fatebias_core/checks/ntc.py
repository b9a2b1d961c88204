"""Calibration check on the data: non-targeting guides grouped into pseudo-genes.

A non-targeting (NTC) guide has no effect, so a pseudo-gene made of NTC guides is a
gene whose true effect is zero on every day. Testing such pseudo-genes the way real
genes are tested shows, on the user's own data, whether the standard errors are right:
their z-scores should follow N(0, 1) (SD 1, about 5% beyond +/-1.96). Clones, smoothed
fate probabilities or any other dependence between cells that the likelihood ignores
show up as an SD above 1, before any call is made. This is the check SCEPTRE gives its
users (negative-control pairs), adapted to a fitted model.

How. The NTC guides are split at random into pseudo-genes of the size of a typical
gene's guide set (several random partitions, ``ntc_partitions``). For every
pseudo-gene j, contrast k and day d the fitted model (at its mode, where every NTC
guide counts as the baseline) is asked whether adding an effect of j on day d would
improve the fit: the efficient score statistic

    U = sum_i z_i r_ik,   r_ik = w (p_ik - pi_ik),

with z_i the number of j's guides in cell i on day d, corrected for the fitted
nuisance and gene parameters through the posterior Hessian H. Its variance is taken
either from the model (the likelihood's curvature: right only for independent cells)
or cluster-robustly (the leverage-adjusted scores summed within clones, as the default
intervals do).
``z = U / sqrt(var)`` is a Rao score test, asymptotically the same as the Wald z of a
fitted effect, without refitting anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.stats import norm

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import FitError
from fatebias_core.model.fate_model import Priors
from fatebias_core.model.inference import FitResult
from fatebias_core.model.laplace import (
    LaplaceProblem,
    LaplaceResult,
    leverage_adjusted_residuals,
    lower_to_symmetric,
    problem_at_mode,
)
from fatebias_core.types import Experiment

__all__ = ["NTCCalibration", "ntc_pseudogenes", "ntc_calibration"]

Z_CRIT = 1.959963984540054
SD_WARN = 1.2
"""An SD of the NTC z-scores above this says the standard errors are too small."""


@dataclass
class NTCCalibration:
    """z-scores of NTC pseudo-genes under the model and the cluster-robust variance.

    Attributes
    ----------
    table
        One row per pseudo-gene, contrast and day: ``partition, pseudo_gene, guides,
        fate, day, score, z_model, z_robust``.
    uncertainty
        The run's ``uncertainty`` setting: which z the headline numbers use.
    n_ntc_guides, pseudo_gene_size, n_clusters
        NTC guides used, guides per pseudo-gene, and clones behind the robust variance.
    """

    table: pd.DataFrame
    uncertainty: str
    n_ntc_guides: int
    pseudo_gene_size: int
    n_clusters: int

    @property
    def z(self) -> np.ndarray:
        """The headline z-scores (those of the run's uncertainty setting)."""
        col = "z_robust" if self.uncertainty == "cluster_robust" else "z_model"
        return self.table[col].to_numpy()

    @staticmethod
    def _stats(z: np.ndarray) -> dict[str, float]:
        z = z[np.isfinite(z)]
        if z.size == 0:
            return {"sd": float("nan"), "mean": float("nan"), "beyond_1.96": float("nan"), "n": 0}
        return {
            "sd": float(np.sqrt(np.mean(z**2))),  # around the known centre 0
            "mean": float(z.mean()),
            "beyond_1.96": float(np.mean(np.abs(z) > Z_CRIT)),
            "n": int(z.size),
        }

    @property
    def calibrated(self) -> bool:
        """True when the headline z-scores' SD is at most :data:`SD_WARN`."""
        return bool(self._stats(self.z)["sd"] <= SD_WARN)

    def to_dict(self) -> dict:
        """A JSON-friendly summary (diagnostics.json)."""
        return {
            "uncertainty": self.uncertainty,
            "n_ntc_guides": self.n_ntc_guides,
            "pseudo_gene_size": self.pseudo_gene_size,
            "n_pseudo_genes": int(self.table[["partition", "pseudo_gene"]].drop_duplicates().shape[0]),
            "n_clusters": self.n_clusters,
            "headline": self._stats(self.z),
            "model": self._stats(self.table["z_model"].to_numpy()),
            "cluster_robust": self._stats(self.table["z_robust"].to_numpy()),
            "expected": {"sd": 1.0, "beyond_1.96": 0.05},
            "sd_warn": SD_WARN,
            "calibrated": self.calibrated,
        }

    def describe(self) -> str:
        """One line for the console."""
        s, m, r = self._stats(self.z), self._stats(self.table["z_model"].to_numpy()), self._stats(self.table["z_robust"].to_numpy())
        verdict = "ok" if self.calibrated else f"TOO WIDE (> {SD_WARN}): standard errors are too small"
        return (
            f"NTC calibration ({s['n']} pseudo-gene/days from {self.n_ntc_guides} NTC guides): "
            f"z SD {s['sd']:.2f} (N(0,1): 1), {s['beyond_1.96']:.1%} beyond +/-1.96 (expected 5%) - {verdict}; "
            f"model-based SE {m['sd']:.2f}, cluster-robust {r['sd']:.2f}"
        )

    def qq(self) -> tuple[np.ndarray, np.ndarray]:
        """Normal quantiles and the sorted headline z-scores, for a QQ plot."""
        z = np.sort(self.z[np.isfinite(self.z)])
        q = norm.ppf((np.arange(1, z.size + 1) - 0.5) / max(z.size, 1))
        return q, z


def ntc_pseudogenes(n_ntc: int, size: int, partitions: int, seed: int) -> list[np.ndarray]:
    """Random partitions of NTC indices 0..n_ntc-1 into pseudo-genes of ``size`` guides.

    Each partition is an (n_pseudo, size) array; with fewer NTC guides than ``size``
    there is one pseudo-gene of all of them. Leftover guides of a partition are unused.
    """
    if n_ntc == 0:
        return []
    size = min(size, n_ntc)
    n_pseudo = n_ntc // size
    rng = np.random.default_rng(seed)
    return [rng.permutation(n_ntc)[: n_pseudo * size].reshape(n_pseudo, size) for _ in range(partitions)]


def _pseudo_design(experiment: Experiment, groups: list[np.ndarray]) -> tuple[sp.csr_matrix, pd.DataFrame]:
    """(N, M) counts of each pseudo-gene's guides in each cell on each day, and the column labels."""
    cells, guides = experiment.cells, experiment.guides
    D = cells.n_days
    ntc = guides.ntc_ids
    n, width = ntc.shape
    rows_all, cols_all, labels = [], [], []
    offset = 0
    real = ntc > 0
    cell_of = np.broadcast_to(np.arange(n)[:, None], (n, width))[real]
    ntc0 = ntc[real].astype(np.int64) - 1
    for p, part in enumerate(groups):
        pseudo_of = np.full(len(guides.ntc_names), -1, dtype=np.int64)
        pseudo_of[part.ravel()] = np.repeat(np.arange(part.shape[0]), part.shape[1])
        j = pseudo_of[ntc0]
        use = j >= 0
        rows_all.append(cell_of[use])
        cols_all.append(offset + j[use] * D + cells.day[cell_of[use]])
        for q in range(part.shape[0]):
            names = ";".join(guides.ntc_names[i] for i in sorted(part[q]))
            labels += [{"partition": p, "pseudo_gene": q, "guides": names, "day": cells.day_labels[d]} for d in range(D)]
        offset += part.shape[0] * D
    rows, cols = np.concatenate(rows_all), np.concatenate(cols_all)
    z = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, offset))
    return z, pd.DataFrame(labels)


@dataclass(frozen=True)
class _ScoreTerms:
    """What every contrast's score test shares: the fit at its mode and its cell-level terms."""

    problem: LaplaceProblem
    chol: tuple[np.ndarray, bool]  # Cholesky factor of the posterior Hessian
    adjusted: np.ndarray  # (N, K) leverage-adjusted residuals
    pk: np.ndarray  # (N, K) fitted probabilities of the contrast fates
    resid: np.ndarray  # (N, K) weighted residuals w (p - pi)
    n_clusters: int
    by_cluster: sp.csr_matrix  # (clusters, N) indicator of each cell's cluster
    XT: sp.csr_matrix  # the design transposed
    raw_scores: list[sp.csr_matrix]  # per contrast, the (clusters, P) raw scores


def _score_terms(experiment: Experiment, fit_result: FitResult, config: FatebiasConfig) -> _ScoreTerms:
    """The problem at the fitted mode, its Hessian's factor, residuals and per-cluster scores."""
    problem, psi = problem_at_mode(experiment, fit_result.posterior, fit_result.contrast_fates, fit_result.ref_fate, Priors.from_config(config))
    _, hess, pi = problem.gradient_and_hessian(psi)
    chol = sla.cho_factor(hess, lower=True, overwrite_a=True, check_finite=False)
    # The robust variance uses the clones' leverage-adjusted residuals, as the posterior
    # does: a cluster-robust Laplace posterior keeps them; else they need H^-1.
    adjusted = fit_result.posterior.params.get("adjusted_residuals")
    if adjusted is None or adjusted.shape != pi[:, problem.contrast_index].shape:
        inv, info = sla.lapack.dpotri(chol[0], lower=1)  # H^-1 from the factor (a third of a solve against I)
        if info != 0:
            raise FitError("the Laplace Hessian at the mode is not invertible")
        at_mode = LaplaceResult(psi=psi, cov=lower_to_symmetric(inv), n_iter=0, converged=True, objective=float("nan"), pi=pi)
        adjusted = leverage_adjusted_residuals(problem, at_mode)
    w, idx = problem.weight, problem.contrast_index
    cluster = problem.clusters
    n_clusters = int(cluster.max()) + 1
    return _ScoreTerms(
        problem=problem,
        chol=chol,
        adjusted=adjusted,
        pk=pi[:, idx],
        resid=w * (problem.p[:, idx] - pi[:, idx]),
        n_clusters=n_clusters,
        by_cluster=sp.csr_matrix((np.ones(cluster.size), (cluster, np.arange(cluster.size))), shape=(n_clusters, cluster.size)),
        XT=problem.X.T.tocsr(),
        raw_scores=problem.cluster_scores(adjusted),
    )


def _contrast_scores(t: _ScoreTerms, Z: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pseudo-gene/day column of ``Z``, the score for contrast k and its model and robust variances."""
    problem, pk, w = t.problem, t.pk, t.problem.weight
    K, P = problem.n_contrasts, problem.layout.size
    # Cross-information of the pseudo-gene columns (contrast k) with every parameter.
    B = np.concatenate(
        [
            problem.centre_rows(np.asarray((t.XT.multiply(w * pk[:, kk] * ((kk == k) - pk[:, k])) @ Z).todense()), kk)
            for kk in range(K)
        ]
    )  # (K P, M)
    Y = sla.cho_solve(t.chol, B, check_finite=False)
    own = np.asarray(Z.multiply(Z).T @ (w * pk[:, k] * (1 - pk[:, k]))).ravel()
    var_model = own - np.einsum("pm,pm->m", B, Y)
    score = np.asarray(Z.T @ t.resid[:, k]).ravel()
    # Per-cluster efficient scores: the pseudo-gene score minus its projection on the
    # fitted parameters' scores (u rows of Y centred like the parameters).
    u_c = np.asarray((t.by_cluster @ Z.multiply(t.adjusted[:, [k]])).todense())
    for kk in range(K):
        u_c -= t.raw_scores[kk] @ problem.centre_rows(Y[kk * P : (kk + 1) * P], kk)
    var_robust = (u_c**2).sum(axis=0)
    return score, var_model, var_robust


def ntc_calibration(experiment: Experiment, fit_result, config) -> NTCCalibration | None:
    """Score-test z-scores of NTC pseudo-genes at a fitted Laplace/bootstrap posterior.

    Parameters
    ----------
    experiment
        The fitted experiment (with its NTC guides, ``guides.ntc_ids``).
    fit_result
        :class:`fatebias_core.model.inference.FitResult` with a ``laplace`` or ``bootstrap``
        posterior.
    config
        Settings: ``uncertainty``, ``ntc_pseudogene_size``, ``ntc_partitions``, ``seed``
        and the priors.

    Returns
    -------
    NTCCalibration or None
        None when the experiment has no NTC guide.
    """
    guides = experiment.guides
    if guides.ntc_ids is None or not guides.ntc_names or not (guides.ntc_ids > 0).any():
        return None
    if fit_result.posterior.family not in ("laplace", "bootstrap"):
        raise FitError("the NTC calibration check needs posterior_method laplace or bootstrap")
    per_gene = np.bincount(guides.gene_of_guide[1:], minlength=guides.n_genes + 1)[1:]
    size = config.ntc_pseudogene_size or max(int(np.median(per_gene)), 1)
    groups = ntc_pseudogenes(len(guides.ntc_names), size, config.ntc_partitions, config.seed)
    terms = _score_terms(experiment, fit_result, config)
    Z, labels = _pseudo_design(experiment, groups)
    frames = []
    for k in range(terms.problem.n_contrasts):
        score, var_model, var_robust = _contrast_scores(terms, Z, k)
        frames.append(
            labels.assign(
                fate=fit_result.contrast_fates[k],
                score=score,
                z_model=score / np.sqrt(np.maximum(var_model, 1e-300)),
                z_robust=score / np.sqrt(np.maximum(var_robust, 1e-300)),
            )
        )
    table = pd.concat(frames, ignore_index=True)
    table = table[["partition", "pseudo_gene", "guides", "fate", "day", "score", "z_model", "z_robust"]]
    return NTCCalibration(
        table=table,
        uncertainty=config.uncertainty,
        n_ntc_guides=len(guides.ntc_names),
        pseudo_gene_size=int(groups[0].shape[1]),
        n_clusters=terms.n_clusters,
    )
