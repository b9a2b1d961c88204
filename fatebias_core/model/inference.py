"""Stochastic variational inference for the fate model (docs/method.md, "Inference").

:func:`fit` runs SVI with ``pyro.plate`` minibatches (log-likelihood scaled by N/B),
``ClippedAdam`` with a geometric learning-rate decay, and the mean-field guide. It
shows a progress bar with the ELBO and steps/s, checks convergence, saves checkpoints
that make an interrupted fit resume with the same numbers, and returns a
:class:`FitResult` that can be saved and loaded so exports need no refit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import FitError
from fatebias_core.hashing import json_hash
from fatebias_core.io import atomic_path, save_npz, write_csv, write_json
from fatebias_core.io import layout as names
from fatebias_core.model.design import pearson_dispersion
from fatebias_core.model.fate_model import (
    FateModel,
    ModelData,
    Priors,
    beta_from,
    effect_table,
    full_logits,
    linear_predictor,
)
from fatebias_core.model.guides import MeanFieldGuide, MeanFieldPosterior, initial_values
from fatebias_core.model.laplace import (
    BootstrapPosterior,
    LaplacePosterior,
    LaplaceSettings,
    build_problem,
    check_laplace_size,
    laplace_posterior,
    nuisance_start,
)
from fatebias_core.types import EffectDraws, Experiment, FitResult  # noqa: F401  (EffectDraws, FitResult: re-exported from their old place)

log = logging.getLogger("fatebias.inference")

FIT_FORMAT = 1
# Settings that change the fitted numbers; a checkpoint is only resumed when they match.
FIT_SETTINGS = (
    "fates", "ref_fate", "contrast_fate", "s_alpha", "s_rep", "s_gamma", "s_tau", "s_time", "s_guide",
    "likelihood_weight", "batch_size", "lr", "lr_final", "clip_norm", "num_steps", "seed",
)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise FitError("device: cuda was requested but torch sees no CUDA GPU (use device: auto or cpu)")
    return torch.device(device)


def predict_fates(fit: FitResult, experiment: Experiment) -> np.ndarray:
    """Fate probabilities (N, F) of ``experiment``'s cells at ``fit``'s point values.

    The cells must share the fit's fates, days, replicates and guide ids (a held-out
    split of the fitted experiment, for instance).
    """
    data = ModelData.from_experiment(experiment, fit.ref_fate, fit.contrast_fates, dtype=torch.float64)
    model = FateModel(data, Priors(), guide_effects=fit.guide_effects)
    return fitted_probs(data, model, fit.point()).numpy()


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
    families = {"meanfield": MeanFieldPosterior, **_laplace_classes()}
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


# --------------------------------------------------------------------------- minibatches
class BatchSampler:
    """Minibatches of cell indices: each epoch a fresh permutation, cut into equal batches.

    Every batch has exactly ``batch_size`` cells, so the N/B scaling is exact; the tail
    of a permutation that does not fill a batch is skipped (a new permutation follows,
    so no cell is systematically left out).
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.batch_size, self.device = n, min(batch_size, n), device
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0

    @property
    def full(self) -> bool:
        return self.batch_size >= self.n

    def next(self) -> torch.Tensor | None:
        if self.full:
            return None
        if self.pos + self.batch_size > self.perm.numel():
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx.to(self.device)

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def set_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.perm = state["perm"]
        self.pos = int(state["pos"])


def _windowed_change(elbo: np.ndarray, window: int) -> float:
    """Relative change of the mean loss between the last two windows (inf if too short)."""
    if len(elbo) < 2 * window:
        return math.inf
    last, prev = elbo[-window:].mean(), elbo[-2 * window : -window].mean()
    return float(abs(last - prev) / max(abs(prev), 1e-12))


def steps_to_convergence(elbo: np.ndarray, window: int, tol: float) -> int | None:
    """First step at which the windowed relative change falls below ``tol`` (None if never)."""
    if len(elbo) < 2 * window:
        return None
    c = np.cumsum(np.concatenate([[0.0], elbo]))
    ends = np.arange(2 * window, len(elbo) + 1)
    last = (c[ends] - c[ends - window]) / window
    prev = (c[ends - window] - c[ends - 2 * window]) / window
    change = np.abs(last - prev) / np.maximum(np.abs(prev), 1e-12)
    hit = np.flatnonzero(change < tol)
    return int(ends[hit[0]]) if hit.size else None


# --------------------------------------------------------------------------- checkpoints
CHECKPOINT_NAME = names.CHECKPOINT


def _save_checkpoint(
    path: Path, step: int, elbo: list[float], optim: ClippedAdam, sampler: BatchSampler, settings_hash: str, weight: float
) -> None:
    state = {
        "format": FIT_FORMAT,
        "settings_hash": settings_hash,
        "step": step,
        "elbo": torch.tensor(elbo, dtype=torch.float64),
        "params": pyro.get_param_store().get_state(),
        "optim": optim.get_state(),
        "sampler": sampler.state(),
        "torch_rng": torch.get_rng_state(),
        "likelihood_weight": weight,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, settings_hash: str) -> dict | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise FitError(f"checkpoint {path} is corrupt or unreadable ({exc.__class__.__name__}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != FIT_FORMAT:
        raise FitError(f"checkpoint {path} is not a fatebias checkpoint of format {FIT_FORMAT}; delete it to start over")
    if state.get("settings_hash") != settings_hash:
        log.warning("checkpoint %s was made with other settings; starting over", path)
        return None
    return state


# --------------------------------------------------------------------------- fit
def fitted_probs(data: ModelData, model: FateModel, point: dict[str, np.ndarray]) -> torch.Tensor:
    """Fate probabilities (N, F) of every cell at point values of the latents."""
    v = {k: torch.as_tensor(np.asarray(x), dtype=data.fate_probs.dtype, device=data.fate_probs.device) for k, x in point.items()}
    with torch.no_grad():
        table = None
        if model.guide_effects:
            table = effect_table(beta_from(v["theta"], v["delta"], data.gene_of_guide))
        eta = linear_predictor(data, None, v["a"], v["b"], v["c"], table)
        return torch.softmax(full_logits(data, eta), dim=-1)


def dispersion(data: ModelData, model: FateModel, point: dict[str, np.ndarray]) -> float:
    """Pearson dispersion of the fate probabilities around the fitted ones (see laplace.pearson_dispersion)."""
    pi = fitted_probs(data, model, point).double().cpu().numpy()
    return pearson_dispersion(data.fate_probs.double().cpu().numpy(), pi)


def _point_from_store(model: FateModel, experiment: Experiment) -> dict[str, np.ndarray]:
    gene0 = experiment.guides.gene_of_guide[1:].astype(np.int64) - 1
    return MeanFieldPosterior.from_param_store(model.site_shapes()).point(gene0, experiment.guides.n_genes)


def fit(
    experiment: Experiment,
    config: FatebiasConfig,
    *,
    guide_effects: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    num_steps: int | None = None,
    seed: int | None = None,
    init: dict[str, np.ndarray] | None = None,
    weight: float | None = None,
) -> FitResult:
    """Fit the fate model to ``experiment``.

    SVI with the mean-field guide fits every latent, hyperparameters included. With
    ``likelihood_weight: auto`` the first ``dispersion_warmup_frac`` of the steps use
    w = 1, then w is set to 1 / the Pearson dispersion of the fate probabilities around
    the current fit, and set again after as many steps more (the fit is closer then) (the quasi-likelihood weight that makes the soft-label curvature
    match the data's actual spread). With ``posterior_method: laplace`` the effects'
    posterior is then replaced by the Laplace approximation at the conditional mode
    given the fitted variance hyperparameters (see :mod:`fatebias_core.model.laplace`).

    Parameters
    ----------
    experiment
        The loaded experiment.
    config
        Settings: priors, likelihood weight, batch size, learning-rate schedule, steps,
        seed, device, progress, posterior method.
    guide_effects
        False fits the nuisance-only model (day, replicate, burden terms only).
    checkpoint_dir
        Folder for ``checkpoint.pt``; when it holds a checkpoint made with the same
        settings, the fit resumes from it (same numbers as an uninterrupted run).
    checkpoint_every
        Steps between checkpoints (default ``config.checkpoint_every``).
    num_steps, seed
        Override the configured values (used by diagnostics).
    init
        Starting values (constrained space) of some or all latent sites, e.g. another
        fit's :meth:`FitResult.warm_start` (a warm start); the others start as usual.
    weight
        With ``likelihood_weight: auto``, a likelihood weight to use from the first step
        (e.g. the weight of the fit ``init`` comes from) instead of estimating it after
        a warm-up with w = 1.

    With ``stop_at_convergence`` (a setting) the fit stops at the first check, every
    ``convergence_window`` steps, at which the windowed relative ELBO change is below
    ``convergence_tol``; the learning-rate schedule stays the one of ``num_steps``.

    Returns
    -------
    FitResult
    """
    steps = int(num_steps or config.num_steps)
    seed = config.seed if seed is None else int(seed)
    device = resolve_device(config.device)
    if guide_effects and config.posterior_method != "meanfield":
        check_laplace_size(experiment, len(config.contrast_fates))  # fail before a long fit, not after it
        if config.laplace_effect_scales == "configured":
            return laplace_fit(experiment, config)
    data = ModelData.from_experiment(experiment, config.ref_fate, config.contrast_fates, device=device)
    plan = _WeightPlan.of(config, weight, steps)
    model = FateModel(data, Priors.from_config(config), plan.initial, guide_effects=guide_effects)
    settings = _fit_settings(config, steps, seed, guide_effects, data.n_cells, init, weight)
    settings_hash = _hash(settings)

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = MeanFieldGuide(model, init=_start_values(model, init))
    lrd = (config.lr_final / config.lr) ** (1.0 / max(steps, 1))
    optim = ClippedAdam({"lr": config.lr, "lrd": lrd, "clip_norm": config.clip_norm, "betas": (0.9, 0.999)})
    svi = SVI(model, guide, optim, loss=Trace_ELBO())
    sampler = BatchSampler(data.n_cells, config.batch_size, seed, device)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    elbo, start_step = _resume(ckpt_path, settings_hash, svi, optim, sampler, model, steps)

    loop = _SVILoop(svi, optim, sampler, model, data, experiment, config, plan, steps, ckpt_path, settings_hash,
                    int(checkpoint_every or config.checkpoint_every), "fit" if guide_effects else "fit (nuisance)")
    runtime = loop.run(elbo, start_step)
    trace = np.asarray(elbo)
    posterior = MeanFieldPosterior.from_param_store(model.site_shapes())
    gene0 = experiment.guides.gene_of_guide[1:].astype(np.int64) - 1
    run = _RunFacts(start_step, runtime, str(device), data.n_cells, sampler.batch_size, model.likelihood_weight,
                    dispersion(data, model, posterior.point(gene0, experiment.guides.n_genes)))
    info = _fit_info(trace, plan, loop.stop_window, run, config, steps) | {"settings": settings, "settings_hash": settings_hash}
    if ckpt_path is not None and ckpt_path.exists():
        ckpt_path.unlink()
    result = _fit_result(experiment, config, posterior, trace, info, guide_effects)
    if guide_effects and config.posterior_method != "meanfield":
        result = refine_posterior(result, experiment, config, config.posterior_method)
    return result

@dataclass(frozen=True)
class _WeightPlan:
    """When the likelihood weight is estimated during a fit (``likelihood_weight: auto``)."""

    auto: bool
    initial: float
    updates: frozenset[int]

    @classmethod
    def of(cls, config: FatebiasConfig, weight: float | None, steps: int) -> _WeightPlan:
        """The plan for ``config``: a given ``weight`` replaces the warm-up at w = 1."""
        auto = config.likelihood_weight == "auto" and weight is None
        start = float(weight) if weight is not None and config.likelihood_weight == "auto" else config.likelihood_weight
        warmup = max(1, int(steps * config.dispersion_warmup_frac)) if auto else 0
        # The weight is estimated at the end of the warm-up and re-estimated once more, later,
        # when the effects are closer to fitted; the loss is compared from the last update on.
        updates = frozenset({warmup, min(2 * warmup, steps - 1)}) if auto else frozenset()
        return cls(auto, 1.0 if auto else start, updates)

    @property
    def settled(self) -> int:
        """The step from which the weight no longer changes (0 without updates)."""
        return max(self.updates) if self.updates else 0


def _fit_settings(
    config: FatebiasConfig, steps: int, seed: int, guide_effects: bool, n_cells: int,
    init: dict[str, np.ndarray] | None, weight: float | None,
) -> dict:
    """The settings a checkpoint must have been made with for the fit to resume from it."""
    settings = config.model_dump(include=set(FIT_SETTINGS)) | {
        "num_steps": steps, "seed": seed, "guide_effects": guide_effects, "n_cells": n_cells,
        "posterior_method": config.posterior_method, "dispersion_warmup_frac": config.dispersion_warmup_frac,
        "laplace_effect_scales": config.laplace_effect_scales,
        "bootstrap_replicates": config.bootstrap_replicates if config.posterior_method == "bootstrap" else 0,
    }
    if config.stop_at_convergence:
        settings["stop_at_convergence"] = True
    if init is not None:
        settings["init"] = _hash({k: np.asarray(v).round(12).tolist() for k, v in sorted(init.items())})
        settings["start_weight"] = None if weight is None else float(weight)
    return settings


def _resume(
    ckpt_path: Path | None, settings_hash: str, svi: SVI, optim: ClippedAdam, sampler: BatchSampler,
    model: FateModel, steps: int,
) -> tuple[list[float], int]:
    """The ELBO trace and step to continue from: a matching checkpoint's, else an empty start."""
    if ckpt_path is None or not ckpt_path.exists():
        return [], 0
    state = _load_checkpoint(ckpt_path, settings_hash)
    if state is None:
        return [], 0
    svi.step(sampler.next())  # materialise params and optimiser slots, then overwrite them
    pyro.get_param_store().set_state(state["params"])
    optim.set_state(state["optim"])
    sampler.set_state(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    model.likelihood_weight = float(state["likelihood_weight"])
    start_step = int(state["step"])
    log.info("resuming fit from step %d of %d (%s)", start_step, steps, ckpt_path)
    return state["elbo"].tolist(), start_step


@dataclass
class _SVILoop:
    """The SVI steps of one fit: weight updates, the divergence guard, checkpoints, early stop."""

    svi: SVI
    optim: ClippedAdam
    sampler: BatchSampler
    model: FateModel
    data: ModelData
    experiment: Experiment
    config: FatebiasConfig
    plan: _WeightPlan
    steps: int
    ckpt_path: Path | None
    settings_hash: str
    checkpoint_every: int
    desc: str

    @property
    def stop_window(self) -> int:
        """The window of the early-stop check (shorter than configured for short fits)."""
        return min(self.config.convergence_window, max((self.steps - self.plan.settled) // 4, 1))

    def run(self, elbo: list[float], start_step: int) -> float:
        """Run the steps from ``start_step``, appending each loss to ``elbo``; return the seconds taken."""
        t0 = time.perf_counter()
        last_good = start_step
        with contextlib.ExitStack() as stack:
            # Argument validation costs ~1 ms a step; the inputs were validated at load.
            stack.enter_context(pyro.validation_enabled(False))
            bar = _progress(self.config.progress and self.steps > start_step, self.steps, start_step, self.desc)
            if bar is not None:
                stack.callback(bar.close)
            for step in range(start_step, self.steps):
                self._update_weight(step)
                loss = self.svi.step(self.sampler.next())
                self._guard(loss, step, elbo, last_good)
                elbo.append(loss)
                _show(bar, loss, step, self.steps, 1.0 / self.data.n_cells)
                if self.ckpt_path is not None and (step + 1) % self.checkpoint_every == 0 and step + 1 < self.steps:
                    _save_checkpoint(self.ckpt_path, step + 1, elbo, self.optim, self.sampler, self.settings_hash,
                                     self.model.likelihood_weight)
                    last_good = step + 1
                if self.config.stop_at_convergence and _converged_now(
                    elbo, self.plan.settled, self.stop_window, self.config.convergence_tol
                ):
                    log.info("%s: converged at step %d of %d; stopping", self.desc, step + 1, self.steps)
                    break
        return time.perf_counter() - t0

    def _update_weight(self, step: int) -> None:
        """Re-estimate the likelihood weight at the planned steps."""
        if step in self.plan.updates:
            phi = dispersion(self.data, self.model, _point_from_store(self.model, self.experiment))
            self.model.likelihood_weight = 1.0 / phi
            log.info("dispersion %.4g after %d steps: likelihood weight set to %.4g", phi, step, self.model.likelihood_weight)

    def _guard(self, loss: float, step: int, elbo: list[float], last_good: int) -> None:
        """Stop with a clear error when the ELBO becomes non-finite or explodes."""
        settled = self.plan.settled
        recent = elbo[max(settled, len(elbo) - 50):] if step >= settled else elbo[-50:]
        if not math.isfinite(loss) or (len(recent) >= 50 and loss > 1e3 * max(abs(float(np.median(recent))), 1.0)):
            raise FitError(
                f"the ELBO became {'non-finite' if not math.isfinite(loss) else 'explosive'} at step {step + 1} "
                f"(loss {loss:.4g}); last good checkpoint: step {last_good}. Lower lr (now {self.config.lr}) or clip_norm."
            )


def _show(bar: object, loss: float, step: int, steps: int, scale: float) -> None:
    """Update the progress bar with the ELBO every 25 steps and at the end."""
    if bar is not None and (step % 25 == 0 or step == steps - 1):
        bar.set_postfix_str(f"ELBO {-loss:.5g} ({-loss * scale:.4f}/cell)", refresh=False)
        bar.update(step + 1 - bar.n)


@dataclass(frozen=True)
class _RunFacts:
    """Facts of a finished SVI run that its info records."""

    start_step: int
    runtime: float
    device: str
    n_cells: int
    batch_size: int
    likelihood_weight: float
    dispersion_final: float


def _fit_info(trace: np.ndarray, plan: _WeightPlan, stop_window: int, run: _RunFacts, config: FatebiasConfig, steps: int) -> dict:
    """What a fit records about its run: steps, speed, convergence and the weight's schedule."""
    settled, steps_run = plan.settled, len(trace)
    tail = trace[settled:]
    window = stop_window if steps_run < steps else min(config.convergence_window, max(len(tail) // 4, 1))
    conv = steps_to_convergence(tail, window, config.convergence_tol)
    conv_step = None if conv is None else conv + settled
    info = {
        "steps": steps_run,
        "max_steps": steps,
        "stopped_at_convergence": steps_run < steps,
        "resumed_from": run.start_step,
        "runtime_s": round(run.runtime, 3),
        "ms_per_step": round(1e3 * run.runtime / max(steps_run - run.start_step, 1), 3),
        "device": run.device,
        "n_cells": run.n_cells,
        "batch_size": run.batch_size,
        "converged": conv_step is not None,
        "steps_to_convergence": conv_step,
        "final_loss_per_cell": float(tail[-window:].mean() * (1.0 / run.n_cells)),
        "relative_change_last_window": _windowed_change(tail, window),
        "likelihood_weight": run.likelihood_weight,
        "weight_switch_step": settled if plan.auto else None,
        "weight_update_steps": sorted(plan.updates),
        "dispersion_final": run.dispersion_final,
        "posterior_method": "meanfield",
    }
    if conv_step is None:
        log.warning(
            "the ELBO did not converge in %d steps (relative change %.2g over the last %d steps > %g); consider more num_steps",
            steps, info["relative_change_last_window"], window, config.convergence_tol,
        )
    return info



def _converged_now(elbo: list[float], settled: int, window: int, tol: float) -> bool:
    """Whether a convergence check falls on this step and passes (every ``window`` steps after ``settled``)."""
    n = len(elbo) - settled
    if n < 2 * window or n % window:
        return False
    return _windowed_change(np.asarray(elbo[-2 * window :]), window) < tol


def _start_values(model: FateModel, init: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    """The guide's starting values: ``init`` where given (matching shapes), the usual ones elsewhere."""
    if init is None:
        return None
    out = initial_values(model)
    for name, value in init.items():
        if name in out:
            tensor = torch.as_tensor(np.asarray(value), dtype=out[name].dtype, device=out[name].device)
            if tuple(tensor.shape) != tuple(out[name].shape):
                raise FitError(f"warm start: site {name} has shape {tuple(tensor.shape)}, the model needs {tuple(out[name].shape)}")
            out[name] = tensor
    return out


def refine_posterior(fit_result: FitResult, experiment: Experiment, config: FatebiasConfig, method: str) -> FitResult:
    """Replace a mean-field fit's effect posterior by its Laplace or bootstrap refinement.

    The Laplace step starts from the SVI fit's point; tau and sigma_time are its fitted
    values with ``laplace_effect_scales: fitted`` (else the configured s_tau, s_time), and
    sigma_guide, the clone covariance and the likelihood weight are estimated by
    empirical Bayes from the SVI values as a start (unless fixed).

    Parameters
    ----------
    fit_result
        A mean-field fit of ``experiment`` (with guide effects).
    experiment
        The fitted experiment.
    config
        Settings (priors, weight, scales, bootstrap replicates, seed).
    method
        ``laplace`` or ``bootstrap``.
    """
    if fit_result.posterior.family != "meanfield":
        raise FitError(f"refine_posterior needs a mean-field fit, got {fit_result.posterior.family}")
    mf = fit_result.posterior
    median = mf.median_sites()
    point = mf.point(fit_result.gene_of_guide, len(fit_result.gene_names))
    tau, sigma_time = None, None
    if config.laplace_effect_scales == "fitted":
        tau, sigma_time = median["tau"], median["sigma_time"]
    return laplace_fit(
        experiment, config.model_copy(update={"posterior_method": method}), start={**point, "u": median["u"]},
        tau=tau, sigma_time=sigma_time, sigma_guide=median["sigma_guide"], weight=1.0 / fit_result.info["dispersion_final"],
        base=fit_result,
    )


def laplace_fit(
    experiment: Experiment,
    config: FatebiasConfig,
    *,
    start: dict[str, np.ndarray] | None = None,
    tau: np.ndarray | None = None,
    sigma_time: np.ndarray | None = None,
    sigma_guide: np.ndarray | None = None,
    weight: float | None = None,
    base: FitResult | None = None,
) -> FitResult:
    """The fit as the Laplace step with empirical Bayes (docs/method.md, "Inference").

    Given tau and sigma_time (the configured s_tau, s_time unless given), the effects'
    posterior is the Laplace approximation at the joint mode of the effects and the
    clone effects, found by Newton's method; sigma_guide, the clone covariance and the
    likelihood weight are estimated by empirical Bayes alongside (each unless fixed by
    ``fixed_sigma_guide``, ``fixed_clone_cov`` or a numeric ``likelihood_weight``). No SVI
    runs; the trace holds the negative log posterior per cell at each update.

    Parameters
    ----------
    experiment
        The data.
    config
        Settings.
    start
        Starting values of the linear latents (None: zero effects, nuisance at its mode).
    tau, sigma_time, sigma_guide, weight
        Values to use or to start from (sigma_guide, weight) instead of the defaults.
    base
        A mean-field fit this refines: its trace and facts are kept.
    """
    t0 = time.perf_counter()
    K, D = len(config.contrast_fates), experiment.cells.n_days
    fixed_sg = config.fixed_sigma_guide is not None
    hyper = {
        "tau": np.full(K, config.s_tau) if tau is None else np.asarray(tau, dtype=np.float64),
        "sigma_time": np.full((K, D - 1), config.s_time) if sigma_time is None else np.asarray(sigma_time, dtype=np.float64),
        "sigma_guide": np.asarray(
            config.fixed_sigma_guide if fixed_sg else (np.full(K, 0.5 * config.s_guide) if sigma_guide is None else sigma_guide),
            dtype=np.float64,
        ),
    }
    auto = config.likelihood_weight == "auto"
    w0 = float(config.likelihood_weight) if not auto else (weight if weight is not None else _nuisance_weight(experiment, config, hyper))
    settings = LaplaceSettings(
        estimate_weight=auto,
        estimate_sigma_guide=not fixed_sg,
        estimate_clone_cov=config.fixed_clone_cov is None,
        clone_effects=config.clone_effects,
        uncertainty=config.uncertainty,
        bootstrap=config.bootstrap_replicates if config.posterior_method == "bootstrap" else 0,
        seed=config.seed,
        progress=config.progress,
    )
    clone_cov = None if config.fixed_clone_cov is None else np.asarray(config.fixed_clone_cov, dtype=np.float64)
    posterior = laplace_posterior(
        experiment, config.contrast_fates, config.ref_fate, Priors.from_config(config), start, hyper, w0, settings, clone_cov
    )
    p = posterior.params
    runtime = time.perf_counter() - t0
    trace = np.asarray(p["eb_trace"], dtype=np.float64) if "eb_trace" in p else np.zeros(0)
    facts = {
        "posterior_method": config.posterior_method,
        "uncertainty": config.uncertainty,
        "n_clusters": int(experiment.cells.clusters().max(initial=-1)) + 1,
        "cluster_source": experiment.cells.cluster_source,
        "likelihood_weight": float(p["weight"]),
        "dispersion_final": 1.0 / float(p["weight"]),
        "sigma_guide": np.asarray(p["sigma_guide"]).tolist(),
        "clone_cov": None if posterior.clone_cov is None else posterior.clone_cov.tolist(),
        "clone_effects": posterior.clone_cov is not None,
        "estimated": [k for k, on in (("likelihood_weight", auto), ("sigma_guide", not fixed_sg),
                                      ("clone_cov", config.fixed_clone_cov is None and posterior.clone_cov is not None)) if on],
        "laplace_runtime_s": round(runtime, 3),
        "laplace_newton_iterations": int(p["newton_iterations"]),
        "laplace_eb_updates": int(p["eb_iterations"]),
        "laplace_converged": bool(p["converged"]),
    }
    if base is not None:
        info = dict(base.info) | facts
        return dataclasses.replace(base, posterior=posterior, info=info)
    info = {
        "steps": 0, "max_steps": 0, "stopped_at_convergence": False, "resumed_from": 0, "runtime_s": round(runtime, 3),
        "device": "cpu", "n_cells": experiment.n_cells, "converged": facts["laplace_converged"], "steps_to_convergence": None,
        "final_loss_per_cell": float(p["objective"]) / max(experiment.n_cells, 1),
        "weight_switch_step": None, "weight_update_steps": [],
        "settings": {k: v for k, v in config.model_dump(mode="json").items() if k in _LAPLACE_SETTINGS},
        **facts,
    }
    log.info(
        "Laplace fit: %d empirical Bayes updates, %d Newton iterations, %.1f s; weight %.4g, sigma_guide %s%s",
        facts["laplace_eb_updates"], facts["laplace_newton_iterations"], runtime, facts["likelihood_weight"],
        np.round(p["sigma_guide"], 4).tolist(),
        "" if posterior.clone_cov is None else f", clone SD {np.round(np.sqrt(np.diag(posterior.clone_cov)), 3).tolist()}",
    )
    return _fit_result(experiment, config, posterior, trace, info, guide_effects=True)


_LAPLACE_SETTINGS = (
    "fates", "ref_fate", "contrast_fate", "s_alpha", "s_rep", "s_gamma", "s_tau", "s_time", "s_guide",
    "likelihood_weight", "posterior_method", "uncertainty", "clone_effects", "fixed_sigma_guide", "fixed_clone_cov",
    "bootstrap_replicates", "seed",
)


def _nuisance_weight(experiment: Experiment, config: FatebiasConfig, hyper: dict[str, np.ndarray]) -> float:
    """A starting likelihood weight: 1 / the Pearson dispersion around the nuisance-only mode."""
    problem = build_problem(experiment, config.contrast_fates, config.ref_fate, Priors.from_config(config), hyper, 1.0)
    psi = nuisance_start(problem)
    phi = pearson_dispersion(problem.p, problem.probabilities(psi))
    return 1.0 / phi if phi > 0 else 1.0


def _fit_result(
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


def _laplace_classes() -> dict[str, type]:
    return {"laplace": LaplacePosterior, "bootstrap": BootstrapPosterior}


def _hash(obj: dict) -> str:
    return json_hash(obj)


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, mininterval=0.5)
