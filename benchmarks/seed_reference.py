"""A reconstruction of the seed pipeline's SVI, as the reference for per-step speed.

**This is not the seed's code** (it is not in this repository). It is a faithful,
straightforward re-implementation of the seed's fit as the model specification
describes it, written the way a plain Pyro program would be:

* a Pyro model with every latent a ``pyro.sample`` site, the cells in
  ``pyro.plate("cells", N, subsample=idx)`` (so the log-likelihood is scaled by N/B);
* the per-cell sum over the cell's guides by a padded gather: ``beta[guide_ids]`` for
  the minibatch's (B, Kmax) ids, multiplied by the mask and summed over the slots,
  at the cell's day;
* an ``AutoNormal`` mean-field guide (``pyro.infer.autoguide``);
* ``pyro.infer.SVI`` with ``Trace_ELBO`` and ``ClippedAdam`` with the same learning
  rate, and Pyro's argument validation left on (Pyro's default).

It takes the same simulated tensors as :mod:`fatebias_core` and is timed in the same
run by ``benchmarks/fit_speed.py`` and ``benchmarks/run_all.py``, so the ratio of the
two per-step times is measured side by side. Nothing in it is made artificially slow;
where a plain program has a choice it takes the usual one.
"""

from __future__ import annotations

import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import ClippedAdam

from fatebias_core.types import Experiment


class SeedTensors:
    """The experiment as the seed's fit takes it: padded guide ids and mask, per-cell labels."""

    def __init__(self, experiment: Experiment, contrast_fates: list[str], ref_fate: str):
        cells, guides = experiment.cells, experiment.guides
        fates = list(cells.fates)
        self.p = torch.as_tensor(cells.fate_probs, dtype=torch.float32)
        self.day = torch.as_tensor(cells.day, dtype=torch.long)
        self.rep = torch.as_tensor(cells.rep, dtype=torch.long)
        self.kc = torch.as_tensor(cells.burden_centered, dtype=torch.float32)
        self.guide_ids = torch.as_tensor(guides.guide_ids.astype(np.int64))
        self.mask = torch.as_tensor(guides.mask, dtype=torch.float32)
        self.gene_of_guide = torch.as_tensor(guides.gene_of_guide.astype(np.int64))  # (G+1,), 0 for id 0
        self.ref = fates.index(ref_fate)
        self.contrasts = [fates.index(f) for f in contrast_fates]
        self.N, self.F = self.p.shape
        self.K, self.D, self.R = len(self.contrasts), cells.n_days, cells.n_reps
        self.L, self.G = guides.n_genes, guides.n_guides


def seed_model(t: SeedTensors, batch_size: int) -> None:
    """The seed's Pyro model (docs/method.md, "Model"; one minibatch of ``batch_size`` cells)."""
    K, D, R, L, G = t.K, t.D, t.R, t.L, t.G
    a = pyro.sample("a", dist.Normal(torch.zeros(K, D), 2.0).to_event(2))
    b = pyro.sample("b", dist.Normal(torch.zeros(K, R), 0.5).to_event(2))
    c = pyro.sample("c", dist.Normal(torch.zeros(K), 0.5).to_event(1))
    tau = pyro.sample("tau", dist.HalfNormal(torch.ones(K)).to_event(1))
    sigma_time = pyro.sample("sigma_time", dist.HalfNormal(0.5 * torch.ones(K, D - 1)).to_event(2))
    sigma_guide = pyro.sample("sigma_guide", dist.HalfNormal(0.5 * torch.ones(K)).to_event(1))
    z = pyro.sample("z", dist.Normal(torch.zeros(L, K), 1.0).to_event(2))
    eps = pyro.sample("eps", dist.Normal(torch.zeros(L, K, D - 1), 1.0).to_event(3))
    u = pyro.sample("u", dist.Normal(torch.zeros(G, K), 1.0).to_event(2))
    # theta (L, K, D): random walk over days
    theta = torch.cumsum(torch.cat([(tau * z).unsqueeze(-1), sigma_time * eps], dim=-1), dim=-1)
    # delta (G, K): guide deviations centred within each gene
    gene = t.gene_of_guide[1:] - 1
    raw = sigma_guide * u
    counts = torch.bincount(gene, minlength=L).clamp(min=1).float()
    means = torch.zeros(L, K).index_add(0, gene, raw) / counts[:, None]
    delta = raw - means[gene]
    beta = theta[gene] + delta.unsqueeze(-1)  # (G, K, D)
    beta = torch.cat([torch.zeros(1, K, D), beta], dim=0)  # id 0 (NTC, padding) adds nothing
    with pyro.plate("cells", t.N, subsample_size=batch_size) as idx:
        day = t.day[idx]
        ids = t.guide_ids[idx]  # (B, Kmax)
        per_slot = beta[ids, :, day[:, None]]  # (B, Kmax, K): each guide's effect on the cell's day
        guide_sum = (per_slot * t.mask[idx].unsqueeze(-1)).sum(1)
        eta = a.T[day] + b.T[t.rep[idx]] + t.kc[idx, None] * c + guide_sum
        logits = torch.zeros(len(idx), t.F)
        logits[:, t.contrasts] = eta
        logpi = torch.log_softmax(logits, dim=-1)
        pyro.factor("obs", (t.p[idx] * logpi).sum(-1))


def time_seed_steps(
    experiment: Experiment,
    contrast_fates: list[str],
    ref_fate: str,
    batch_size: int,
    steps: tuple[int, int] = (20, 60),
    lr: float = 0.01,
    seed: int = 0,
) -> dict[str, float]:
    """Milliseconds per SVI step of the seed reconstruction.

    Runs ``steps[0]`` warm-up steps, then times ``steps[1]`` more; the per-step time is
    their mean (the first steps pay for the parameters' creation).

    Returns
    -------
    dict
        ``ms_per_step``, ``warmup_steps``, ``timed_steps``, ``last_loss``.
    """
    t = SeedTensors(experiment, contrast_fates, ref_fate)
    batch_size = min(batch_size, t.N)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = lambda: seed_model(t, batch_size)  # noqa: E731 - a plain closure, as a script writes it
    guide = AutoNormal(model)
    svi = SVI(model, guide, ClippedAdam({"lr": lr}), loss=Trace_ELBO())
    for _ in range(steps[0]):
        svi.step()
    t0 = time.perf_counter()
    loss = 0.0
    for _ in range(steps[1]):
        loss = svi.step()
    ms = 1e3 * (time.perf_counter() - t0) / steps[1]
    pyro.clear_param_store()
    return {"ms_per_step": ms, "warmup_steps": steps[0], "timed_steps": steps[1], "last_loss": float(loss)}
