"""A fit on disk and in memory: building a :class:`~fatebias_core.types.FitResult` for an experiment, saving it and loading it back.

:func:`write_fit` writes ``variational_params.npz``, ``elbo_trace.csv`` and ``fit.json`` into
a folder; :func:`load_fit` reads them back, so exports and diagnostics need no refit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import FitError
from fatebias_core.io import layout as names
from fatebias_core.io import save_npz, write_csv, write_json
from fatebias_core.model.guides import MeanFieldPosterior
from fatebias_core.model.laplace import BootstrapPosterior, LaplacePosterior
from fatebias_core.types import Experiment, FitResult

FIT_FORMAT = 1
"""Version of the saved fit and checkpoint files; a file of another version is refused."""


def make_fit_result(
    experiment: Experiment, config: FatebiasConfig, posterior: MeanFieldPosterior | LaplacePosterior, elbo: np.ndarray,
    info: dict, guide_effects: bool,
) -> FitResult:
    """A :class:`FitResult` of ``experiment``: its labels and names with the fitted posterior."""
    cells, guides = experiment.cells, experiment.guides
    return FitResult(
        posterior=posterior,
        elbo=elbo,
        fates=list(cells.fates),
        ref_fate=config.ref_fate,
        contrast_fates=config.contrast_fates,
        day_labels=list(cells.day_labels),
        rep_labels=list(cells.rep_labels),
        gene_names=list(guides.gene_names),
        guide_names=list(guides.guide_names),
        gene_of_guide=guides.gene_of_guide[1:].astype(np.int64) - 1,
        day_counts=cells.day_counts(),
        guide_effects=guide_effects,
        info=info,
    )


def write_fit(fit: FitResult, folder: str | Path) -> Path:
    """Save ``fit``'s fitted parameters, trace and metadata into ``folder`` (:func:`load_fit` reads them back).

    Writes ``variational_params.npz``, ``elbo_trace.csv`` and ``fit.json``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_npz(folder / names.FIT_PARAMS, gene_of_guide=fit.gene_of_guide, day_counts=fit.day_counts, **fit.posterior.params)
    write_csv(pd.DataFrame({"step": np.arange(1, len(fit.elbo) + 1), "loss": fit.elbo}), folder / names.FIT_ELBO)
    meta = {
        "format": FIT_FORMAT,
        "family": fit.posterior.family,
        "fates": fit.fates,
        "ref_fate": fit.ref_fate,
        "contrast_fates": fit.contrast_fates,
        "day_labels": fit.day_labels,
        "rep_labels": fit.rep_labels,
        "gene_names": fit.gene_names,
        "guide_names": fit.guide_names,
        "guide_effects": fit.guide_effects,
        "info": fit.info,
    }
    write_json(meta, folder / names.FIT_META)
    return folder


def load_fit(folder: str | Path) -> FitResult:
    """Load a :class:`FitResult` saved by :meth:`FitResult.save`."""
    folder = Path(folder)
    meta_path, params_path = folder / names.FIT_META, folder / names.FIT_PARAMS
    for p in (meta_path, params_path):
        if not p.exists():
            raise FitError(f"no saved fit in {folder}: {p.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
        with np.load(params_path) as z:
            arrays = {k: z[k] for k in z.files}
        elbo = pd.read_csv(folder / names.FIT_ELBO)["loss"].to_numpy()
    except (OSError, ValueError, KeyError) as exc:
        raise FitError(f"saved fit in {folder} could not be read ({exc.__class__.__name__}: {exc})") from None
    if meta.get("format") != FIT_FORMAT:
        raise FitError(f"saved fit in {folder} has format {meta.get('format')}, expected {FIT_FORMAT}")
    gene_of_guide = arrays.pop("gene_of_guide")
    day_counts = arrays.pop("day_counts")
    families = {"meanfield": MeanFieldPosterior, "laplace": LaplacePosterior, "bootstrap": BootstrapPosterior}
    if meta.get("family") not in families:
        raise FitError(f"saved fit in {folder} has unknown posterior family {meta.get('family')!r}")
    return FitResult(
        posterior=families[meta["family"]](arrays),
        elbo=elbo,
        fates=meta["fates"],
        ref_fate=meta["ref_fate"],
        contrast_fates=meta["contrast_fates"],
        day_labels=meta["day_labels"],
        rep_labels=meta["rep_labels"],
        gene_names=meta["gene_names"],
        guide_names=meta["guide_names"],
        gene_of_guide=gene_of_guide,
        day_counts=day_counts,
        guide_effects=meta["guide_effects"],
        info=meta["info"],
    )
