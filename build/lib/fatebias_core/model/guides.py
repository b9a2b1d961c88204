"""Variational families for the fate model.

The baseline is a mean-field guide over the non-centred latents (docs/method.md, "Inference"): an
independent normal per coordinate for the real-valued sites and a log-normal for the
positive scales.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from fatebias_core.model.fate_model import POSITIVE_SITES, FateModel, delta_from, theta_from


def initial_values(model: FateModel) -> dict[str, torch.Tensor]:
    """Starting values of every latent site: empirical day intercepts, scales at half their prior.

    The day intercepts start at the log ratio of mean contrast to mean reference fate
    probability on each day, so the optimiser begins near the nuisance fit.
    """
    d = model.data
    p = d.fate_probs.double()
    D = d.n_days
    day_sum = torch.zeros((D, d.n_fates), dtype=torch.float64, device=p.device).index_add(0, d.day, p)
    frac = (day_sum / day_sum.sum(1, keepdim=True)).clamp(min=1e-4)
    a0 = (frac[:, d.contrast_index].log() - frac[:, d.ref_index : d.ref_index + 1].log()).T  # (K, D)
    pri = model.priors
    half = {"tau": pri.s_tau, "sigma_time": pri.s_time, "sigma_guide": pri.s_guide}
    out = {}
    for name, shape in model.site_shapes().items():
        if name == "a":
            out[name] = a0.to(d.fate_probs.dtype)
        elif name in POSITIVE_SITES:
            out[name] = torch.full(shape, 0.5 * half[name], dtype=d.fate_probs.dtype, device=p.device)
        else:
            out[name] = torch.zeros(shape, dtype=d.fate_probs.dtype, device=p.device)
    return out


class MeanFieldGuide:
    """Mean-field normal guide: ``loc`` and ``scale`` per coordinate of every site.

    Positive sites use ``LogNormal(loc, scale)`` (a normal on the log scale).

    Parameters
    ----------
    model
        The model whose latent sites this guide covers.
    init
        Starting values (constrained space) per site.
    init_scale
        Starting posterior SD (unconstrained space).
    """

    family = "meanfield"

    def __init__(self, model: FateModel, init: dict[str, torch.Tensor] | None = None, init_scale: float = 0.05):
        self.model = model
        self.shapes = model.site_shapes()
        self.init = init if init is not None else initial_values(model)
        self.init_scale = init_scale

    def _params(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        init = self.init[name]
        loc0 = init.clamp(min=1e-6).log() if name in POSITIVE_SITES else init
        loc = pyro.param(f"{name}_loc", lambda: loc0.clone())
        scale = pyro.param(
            f"{name}_scale", lambda: torch.full_like(loc0, self.init_scale), constraint=constraints.softplus_positive
        )
        return loc, scale

    @staticmethod
    def site_distribution(name: str, loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:
        """The variational distribution of one site as an event-shaped distribution."""
        base = dist.LogNormal(loc, scale) if name in POSITIVE_SITES else dist.Normal(loc, scale)
        return base.to_event(loc.dim())

    def __call__(self, idx: torch.Tensor | None = None) -> None:
        for name in self.shapes:
            loc, scale = self._params(name)
            pyro.sample(name, self.site_distribution(name, loc, scale))


class MeanFieldPosterior:
    """A fitted mean-field posterior: numpy ``loc``/``scale`` per site, sampled without Pyro."""

    family = "meanfield"

    def __init__(self, params: dict[str, np.ndarray]):
        self.params = params

    @classmethod
    def from_param_store(cls, shapes: dict[str, tuple[int, ...]]) -> MeanFieldPosterior:
        store = pyro.get_param_store()
        params = {}
        for name in shapes:
            params[f"{name}_loc"] = store[f"{name}_loc"].detach().cpu().double().numpy()
            params[f"{name}_scale"] = store[f"{name}_scale"].detach().cpu().double().numpy()
        return cls(params)

    @property
    def sites(self) -> list[str]:
        return [k.removesuffix("_loc") for k in self.params if k.endswith("_loc")]

    def sample_sites(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` independent draws of every site, (n, *shape) each, constrained space."""
        out = {}
        for name in self.sites:
            loc, scale = self.params[f"{name}_loc"], self.params[f"{name}_scale"]
            draw = loc + scale * rng.standard_normal((n, *loc.shape))
            out[name] = np.exp(draw) if name in POSITIVE_SITES else draw
        return out

    def median_sites(self) -> dict[str, np.ndarray]:
        """The posterior median of every site (the location for normal sites)."""
        out = {}
        for name in self.sites:
            loc = self.params[f"{name}_loc"]
            out[name] = np.exp(loc) if name in POSITIVE_SITES else loc
        return out

    @staticmethod
    def _effects(values: dict[str, np.ndarray], gene_of_guide: np.ndarray, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
        v = {k: torch.from_numpy(np.asarray(x, dtype=np.float64)) for k, x in values.items()}
        g = torch.from_numpy(gene_of_guide)
        per_gene = torch.bincount(g, minlength=n_genes).double()
        theta = theta_from(v["tau"], v["z"], v["sigma_time"], v["eps"])
        delta = delta_from(v["sigma_guide"], v["u"], g, per_gene)
        return theta.numpy(), delta.numpy()

    def sample_effects(self, n: int, rng: np.random.Generator, gene_of_guide: np.ndarray, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws of theta (n, L, K, D) and delta (n, G, K)."""
        return self._effects(self.sample_sites(n, rng), gene_of_guide, n_genes)

    def point(self, gene_of_guide: np.ndarray, n_genes: int) -> dict[str, np.ndarray]:
        """Point values (posterior medians) of a, b, c, theta (L, K, D) and delta (G, K)."""
        m = self.median_sites()
        out = {k: m[k] for k in ("a", "b", "c")}
        if "z" in m:
            out["theta"], out["delta"] = self._effects(m, gene_of_guide, n_genes)
        return out
