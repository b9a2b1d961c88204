"""Shared fixtures: small in-memory experiments in every input layout the loader accepts."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from threadpoolctl import threadpool_limits

# The suite runs as two workers on two cores: one BLAS / OpenMP thread each, in each
# worker and in the processes the tests start, or their thread pools fight over the cores.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
threadpool_limits(1)

FATES = ("EC", "MES", "NEU")
# Matrix columns: targeting guides of genes A, B, C, two NTCs. Deliberately not in
# (gene, guide) order so that tests see the loader's id ordering at work.
MATRIX_GUIDES = ("B_1", "A_2", "NTC_1", "A_1", "C_1", "B_2", "NTC_2")
GUIDE_MAP = pd.DataFrame(
    {
        "guide_name": ["A_1", "A_2", "B_1", "B_2", "C_1", "NTC_1", "NTC_2"],
        "gene_name": ["A", "A", "B", "B", "C", "non-targeting", "non-targeting"],
        "is_ntc": [0, 0, 0, 0, 0, 1, 1],
    }
)


class Lineage(np.ndarray):
    """Stand-in for CellRank's in-memory ``Lineage``: an array carrying fate names."""

    def __new__(cls, values: np.ndarray, names: list[str]) -> Lineage:
        obj = np.asarray(values).view(cls)
        obj.names = list(names)
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.names = getattr(obj, "names", None)


@dataclass
class SmallInputs:
    """A small experiment: the AnnData, its guide map and the truth in configured order."""

    adata: ad.AnnData
    guide_map: pd.DataFrame
    probs: np.ndarray  # (N, F) in FATES order
    detect: np.ndarray  # (N, J) bool, columns MATRIX_GUIDES
    day_labels: np.ndarray  # (N,) str
    rep_labels: np.ndarray  # (N,) str

    def write(self, folder: Path, **settings: Any) -> Path:
        """Write adata.h5ad, guide_map.csv and a config.yaml with ``settings``; return the config path."""
        folder.mkdir(parents=True, exist_ok=True)
        self.adata.write_h5ad(folder / "adata.h5ad")
        self.guide_map.to_csv(folder / "guide_map.csv", index=False)
        cfg = {
            "adata_path": "adata.h5ad",
            "guide_map_csv": "guide_map.csv",
            "out_dir": "out",
            **settings,
        }
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        return folder / "config.yaml"


def make_inputs(
    n_cells: int = 48,
    fate_layout: str = "dataframe",
    guide_layout: str = "sparse",
    rep_in: str = "obsm",
    days: tuple[str, ...] = ("d0", "d1", "d2"),
    reps: tuple[str, ...] = ("rep1", "rep2"),
    detect_prob: float = 0.35,
    seed: int = 0,
) -> SmallInputs:
    """Build a small AnnData in one of the layouts the loader reads.

    ``fate_layout``: ``dataframe`` (obsm DataFrame, columns shuffled), ``uns`` (array +
    ``uns["lineages_fwd_names"]``, shuffled), ``cellrank2`` (array + categories of
    ``obs["term_states_fwd"]``, shuffled), ``lineage`` (in-memory Lineage, shuffled),
    ``none`` (plain array in configured order, no names).
    ``guide_layout``: ``sparse`` (CSR + uns names), ``dense`` (ndarray + uns names),
    ``dataframe``. ``rep_in``: ``obsm`` (covariates DataFrame) or ``obs``.
    """
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(FATES)), size=n_cells)
    detect = rng.random((n_cells, len(MATRIX_GUIDES))) < detect_prob
    counts = detect * rng.integers(1, 6, size=detect.shape)
    day_labels = np.asarray(days, dtype=object)[np.arange(n_cells) % len(days)]
    rep_labels = np.asarray(reps, dtype=object)[(np.arange(n_cells) // len(days)) % len(reps)]
    index = pd.Index([f"c{i}" for i in range(n_cells)])
    obs = pd.DataFrame({"day": pd.Categorical(day_labels)}, index=index)
    obsm: dict[str, Any] = {}
    uns: dict[str, Any] = {}

    file_order = [2, 0, 1]  # NEU, EC, MES
    file_names = [FATES[j] for j in file_order]
    shuffled = probs[:, file_order]
    if fate_layout == "dataframe":
        obsm["lineages_fwd"] = pd.DataFrame(shuffled, columns=file_names, index=index)
    elif fate_layout == "uns":
        obsm["lineages_fwd"] = shuffled
        uns["lineages_fwd_names"] = np.asarray(file_names, dtype=object)
    elif fate_layout == "cellrank2":
        obsm["lineages_fwd"] = shuffled
        states = np.where(shuffled.max(axis=1) > 0.6, shuffled.argmax(axis=1), -1)
        obs["term_states_fwd"] = pd.Categorical.from_codes(states, categories=file_names)
        uns["term_states_fwd_colors"] = np.asarray(["#111111", "#222222", "#333333"], dtype=object)
    elif fate_layout == "lineage":
        obsm["lineages_fwd"] = Lineage(shuffled, file_names)
    elif fate_layout == "none":
        obsm["lineages_fwd"] = probs.copy()
    else:
        raise ValueError(fate_layout)

    if guide_layout == "sparse":
        obsm["guide_assignment"] = sp.csr_matrix(counts.astype(np.float32))
        uns["guide_assignment_names"] = np.asarray(MATRIX_GUIDES, dtype=object)
    elif guide_layout == "dense":
        obsm["guide_assignment"] = counts.astype(np.int32)
        uns["guide_assignment_names"] = np.asarray(MATRIX_GUIDES, dtype=object)
    elif guide_layout == "dataframe":
        obsm["guide_assignment"] = pd.DataFrame(counts, columns=list(MATRIX_GUIDES), index=index)
    else:
        raise ValueError(guide_layout)

    if rep_in == "obsm":
        obsm["covariates"] = pd.DataFrame({"replicate": pd.Categorical(rep_labels)}, index=index)
    else:
        obs["replicate"] = pd.Categorical(rep_labels)

    adata = ad.AnnData(obs=obs, obsm=obsm, uns=uns)
    return SmallInputs(adata, GUIDE_MAP.copy(), probs, detect, day_labels, rep_labels)


@pytest.fixture
def small_inputs() -> Callable[..., SmallInputs]:
    """Factory of small experiments: ``small_inputs(fate_layout=..., guide_layout=..., ...)``."""
    return make_inputs


# --------------------------------------------------------------------------- tiny simulations
TINY_SIM = dict(
    sim_n_cells=3000,
    sim_n_genes=12,
    sim_n_guides=48,
    sim_n_ntc_guides=6,
    sim_kmax=5,
    sim_active_frac=0.34,
    sim_effect_min=0.6,
    sim_effect_max=1.0,
    sim_seed=3,
)
# A smaller simulation and shorter fit still, for tests that run the chain several times.
TINY_CHAIN = {
    "sim_n_cells": 1500,
    "sim_n_genes": 12,
    "sim_n_guides": 36,
    "sim_kmax": 4,
    "sim_active_frac": 0.25,
    "sim_effect_min": 0.8,
    "sim_effect_max": 1.2,
    "num_steps": 150,
    "num_posterior_draws": 100,
    "convergence_window": 20,
    "progress": False,
    "device": "cpu",
}
TINY_FIT = dict(num_steps=300, batch_size=1024, num_posterior_draws=200, progress=False, device="cpu", run_diagnostics=False)


@dataclass
class TinySim:
    """A small simulated experiment, loaded, with its truth and a matching config."""

    config: Any
    experiment: Any
    sim: Any


@pytest.fixture(scope="session")
def tiny_sim() -> TinySim:
    from fatebias_core.config import make_config
    from fatebias_core.data.load import load_experiment
    from fatebias_core.data.simulate import simulate_experiment

    cfg = make_config(**TINY_SIM, **TINY_FIT)
    sim = simulate_experiment(cfg)
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    return TinySim(cfg, exp, sim)


@pytest.fixture(scope="session")
def tiny_fit(tiny_sim):
    """The default (Laplace) fit of the tiny simulation."""
    from fatebias_core.model.inference import fit

    return fit(tiny_sim.experiment, tiny_sim.config)
