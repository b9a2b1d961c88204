"""The model's deterministic parts against plain loops: linear predictor, centring, random walk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fatebias_core.model.fate_model import (
    FateModel,
    ModelData,
    Priors,
    beta_from,
    delta_from,
    effect_table,
    gather_sum,
    linear_predictor,
    theta_from,
)
from fatebias_core.model.guides import initial_values


def _random_values(model: FateModel, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in model.site_shapes().items():
        v = torch.randn(shape, generator=g, dtype=torch.float64)
        out[name] = v.abs() + 0.1 if name in ("tau", "sigma_time", "sigma_guide") else v
    return out


@pytest.fixture()
def model(tiny_sim):
    exp = tiny_sim.experiment
    data = ModelData.from_experiment(exp, "EC", ["MES", "NEU"], dtype=torch.float64)
    return FateModel(data, Priors())


def test_theta_is_the_random_walk(model):
    v = _random_values(model)
    theta = theta_from(v["tau"], v["z"], v["sigma_time"], v["eps"]).numpy()
    tau, z, st, eps = (v[k].numpy() for k in ("tau", "z", "sigma_time", "eps"))
    L, K, D = theta.shape
    for k in range(K):
        expect = tau[k] * z[:, k]
        np.testing.assert_allclose(theta[:, k, 0], expect)
        for d in range(1, D):
            expect = expect + st[k, d - 1] * eps[:, k, d - 1]
            np.testing.assert_allclose(theta[:, k, d], expect)


def test_delta_is_centred_within_gene(model):
    v = _random_values(model)
    d = model.data
    delta = delta_from(v["sigma_guide"], v["u"], d.gene_of_guide, d.guides_per_gene).numpy()
    genes = d.gene_of_guide.numpy()
    for gene in np.unique(genes):
        np.testing.assert_allclose(delta[genes == gene].mean(0), 0.0, atol=1e-12)
    raw = (v["sigma_guide"] * v["u"]).numpy()
    for g in range(len(genes)):
        np.testing.assert_allclose(delta[g], raw[g] - raw[genes == genes[g]].mean(0))


def test_mean_beta_over_a_genes_guides_is_theta(model):
    v = _random_values(model)
    d = model.data
    theta = theta_from(v["tau"], v["z"], v["sigma_time"], v["eps"])
    beta = beta_from(theta, delta_from(v["sigma_guide"], v["u"], d.gene_of_guide, d.guides_per_gene), d.gene_of_guide).numpy()
    genes = d.gene_of_guide.numpy()
    for gene in np.unique(genes):
        np.testing.assert_allclose(beta[genes == gene].mean(0), theta[gene].numpy(), atol=1e-12)


def test_linear_predictor_matches_a_plain_loop(model, tiny_sim):
    exp = tiny_sim.experiment
    v = _random_values(model, seed=1)
    table = model.effect_table_from(v)
    idx = torch.arange(0, exp.n_cells, 7)
    eta = linear_predictor(model.data, idx, v["a"], v["b"], v["c"], table).numpy()

    d = model.data
    theta = theta_from(v["tau"], v["z"], v["sigma_time"], v["eps"]).numpy()
    delta = delta_from(v["sigma_guide"], v["u"], d.gene_of_guide, d.guides_per_gene).numpy()
    a, b, c = v["a"].numpy(), v["b"].numpy(), v["c"].numpy()
    cells, guides = exp.cells, exp.guides
    for row, i in enumerate(idx.tolist()):
        day = cells.day[i]
        expect = a[:, day] + b[:, cells.rep[i]] + c * cells.burden_centered[i]
        for m in range(guides.kmax):
            gid = guides.guide_ids[i, m]
            if guides.mask[i, m] and gid > 0:
                gene = guides.gene_of_guide[gid] - 1
                expect = expect + theta[gene, :, day] + delta[gid - 1]
        np.testing.assert_allclose(eta[row], expect, rtol=1e-10, atol=1e-10)


def test_gather_sum_gradient_is_a_scatter_add():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(9, 2, dtype=torch.float64, generator=g, requires_grad=True)
    ids = torch.tensor([[0, 3, 3], [8, 1, 0], [2, 2, 2]])
    assert torch.autograd.gradcheck(gather_sum, (table, ids))
    out = gather_sum(table, ids)
    np.testing.assert_allclose(out.detach().numpy(), table.detach().numpy()[ids.numpy()].sum(1))


def test_effect_table_rows_for_id_zero_are_zero(model):
    v = _random_values(model)
    d = model.data
    theta = theta_from(v["tau"], v["z"], v["sigma_time"], v["eps"])
    beta = beta_from(theta, delta_from(v["sigma_guide"], v["u"], d.gene_of_guide, d.guides_per_gene), d.gene_of_guide)
    table = effect_table(beta).numpy()
    G = d.n_guides
    for day in range(d.n_days):
        np.testing.assert_array_equal(table[day * (G + 1)], 0.0)
        np.testing.assert_allclose(table[day * (G + 1) + 1 : (day + 1) * (G + 1)], beta.numpy()[:, :, day])


def test_initial_intercepts_are_empirical_log_ratios(model, tiny_sim):
    a0 = initial_values(model)["a"].numpy()
    p = tiny_sim.experiment.cells.fate_probs.astype(np.float64)
    day = tiny_sim.experiment.cells.day
    for d in range(model.data.n_days):
        mean = p[day == d].mean(0)
        np.testing.assert_allclose(a0[:, d], np.log(mean[1:] / mean[0]), rtol=1e-6)


def test_reference_fate_can_be_any_fate(tiny_sim):
    data = ModelData.from_experiment(tiny_sim.experiment, "NEU", ["EC", "MES"], dtype=torch.float64)
    assert data.ref_index == 2
    assert data.contrast_index.tolist() == [0, 1]
