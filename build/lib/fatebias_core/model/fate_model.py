"""The MOI-aware fate model (docs/method.md, "Model") as a Pyro model.

Every non-reference fate ("contrast") has its own copy of every parameter; the
contrasts are vectorised along one tensor dimension ``K`` rather than looped over.

Shapes (K contrasts, D days, R replicates, L genes, G non-NTC guides):

* nuisance: ``a`` (K, D), ``b`` (K, R), ``c`` (K,)
* gene-by-day random walk, non-centred: ``tau`` (K,), ``z`` (L, K),
  ``sigma_time`` (K, D-1), ``eps`` (L, K, D-1) -> ``theta`` (L, K, D)
* guide deviations: ``sigma_guide`` (K,), ``u`` (G, K) -> ``delta`` (G, K), centred
  within each gene
* guide effects ``beta = theta[gene] + delta`` (G, K, D)

The sum over a cell's guides never builds a (cells x guides) tensor: ``beta`` is laid
out as a flat (day, guide) table with an all-zero row for id 0 (NTC and padding), each
cell's guide slots are pre-translated to rows of that table, and :class:`GatherSum`
sums them (a gather forward, a scatter-add backward).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from fatebias_core.types import Experiment

# Latent sites in the order the guide, checkpoints and posterior draws list them.
LOCAL_SITES = ("z", "eps", "u")
GLOBAL_SITES = ("a", "b", "c", "tau", "sigma_time", "sigma_guide")
POSITIVE_SITES = frozenset({"tau", "sigma_time", "sigma_guide"})


@dataclass(frozen=True)
class Priors:
    """Prior scales of the model (docs/method.md, "Model")."""

    s_alpha: float = 2.0
    s_rep: float = 0.5
    s_gamma: float = 0.5
    s_tau: float = 1.0
    s_time: float = 0.5
    s_guide: float = 0.5

    @classmethod
    def from_config(cls, config) -> Priors:
        return cls(**{f: getattr(config, f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ModelData:
    """The experiment as tensors on one device, laid out for the model.

    ``flat_ids[i, m] = day[i] * (G + 1) + guide_ids[i, m]`` indexes the flattened
    (day, guide) effect table, whose row ``d * (G + 1)`` is all zeros, so NTC and
    padding entries add nothing and need no mask.
    """

    fate_probs: torch.Tensor  # (N, F) in configured fate order
    day: torch.Tensor  # (N,) long
    rep: torch.Tensor  # (N,) long
    burden_centered: torch.Tensor  # (N,)
    flat_ids: torch.Tensor  # (N, Kmax) long
    gene_of_guide: torch.Tensor  # (G,) long, 0-based gene index of guide ids 1..G
    guides_per_gene: torch.Tensor  # (L,) float
    ref_index: int
    contrast_index: torch.Tensor  # (K,) long, fate columns of the contrasts
    n_days: int
    n_reps: int
    n_genes: int
    n_guides: int

    @property
    def n_cells(self) -> int:
        return int(self.fate_probs.shape[0])

    @property
    def n_fates(self) -> int:
        return int(self.fate_probs.shape[1])

    @property
    def n_contrasts(self) -> int:
        return int(self.contrast_index.shape[0])

    @classmethod
    def from_experiment(
        cls,
        experiment: Experiment,
        ref_fate: str,
        contrast_fates: list[str],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> ModelData:
        """Lay out ``experiment`` for the model on ``device``.

        Parameters
        ----------
        experiment
            The loaded experiment.
        ref_fate
            The reference fate (logit fixed at 0).
        contrast_fates
            The non-reference fates, in output order (primary contrast first).
        """
        cells, guides = experiment.cells, experiment.guides
        fates = list(cells.fates)
        G = guides.n_guides
        flat = cells.day.astype(np.int64)[:, None] * (G + 1) + guides.guide_ids.astype(np.int64)
        # Entries with mask 0 already carry id 0; enforce it so stray ids never leak in.
        flat = np.where(guides.mask, flat, cells.day.astype(np.int64)[:, None] * (G + 1))
        gene0 = guides.gene_of_guide[1:].astype(np.int64) - 1
        per_gene = np.bincount(gene0, minlength=guides.n_genes).astype(np.float64)
        dev = torch.device(device)
        return cls(
            fate_probs=torch.as_tensor(cells.fate_probs, dtype=dtype, device=dev),
            day=torch.as_tensor(cells.day, dtype=torch.long, device=dev),
            rep=torch.as_tensor(cells.rep, dtype=torch.long, device=dev),
            burden_centered=torch.as_tensor(cells.burden_centered, dtype=dtype, device=dev),
            flat_ids=torch.as_tensor(flat, dtype=torch.long, device=dev),
            gene_of_guide=torch.as_tensor(gene0, dtype=torch.long, device=dev),
            guides_per_gene=torch.as_tensor(per_gene, dtype=dtype, device=dev),
            ref_index=fates.index(ref_fate),
            contrast_index=torch.as_tensor([fates.index(f) for f in contrast_fates], dtype=torch.long, device=dev),
            n_days=cells.n_days,
            n_reps=cells.n_reps,
            n_genes=guides.n_genes,
            n_guides=G,
        )


class GatherSum(torch.autograd.Function):
    """``out[i] = sum_m table[ids[i, m]]`` with a scatter-add backward."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(ids)
        ctx.n_rows = table.shape[0]
        # index_select on the flat ids is several times faster than table[ids] and sums the
        # same (B, Kmax, K) values in the same order.
        return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[-1]).sum(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (ids,) = ctx.saved_tensors
        width = ids.shape[1]
        src = grad.unsqueeze(1).expand(-1, width, -1).reshape(-1, grad.shape[-1])
        out = grad.new_zeros((ctx.n_rows, grad.shape[-1])).index_add_(0, ids.reshape(-1), src)
        return out, None


def gather_sum(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Sum of ``table`` rows per row of ``ids``: (B, Kmax) ids -> (B, K)."""
    return GatherSum.apply(table, ids)


# --------------------------------------------------------------------------- deterministic maps
def theta_from(tau: torch.Tensor, z: torch.Tensor, sigma_time: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Gene-by-day effects from the non-centred random walk.

    ``theta[..., l, k, 0] = tau[k] z[l, k]`` and ``theta[..., d] = theta[..., d-1] +
    sigma_time[k, d] eps[l, k, d]``. Leading sample dimensions broadcast.

    Returns
    -------
    torch.Tensor
        (..., L, K, D)
    """
    start = (tau.unsqueeze(-2) * z).unsqueeze(-1)  # (..., L, K, 1)
    steps = sigma_time.unsqueeze(-3) * eps  # (..., L, K, D-1)
    return torch.cumsum(torch.cat([start, steps], dim=-1), dim=-1)


def delta_from(sigma_guide: torch.Tensor, u: torch.Tensor, gene_of_guide: torch.Tensor, guides_per_gene: torch.Tensor) -> torch.Tensor:
    """Guide deviations ``sigma_guide * u`` centred within each gene.

    Returns
    -------
    torch.Tensor
        (..., G, K)
    """
    raw = sigma_guide.unsqueeze(-2) * u  # (..., G, K)
    lead = raw.shape[:-2]
    sums = raw.new_zeros((*lead, guides_per_gene.shape[0], raw.shape[-1]))
    sums = sums.index_add(-2, gene_of_guide, raw)
    means = sums / guides_per_gene.clamp(min=1).unsqueeze(-1)
    return raw - means.index_select(-2, gene_of_guide)


def beta_from(theta: torch.Tensor, delta: torch.Tensor, gene_of_guide: torch.Tensor) -> torch.Tensor:
    """Guide-by-day effects ``beta[g, k, d] = theta[gene(g), k, d] + delta[g, k]``.

    Returns
    -------
    torch.Tensor
        (..., G, K, D)
    """
    return theta.index_select(-3, gene_of_guide) + delta.unsqueeze(-1)


def effect_table(beta: torch.Tensor) -> torch.Tensor:
    """Flatten (G, K, D) guide effects into the (D * (G + 1), K) table with zero rows for id 0."""
    G, K, D = beta.shape
    table = torch.cat([beta.new_zeros(1, K, D), beta], dim=0)  # (G+1, K, D)
    return table.permute(2, 0, 1).reshape(D * (G + 1), K)


def linear_predictor(
    data: ModelData,
    idx: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    table: torch.Tensor | None,
) -> torch.Tensor:
    """eta[i, k] for the cells ``idx`` (all cells when None); ``table`` None drops guide terms.

    Returns
    -------
    torch.Tensor
        (B, K) contrast logits.
    """
    if idx is None:
        day, rep, kc, ids = data.day, data.rep, data.burden_centered, data.flat_ids
    else:  # index_select: the same rows as data.x[idx], without advanced indexing's overhead
        day, rep, kc, ids = (t.index_select(0, idx) for t in (data.day, data.rep, data.burden_centered, data.flat_ids))
    eta = a.T[day] + b.T[rep] + kc.unsqueeze(-1) * c
    if table is not None:
        eta = eta + gather_sum(table, ids)
    return eta


def full_logits(data: ModelData, eta: torch.Tensor) -> torch.Tensor:
    """(B, F) logits with the reference fate fixed at 0."""
    logits = eta.new_zeros((eta.shape[0], data.n_fates))
    return logits.index_copy(1, data.contrast_index, eta)


def soft_label_loglik(data: ModelData, idx: torch.Tensor | None, eta: torch.Tensor) -> torch.Tensor:
    """Per-cell soft-label log-likelihood ``sum_f p[i, f] log pi[i, f]`` (weight not applied)."""
    p = data.fate_probs if idx is None else data.fate_probs.index_select(0, idx)
    logpi = torch.log_softmax(full_logits(data, eta), dim=-1)
    return (p * logpi).sum(-1)


# --------------------------------------------------------------------------- the Pyro model
class FateModel:
    """The Pyro model (docs/method.md, "Model") over a :class:`ModelData`.

    Parameters
    ----------
    data
        Tensors of the experiment.
    priors
        Prior scales.
    likelihood_weight
        Weight ``w`` of the soft-label cross-entropy.
    guide_effects
        False gives the nuisance-only model (no guide terms) used by diagnostics.
    """

    def __init__(self, data: ModelData, priors: Priors, likelihood_weight: float = 1.0, guide_effects: bool = True):
        self.data = data
        self.priors = priors
        self.likelihood_weight = float(likelihood_weight)
        self.guide_effects = guide_effects

    # Shapes of every latent site, in the order of LOCAL_SITES + GLOBAL_SITES.
    def site_shapes(self) -> dict[str, tuple[int, ...]]:
        d = self.data
        K, D, R, L, G = d.n_contrasts, d.n_days, d.n_reps, d.n_genes, d.n_guides
        shapes = {"a": (K, D), "b": (K, R), "c": (K,)}
        if self.guide_effects:
            shapes.update(
                {
                    "tau": (K,),
                    "sigma_time": (K, D - 1),
                    "sigma_guide": (K,),
                    "z": (L, K),
                    "eps": (L, K, D - 1),
                    "u": (G, K),
                }
            )
        return shapes

    def priors_of(self) -> dict[str, dist.Distribution]:
        """The prior of every latent site as an event-shaped distribution."""
        p, dev = self.priors, self.data.fate_probs.device
        out: dict[str, dist.Distribution] = {}
        scale = {"a": p.s_alpha, "b": p.s_rep, "c": p.s_gamma, "tau": p.s_tau, "sigma_time": p.s_time, "sigma_guide": p.s_guide}
        for name, shape in self.site_shapes().items():
            if name in POSITIVE_SITES:
                base = dist.HalfNormal(torch.full(shape, scale[name], device=dev))
            elif name in scale:
                base = dist.Normal(torch.zeros(shape, device=dev), scale[name])
            else:
                base = dist.Normal(torch.zeros(shape, device=dev), 1.0)
            out[name] = base.to_event(len(shape))
        return out

    def effect_table_from(self, values: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The flat (day, guide) effect table from latent values (None in the nuisance-only model)."""
        if not self.guide_effects:
            return None
        d = self.data
        theta = theta_from(values["tau"], values["z"], values["sigma_time"], values["eps"])
        delta = delta_from(values["sigma_guide"], values["u"], d.gene_of_guide, d.guides_per_gene)
        return effect_table(beta_from(theta, delta, d.gene_of_guide))

    def __call__(self, idx: torch.Tensor | None = None) -> None:
        """The model; ``idx`` are the minibatch's cell indices (all cells when None)."""
        if not hasattr(self, "_priors"):  # the priors never change: build them once, not every step
            self._priors = self.priors_of()
        values = {name: pyro.sample(name, prior) for name, prior in self._priors.items()}
        table = self.effect_table_from(values)
        N = self.data.n_cells
        with pyro.plate("cells", N, subsample=idx) as ind:
            sub = None if idx is None else ind
            eta = linear_predictor(self.data, sub, values["a"], values["b"], values["c"], table)
            pyro.factor("obs", self.likelihood_weight * soft_label_loglik(self.data, sub, eta))
