"""Calibration check on the data: non-targeting guides fitted as pseudo-genes (docs/method.md, "Checks").

A non-targeting (NTC) guide has no effect, so a pseudo-gene made of NTC guides is a gene
whose true effect is zero on every day. Fitted like a gene, with guide deviations of its
own and the run's clones, clone effects and robust covariance, its intervals are what a
real gene's would be where nothing happens: they must cover zero as often as they say.
This sees what a gene sees, including clone variance that guide deviations absorb or
clusters that split clones.

How. The NTC guides are split at random into two halves. The first half is grouped into
pseudo-genes of about a gene's number of guides and fitted as genes while the second
half stays the baseline (an NTC guide adds nothing); then the halves swap, so every NTC
guide is in a pseudo-gene once. Both fits are the Laplace step at the run's
hyperparameters (sigma_guide, the clone covariance and the likelihood weight), so they
cost two Newton solves; the cluster-robust sandwich is made for the pseudo-genes only.
Each pseudo-gene/day gets the interval of the run's posterior, widened as the exports
widen it, and ``z = estimate / SD``.

Verdict. The statistic is the sum of the squared z-scores. Under calibration a
pseudo-gene's block of z-scores (contrasts x days) has the correlation R of its
posterior covariance, so the sum has mean ``sum tr(R)`` and variance ``2 sum tr(R^2)``;
it is tested at level :data:`ALPHA` against the chi-square with those two moments
(Satterthwaite: ``a chi2(b)``, ``a = sum tr(R^2) / sum tr(R)``, ``b = (sum tr(R))^2 /
sum tr(R^2)``). R enters only through ``tr(R^2)``: the quadratic form ``z^T R^-1 z``
would amplify the noise of a robust covariance estimated from few clones (a Hotelling
inflation) and raise false alarms where the intervals are right. Intervals widened for
few clones make z's a little smaller than N(0, 1), so the false-alarm rate is at most
ALPHA; intervals too narrow by a factor c scale the statistic by c^2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import chi2, norm

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import FatebiasError
from fatebias_core.io import json_ready, write_csv, write_json
from fatebias_core.io import layout as names
from fatebias_core.types import Experiment, GuideEmbedding

__all__ = ["NTCCheck", "ntc_calibration", "pseudo_gene_experiment", "read_ntc_check", "run_ntc_check"]

ALPHA = 0.05
"""Level of the chi-square test of the pseudo-genes' z-scores."""
Z90 = float(norm.ppf(0.95))


@dataclass
class NTCCheck:
    """The NTC pseudo-genes' intervals and the verdict.

    Attributes
    ----------
    table
        One row per pseudo-gene, contrast and day: ``half, pseudo_gene, guides, fate,
        day, estimate, sd, z, sd_model, z_model, df``.
    statistic, dof, p_value
        The sum of the squared z-scores, the degrees of freedom of the moment-matched
        chi-square it is tested against (the z-scores' correlations lower them) and the
        p-value.
    coverage_90
        Share of pseudo-gene/days whose 90% interval covers 0 (nominal 0.90).
    n_ntc_guides, pseudo_gene_size, uncertainty
        NTC guides used, guides per pseudo-gene, the run's covariance.
    """

    table: pd.DataFrame
    statistic: float
    dof: float
    p_value: float
    coverage_90: float
    n_ntc_guides: int
    pseudo_gene_size: int
    uncertainty: str

    @property
    def calibrated(self) -> bool:
        """False when the z-scores are too spread for calibrated intervals (p below :data:`ALPHA`)."""
        return bool(self.p_value >= ALPHA)

    @property
    def z_sd(self) -> float:
        z = self.table["z"].to_numpy()
        return float(np.sqrt(np.mean(z**2))) if z.size else float("nan")

    def to_dict(self) -> dict:
        """A JSON-friendly summary (``ntc_check.json``, diagnostics.json)."""
        zm = self.table["z_model"].to_numpy()
        return {
            "uncertainty": self.uncertainty,
            "n_ntc_guides": self.n_ntc_guides,
            "pseudo_gene_size": self.pseudo_gene_size,
            "n_pseudo_genes": int(self.table[["half", "pseudo_gene"]].drop_duplicates().shape[0]),
            "n": int(len(self.table)),
            "coverage_90": self.coverage_90,
            "coverage_90_model": float(np.mean(np.abs(zm) < Z90)) if zm.size else None,
            "z_sd": self.z_sd,
            "z_sd_model": float(np.sqrt(np.mean(zm**2))) if zm.size else None,
            "beyond_1.96": float(np.mean(np.abs(self.table["z"]) > 1.96)) if len(self.table) else None,
            "statistic": self.statistic,
            "dof": self.dof,
            "p_value": self.p_value,
            "alpha": ALPHA,
            "calibrated": self.calibrated,
        }

    def describe(self) -> str:
        """One line for the console."""
        d = self.to_dict()
        verdict = "ok" if self.calibrated else "NOT CALIBRATED: the intervals are too narrow for these data and are not trusted"
        return (
            f"NTC check ({d['n_pseudo_genes']} pseudo-genes of {self.pseudo_gene_size} NTC guides, fitted as genes, "
            f"{d['n']} pseudo-gene/days): 90% intervals cover 0 in {self.coverage_90:.1%} (nominal 90%), z SD "
            f"{self.z_sd:.2f}, sum of z^2 {self.statistic:.1f} (scaled chi2 on {self.dof:g} df), p {self.p_value:.2g} - {verdict}"
        )

    def qq(self) -> tuple[np.ndarray, np.ndarray]:
        """Normal quantiles and the sorted z-scores, for a QQ plot."""
        z = np.sort(self.table["z"].to_numpy())
        return norm.ppf((np.arange(1, z.size + 1) - 0.5) / max(z.size, 1)), z


def pseudo_gene_experiment(
    experiment: Experiment, chosen: np.ndarray, size: int
) -> tuple[Experiment, list[list[str]]]:
    """``experiment`` with the NTC guides ``chosen`` (0-based into ``ntc_names``) fitted as pseudo-genes.

    The chosen guides are grouped, in the given order, into pseudo-genes of ``size``
    guides (the last takes the remainder when it would be smaller than 2) named
    ``NTC_pseudo_<q>``; each becomes a targeting guide with id G + 1.. in its cells'
    NTC slots. The other NTC guides stay the baseline.
    """
    guides = experiment.guides
    n_chosen = chosen.size
    n_pseudo = max(n_chosen // size, 1)
    group = np.minimum(np.arange(n_chosen) // size, n_pseudo - 1)
    G, L = guides.n_guides, guides.n_genes
    new_id = np.zeros(len(guides.ntc_names) + 1, dtype=np.int64)  # by 1-based NTC id; 0: stays an NTC
    new_id[chosen + 1] = G + 1 + np.arange(n_chosen)
    ids, mask, ntc = guides.guide_ids.astype(np.int64), guides.mask, guides.ntc_ids.astype(np.int64)
    # The k-th NTC of a cell sits in its k-th NTC slot (id 0 with mask 1).
    slot = mask & (ids == 0)
    slot_rank = np.cumsum(slot, axis=1) - 1
    ntc_real = ntc > 0
    ntc_rank = np.cumsum(ntc_real, axis=1) - 1
    rows, cols = np.nonzero(ntc_real)
    target = new_id[ntc[rows, cols]]
    use = target > 0
    rows, cols, target = rows[use], cols[use], target[use]
    rank = ntc_rank[rows, cols]
    slot_rows, slot_cols = np.nonzero(slot)
    lookup = pd.Series(slot_cols, index=pd.MultiIndex.from_arrays([slot_rows, slot_rank[slot_rows, slot_cols]]))
    place = lookup.reindex(pd.MultiIndex.from_arrays([rows, rank])).to_numpy()
    ok = ~np.isnan(place)
    new_ids = ids.copy()
    new_ids[rows[ok], place[ok].astype(np.int64)] = target[ok]
    new_ntc = ntc.copy()
    new_ntc[rows[ok], cols[ok]] = 0
    new_ntc = -np.sort(-new_ntc, axis=1)  # remaining NTCs first, then padding
    names = [[guides.ntc_names[i] for i in chosen[group == q]] for q in range(n_pseudo)]
    embedding = GuideEmbedding(
        guide_ids=new_ids.astype(guides.guide_ids.dtype),
        mask=mask,
        gene_of_guide=np.concatenate([guides.gene_of_guide, L + 1 + group]),
        guide_names=tuple(guides.guide_names) + tuple(guides.ntc_names[i] for i in chosen),
        gene_names=tuple(guides.gene_names) + tuple(f"NTC_pseudo_{q + 1}" for q in range(n_pseudo)),
        ntc_ids=new_ntc.astype(guides.ntc_ids.dtype),
        ntc_names=guides.ntc_names,
    )
    return dataclasses.replace(experiment, guides=embedding), names


def ntc_calibration(experiment: Experiment, fit_result, config: FatebiasConfig) -> NTCCheck | None:
    """Fit the NTC pseudo-genes like genes at the run's hyperparameters and test their intervals.

    Parameters
    ----------
    experiment
        The fitted experiment (with its NTC guides, ``guides.ntc_ids``).
    fit_result
        The run's :class:`~fatebias_core.model.inference.FitResult` with a ``laplace``
        posterior (its hyperparameters are reused).
    config
        Settings: ``ntc_pseudogene_size``, ``seed`` and everything the fit uses.

    Returns
    -------
    NTCCheck or None
        None when there are fewer than four NTC guides or the fit is not a Laplace one.
    """
    from fatebias_core.model.laplace_fit import laplace_fit

    guides = experiment.guides
    n_ntc = len(guides.ntc_names)
    if guides.ntc_ids is None or n_ntc < 4 or fit_result.posterior.family != "laplace":
        return None
    per_gene = np.bincount(guides.gene_of_guide[1:], minlength=guides.n_genes + 1)[1:]
    size = int(config.ntc_pseudogene_size or max(int(np.median(per_gene)), 2))
    half = n_ntc // 2
    size = max(2, min(size, half // 3 if half >= 6 else half))  # at least three pseudo-genes a half where possible
    order = np.random.default_rng(config.seed + 101).permutation(n_ntc)
    post = fit_result.posterior
    fixed = config.model_copy(update={
        "fixed_sigma_guide": [float(v) for v in post.params["sigma_guide"]],
        "fixed_clone_cov": None if post.clone_cov is None else post.clone_cov.tolist(),
        "clone_effects": post.clone_cov is not None,
        "likelihood_weight": float(post.params["weight"]),
        "posterior_method": "laplace",
        "progress": False,
    })
    tail = config.call_tail(experiment.cells.n_days)
    frames = []
    for h, chosen in enumerate((order[:half], order[half:])):
        exp_h, names = pseudo_gene_experiment(experiment, np.sort(chosen), size)
        pseudo = range(exp_h.guides.n_genes - len(names), exp_h.guides.n_genes)  # the pseudo-genes come last
        res = laplace_fit(exp_h, fixed, posterior_genes=pseudo)
        frames.append(_pseudo_rows(res, names, h, tail))
    table = pd.concat(frames, ignore_index=True)
    per_gene = table.groupby(["half", "pseudo_gene"])[["trr2"]].first()
    stat = float((table["z"] ** 2).sum())
    tr_r, tr_r2 = float(len(table)), float(per_gene["trr2"].sum())
    scale, dof = tr_r2 / tr_r, tr_r**2 / tr_r2
    return NTCCheck(
        table=table.drop(columns="trr2"),
        statistic=stat,
        dof=round(dof, 1),
        p_value=float(chi2.sf(stat / scale, dof)),
        coverage_90=float(np.mean(np.abs(table["z"]) < Z90)),
        n_ntc_guides=n_ntc,
        pseudo_gene_size=size,
        uncertainty=config.uncertainty,
    )


def _pseudo_rows(res, names: list[list[str]], half: int, tail: float) -> pd.DataFrame:
    """The pseudo-genes' rows of a refit: estimate, SD and z (as exported, and model-based), per contrast and day."""
    post = res.posterior
    n_pseudo = len(names)
    L_all = len(res.gene_names)
    genes = np.arange(L_all - n_pseudo, L_all)
    p = post.params
    K, D = len(res.contrast_fates), len(res.day_labels)
    theta = p["theta"][genes]  # (n, K, D)
    blocks = p["block_cov"][genes][:, : K * D, : K * D]  # contrast-major (k, d)
    factor = post.t_factor(tail)
    scale = np.ones((n_pseudo, K * D)) if factor is None else factor[genes].reshape(n_pseudo, K * D)
    cov = blocks * scale[:, :, None] * scale[:, None, :]
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))  # (n, K D)
    z = theta.reshape(n_pseudo, K * D) / sd
    corr = cov / (sd[:, :, None] * sd[:, None, :])
    trr2 = np.einsum("nij,nij->n", corr, corr)  # tr(R^2): the statistic's variance, /2
    model = p.get("block_cov_model", p["block_cov"])[genes][:, : K * D, : K * D]
    sd_model = np.sqrt(np.diagonal(model, axis1=1, axis2=2))
    df = p.get("theta_df")
    df = np.full((n_pseudo, K * D), np.inf) if df is None else df[genes].reshape(n_pseudo, K * D)
    pg, kd = np.meshgrid(np.arange(n_pseudo), np.arange(K * D), indexing="ij")
    return pd.DataFrame({
        "half": half,
        "pseudo_gene": pg.ravel() + 1,
        "guides": [";".join(names[q]) for q in pg.ravel()],
        "fate": [res.contrast_fates[i // D] for i in kd.ravel()],
        "day": [res.day_labels[i % D] for i in kd.ravel()],
        "estimate": theta.reshape(-1),
        "sd": sd.ravel(),
        "z": z.ravel(),
        "sd_model": sd_model.ravel(),
        "z_model": (theta.reshape(n_pseudo, K * D) / sd_model).ravel(),
        "df": df.ravel(),
        "trr2": np.repeat(trr2, K * D),
    })


class CalibrationFailed(FatebiasError):
    """The NTC check found the intervals too narrow and ``on_failed_calibration: stop`` asked to stop."""


def run_ntc_check(experiment: Experiment, fit_result, config: FatebiasConfig, out_dir) -> NTCCheck | None:
    """:func:`ntc_calibration`, written to ``ntc_calibration.csv`` and ``ntc_check.json`` in ``out_dir``.

    Returns None (and removes an earlier run's files) when the check does not apply.
    """
    from pathlib import Path

    out = Path(out_dir)
    result = ntc_calibration(experiment, fit_result, config) if config.ntc_check else None
    if result is None:
        for name in (names.NTC_TABLE, names.NTC_CHECK):
            (out / name).unlink(missing_ok=True)
        return None
    write_csv(result.table, out / names.NTC_TABLE)
    write_json(json_ready(result.to_dict()), out / names.NTC_CHECK)
    return result


def read_ntc_check(out_dir) -> dict | None:
    """The NTC check's summary of a run folder (``ntc_check.json``), or None when there is none."""
    import json
    from pathlib import Path

    path = Path(out_dir) / names.NTC_CHECK
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def require_calibrated(out_dir, config: FatebiasConfig) -> None:
    """Raise :class:`CalibrationFailed` when the run's NTC check failed and ``on_failed_calibration`` is ``stop``."""
    check = read_ntc_check(out_dir)
    if config.on_failed_calibration == "stop" and check is not None and check.get("calibrated") is False:
        raise CalibrationFailed(
            f"the NTC check failed (90% intervals cover 0 in {check['coverage_90']:.1%} of {check['n']} NTC pseudo-gene/days, "
            f"p {check['p_value']:.2g}): the intervals are not trusted, so ranking stopped (on_failed_calibration: stop)"
        )

