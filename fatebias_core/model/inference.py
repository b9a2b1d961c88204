"""Stochastic variational inference for the fate model (docs/method.md, "Inference").

:func:`fit` runs SVI with ``pyro.plate`` minibatches (log-likelihood scaled by N/B),
``ClippedAdam`` with a geometric learning-rate decay, and the mean-field guide. It
shows a progress bar with the ELBO and steps/s, checks convergence, saves checkpoints
that make an interrupted fit resume with the same numbers, and returns a
:class:`FitResult` (saved and loaded by :mod:`.fit_io`, so exports need no refit). With
``posterior_method: laplace`` or ``bootstrap`` the fit is the Laplace step
(:mod:`.laplace_fit`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import FitError
from fatebias_core.hashing import json_hash
from fatebias_core.io import atomic_path
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
from fatebias_core.model.fit_io import FIT_FORMAT, load_fit, make_fit_result, write_fit
from fatebias_core.model.guides import MeanFieldGuide, MeanFieldPosterior, initial_values
from fatebias_core.model.laplace import check_laplace_size
from fatebias_core.model.laplace_fit import laplace_fit, refine_posterior
from fatebias_core.types import EffectDraws, Experiment, FitResult

  # noqa: F401  (EffectDraws, FitResult: re-exported from their old place)

__all__ = [
    "BatchSampler", "EffectDraws", "FitResult", "fit", "fitted_probs", "laplace_fit", "load_fit", "predict_fates",
    "refine_posterior", "resolve_device", "steps_to_convergence", "write_fit",
]

log = logging.getLogger("fatebias.inference")

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
        check_laplace_size(experiment, len(config.contrast_fates), config.laplace_algebra)  # fail before a long fit, not after it
        if config.laplace_effect_scales == "configured":
            return laplace_fit(experiment, config)
    data = ModelData.from_experiment(experiment, config.ref_fate, config.contrast_fates, device=device)
    plan = _WeightPlan.of(config, weight, steps)
    model = FateModel(data, Priors.from_config(config), plan.initial, guide_effects=guide_effects)
    settings = _fit_settings(config, steps, seed, guide_effects, data.n_cells, init, weight)
    settings_hash = json_hash(settings)

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
    result = make_fit_result(experiment, config, posterior, trace, info, guide_effects)
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
        settings["init"] = json_hash({k: np.asarray(v).round(12).tolist() for k, v in sorted(init.items())})
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


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, mininterval=0.5)
