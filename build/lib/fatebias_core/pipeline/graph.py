"""The step table: everything about each step of the chain.

:data:`STEPS` is the one description of the chain: each step's upstream steps,
settings, files, function, code, the assets the platform shows it as (name,
description, kinds), the headline metrics the manifest keeps and whether a
configuration runs it. The local engine (:func:`fatebias_core.pipeline.chain.run_chain`),
the run manifest and the Dagster assets are all built from it.

A step's *version* is the hash of its code version, the settings it reads, the versions
of the steps it reads from and (for loading) the content hash of the input files. The
code version is itself a hash: of the step function's source and of the source of every
fatebias_core module it runs (:attr:`Step.modules` and, transitively, the
fatebias_core modules they import). Editing a module therefore makes every step that
runs it, and every step downstream, stale; no number is bumped by hand.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fatebias_core
from fatebias_core.config import GROUPS, FatebiasConfig
from fatebias_core.hashing import file_hash, json_hash, short_hash
from fatebias_core.io import layout as names
from fatebias_core.io import write_json
from fatebias_core.model.inference import load_fit
from fatebias_core.pipeline import steps
from fatebias_core.pipeline.check import load_experiment_checked

PACKAGE = "fatebias_core"
PACKAGE_ROOT = Path(fatebias_core.__file__).parent

#: Modules whose edits do not change what a step computes: the schema (setting values are
#: hashed on their own), error messages, the command line and the orchestration itself.
#: A step's own function in ``pipeline/steps.py`` is hashed by its source instead.
PLUMBING = frozenset(
    {
        "fatebias_core.config",
        "fatebias_core.errors",
        "fatebias_core.cli",
        "fatebias_core.pipeline",
        "fatebias_core.pipeline.graph",
        "fatebias_core.pipeline.steps",
        "fatebias_core.pipeline.chain",
        # Validation before work: it stops bad input, it computes nothing a step writes.
        "fatebias_core.pipeline.check",
    }
)

#: Modules that present results (figures, file names) without computing them: they are
#: left out of every step's code version but the report's, so that a plot colour or a new
#: output name never makes a fit stale.
PRESENTATION = frozenset({"fatebias_core.report.plots", "fatebias_core.io.layout"})

#: Settings that never change results.
COSMETIC = frozenset({"progress", "out_dir", "device", "checkpoint_every"})

MANIFEST_FILE = names.MANIFEST


@dataclass(frozen=True)
class Asset:
    """How the platform shows one of a step's results: a software-defined asset.

    Attributes
    ----------
    name
        Asset key (``fitted_posterior``, ...).
    description
        What it holds and which files it writes (the UI's description).
    kinds
        Tags of the libraries and formats behind it (the UI's kind badges).
    """

    name: str
    description: str
    kinds: frozenset[str]


def _always(config: FatebiasConfig) -> bool:
    return True


def _no_metrics(value: Any) -> dict:
    return {}


@dataclass(frozen=True)
class Step:
    """One step of the chain.

    Attributes
    ----------
    name
        The step's name (``fit``, ``rank``, ...).
    upstream
        Steps whose results it reads (files or values), in the order of its version hash.
    settings
        The configuration fields it reads.
    outputs
        ``(config, out_dir) -> files`` it writes into the run folder.
    run
        The fatebias_core function, called as ``run(*values of reads, config, out_dir)``.
    modules
        The fatebias_core modules ``run`` computes with (their imports are followed).
    reads
        Upstream steps whose in-memory value ``run`` takes (the rest it reads from files).
    reload
        ``(config, out_dir) -> value`` rebuilt from the files, for a step whose value a
        later step takes (None: no value).
    engine
        Whether ``run`` takes the chain's engine (``run_chain``) to rerun the chain.
    assets
        The platform assets its value is shown as (loading makes two).
    reads_settings
        A few words on the settings it reads (the platform's settings source).
    enabled
        ``config -> bool``: whether a run with ``config`` runs the step (the diagnostics
        only with ``run_diagnostics``).
    metrics
        ``value -> dict``: the headline numbers of its result that the manifest keeps.
    """

    name: str
    upstream: tuple[str, ...]
    settings: tuple[str, ...]
    outputs: Callable[[FatebiasConfig, Path], list[Path]]
    run: Callable[..., Any]
    modules: tuple[str, ...]
    reads: tuple[str, ...] = ()
    reload: Callable[[FatebiasConfig, Path], Any] | None = None
    engine: bool = False
    assets: tuple[Asset, ...] = ()
    reads_settings: str = ""
    enabled: Callable[[FatebiasConfig], bool] = _always
    metrics: Callable[[Any], dict] = _no_metrics

    @property
    def asset_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.assets)

    def call(self, config: FatebiasConfig, out_dir: Path, values: Mapping[str, Any], engine: Callable[..., Any] | None = None) -> Any:
        """Run the step with the values of the steps it reads (``values[step]``).

        ``engine`` is the function that runs the whole chain; a step with ``engine`` set
        (the diagnostics, whose permutation control reruns the chain) receives it as
        ``run_chain``.
        """
        extra = {"run_chain": engine} if self.engine else {}
        return self.run(*(values[r] for r in self.reads), config, out_dir, **extra)


# --------------------------------------------------------------------------- settings
def _group(name: str) -> list[str]:
    return [
        f for f, info in FatebiasConfig.model_fields.items()
        if (info.json_schema_extra or {}).get("group") == name and f not in COSMETIC
    ]


def _settings_table() -> dict[str, tuple[str, ...]]:
    g = {name: _group(name) for name in GROUPS}
    table = {
        "load": g["inputs"],
        "fit": g["model"] + [f for f in g["inference"] if f != "num_posterior_draws"],
        # The exports widen intervals at the calls' tail and run the NTC check before ranking.
        "export": ["num_posterior_draws", "seed", *g["exports"], "mash_lfsr_thresh_anyday", "mash_anyday_correction",
                   "ntc_check", "ntc_pseudogene_size"],
        # effect_size_eps: mash tables carry P(|effect| >= eps) under the posterior mixture
        "mash": g["mash"] + ["effect_size_eps"],
        "aggregate": g["calls"],
        "rank": g["calls"] + ["ash_lfsr_thresh", "ash_qvalue_thresh", "on_failed_calibration"],
        "diagnostics": g["model"] + g["inference"] + g["mash"] + g["calls"] + g["diagnostics"],
        "report": [],
    }
    return {k: tuple(v) for k, v in table.items()}


# --------------------------------------------------------------------------- files and values
def _outputs(step: str) -> Callable[[FatebiasConfig, Path], list[Path]]:
    def outputs(config: FatebiasConfig, out: Path) -> list[Path]:
        return steps.step_outputs(step, config, out)

    return outputs


def _reload_experiment(config: FatebiasConfig, out: Path) -> Any:
    return load_experiment_checked(config, verbose=False)


def _reload_fit(config: FatebiasConfig, out: Path) -> Any:
    return load_fit(out / names.FIT_DIR)


def _fit_metrics(fit: Any) -> dict:
    return {"final_loss_per_cell": fit.info["final_loss_per_cell"], "converged": fit.info["converged"]}


def _rank_metrics(ranked: Any) -> dict:
    return {"n_hits": int(ranked.hits["hit_anyday"].sum())}


def _report_metrics(report: Any) -> dict:
    return {"size_bytes": report.size_bytes, "n_figures": report.n_figures}


def _diagnostics_enabled(config: FatebiasConfig) -> bool:
    return bool(config.run_diagnostics)


def _build_steps() -> dict[str, Step]:
    s = _settings_table()
    table = [
        Step("load", (), s["load"], _outputs("load"), steps.load_step,
             ("fatebias_core.pipeline.check", "fatebias_core.data.load"), reload=_reload_experiment,
             assets=(
                 Asset("filtered_cells", "Cells kept after validation and the Kmax filter: fate probabilities, day, "
                       "replicate, burden and burden centred within day, with the loading summary. Writes "
                       "load_summary.json and dropped_cells.csv.", frozenset({"numpy", "anndata"})),
                 Asset("guide_embeddings", "The padded embedding-sum representation of each cell's guides: guide_ids, "
                       "mask, gene_of_guide, guide and gene names.", frozenset({"numpy"})),
             ),
             reads_settings="inputs: file keys, fates, Kmax, expected days and replicates"),
        Step("fit", ("load",), s["fit"], _outputs("fit"), steps.fit_step,
             ("fatebias_core.model.inference", "fatebias_core.report.plots"), reads=("load",), reload=_reload_fit,
             assets=(Asset("fitted_posterior", "The fitted posterior (the Laplace step with empirical Bayes, or SVI), "
                           "its trace and fit settings: the GPU-resourced step. Writes fit/variational_params.npz, "
                           "fit/elbo_trace.csv, fit/fit.json, elbo_trace.png.", frozenset({"pytorch", "pyro"})),),
             reads_settings="model priors, inference and SVI settings", metrics=_fit_metrics),
        Step("export", ("load", "fit"), s["export"], _outputs("export"), steps.export_step,
             ("fatebias_core.model.posterior", "fatebias_core.report.plots", "fatebias_core.checks.ntc"), reads=("fit", "load"),
             assets=(Asset("daywise_exports", "Posterior summaries for mash: gene_daywise_for_mash.csv, "
                           "guide_daywise_for_mash.csv, theta/delta npz summaries, QC tables, gene_summary_for_ash.csv, "
                           "and the NTC calibration check.", frozenset({"pandas", "csv"})),),
             reads_settings="posterior draws, seed, day weights, ash summary, QC tolerance and the NTC check"),
        Step("mash", ("export",), s["mash"], _outputs("mash"), steps.mash_step, ("fatebias_core.mash",),
             assets=(Asset("mash_outputs", "mash on the gene and guide tables in both modes: mash_gene_<mode>.csv, "
                           "mash_guide_<mode>.csv, ash_gene_summary.csv.", frozenset({"scipy", "csv"})),),
             reads_settings="mash settings (backend, standard errors, null correlation, both modes' priors)"),
        Step("aggregate", ("mash",), s["aggregate"], _outputs("aggregate"), steps.aggregate_step,
             ("fatebias_core.discovery.aggregate",),
             assets=(Asset("aggregated_genes", "Guide-to-gene inverse-variance aggregation of the guide-level mash "
                           "posteriors: gene_from_guide_mash_<mode>.csv.", frozenset({"pandas", "csv"})),),
             reads_settings="calling thresholds used to call days of the aggregated guides"),
        Step("rank", ("mash", "aggregate", "export"), s["rank"], _outputs("rank"), steps.rank_step,
             ("fatebias_core.discovery.calls",),
             assets=(Asset("ranked_hits", "Called and ranked hits: hits_ranked.csv (mash_default_mode) and "
                           "mash_mode_comparison.csv.", frozenset({"pandas", "csv"})),),
             reads_settings="calling thresholds, discovery source, default mode", metrics=_rank_metrics),
        # The sanity checks and the permutation verdict read the ranked results.
        Step("diagnostics", ("load", "rank"), s["diagnostics"], _outputs("diagnostics"), steps.diagnostics_step,
             ("fatebias_core.checks.diagnostics",), reads=("load",), engine=True,
             assets=(Asset("diagnostics", "Held-out cross-entropy, permutation negative control (clones permuted) "
                           "and sanity checks: diagnostics.json. With run_diagnostics false it is recorded as "
                           "disabled and nothing is computed.", frozenset({"pytorch", "json"})),),
             reads_settings="everything the diagnostics refit reads, plus the diagnostics settings",
             enabled=_diagnostics_enabled),
        Step("report", ("rank", "diagnostics"), s["report"], _outputs("report"), steps.report_step,
             ("fatebias_core.report.build", "fatebias_core.report.plots"),
             assets=(Asset("report", "The run as one self-contained HTML page with figures (report.html): inputs, "
                           "fit, hits, effects by day, guide concordance, QC, negative control, mode comparison, "
                           "recovery. Linked below.", frozenset({"html"})),),
             metrics=_report_metrics),
    ]
    return {step.name: step for step in table}


#: Every step, in topological order.
STEPS: dict[str, Step] = _build_steps()

#: The steps of ``fatebias run``, in order (loading is part of fitting there).
CHAIN: tuple[str, ...] = tuple(name for name in STEPS if name != "load")

#: Each step's upstream steps.
UPSTREAM: dict[str, tuple[str, ...]] = {name: step.upstream for name, step in STEPS.items()}


def enabled_steps(config: FatebiasConfig, names: tuple[str, ...] | list[str] = CHAIN) -> list[str]:
    """``names`` that a run with ``config`` runs, in order (:attr:`Step.enabled`)."""
    return [n for n in names if STEPS[n].enabled(config)]


#: The step that makes each asset.
ASSET_STEP: dict[str, str] = {a.name: step.name for step in STEPS.values() for a in step.assets}


def step_settings(step: str) -> list[str]:
    """Names of the configuration fields that ``step`` reads."""
    return list(STEPS[step].settings)


def downstream(step: str) -> list[str]:
    """``step`` and every step that reads from it, transitively, in chain order."""
    out = {step}
    for name, s in STEPS.items():
        if out.intersection(s.upstream):
            out.add(name)
    return [name for name in STEPS if name in out]


# --------------------------------------------------------------------------- code versions
def module_path(module: str) -> Path:
    """The source file of a fatebias_core module or package."""
    parts = module.split(".")[1:]
    base = PACKAGE_ROOT.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def read_source(module: str) -> str:
    """The source text of a fatebias_core module (the code-version tests replace this)."""
    return module_path(module).read_text()


def _is_module(name: str) -> bool:
    return module_path(name).is_file()


def module_imports(module: str) -> set[str]:
    """The fatebias_core modules ``module`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(read_source(module))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            if base is None or base.split(".")[0] != PACKAGE:
                continue
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}"))
    return {m for m in found if _is_module(m)}


def _absolute(module: str, node: ast.ImportFrom) -> str | None:
    if not node.level:
        return node.module
    package = module if module_path(module).name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def module_closure(modules: tuple[str, ...], excluded: frozenset[str] = PLUMBING) -> list[str]:
    """``modules`` and every fatebias_core module they import, transitively, minus ``excluded``."""
    seen: set[str] = set()
    stack = [m for m in modules if m not in excluded]
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        stack.extend(d for d in module_imports(m) if d not in excluded and d not in seen)
    return sorted(seen)


def modules_version(
    modules: tuple[str, ...], *functions: Callable[..., Any], excluded: frozenset[str] = PLUMBING
) -> str:
    """Hash of the source of ``functions`` and of ``modules`` with every module they import."""
    parts = [inspect.getsource(fn) for fn in functions]
    for m in module_closure(modules, excluded):
        parts += [f"\0{m}\0", read_source(m)]
    return short_hash(*parts)


def code_version(step: str) -> str:
    """Hash of ``step``'s function source and of the source of every module it computes with.

    Presentation modules (:data:`PRESENTATION`) count for the report step only.
    """
    excluded = PLUMBING if step == "report" else PLUMBING | PRESENTATION
    return modules_version(STEPS[step].modules, STEPS[step].run, excluded=excluded)


@functools.cache
def code_versions() -> dict[str, str]:
    """Every step's code version, computed once per process."""
    return {name: code_version(name) for name in STEPS}


# --------------------------------------------------------------------------- versions
def input_version(config: FatebiasConfig) -> str:
    """Content hash of the experiment's input files (AnnData, guide map and guide files)."""
    parts = [file_hash(p) for p in config.input_paths()]
    return short_hash("|".join(parts))


def step_versions(config: FatebiasConfig, inputs: str, codes: Mapping[str, str] | None = None) -> dict[str, str]:
    """The version of every step given the settings, the input files' version and the code versions."""
    codes = code_versions() if codes is None else codes
    out: dict[str, str] = {}
    for name, step in STEPS.items():  # topological order
        payload = {
            "code": codes[name],
            "settings": config.hash(list(step.settings)),
            "upstream": [out[u] for u in step.upstream],
            "inputs": inputs if name == "load" else None,
        }
        out[name] = json_hash(payload)
    return out


# --------------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """What each step of a run folder was made from (``fatebias_manifest.json``).

    The one record of what is current, written and read by both engines: a step made
    by ``--engine local`` is current for ``--engine dagster`` and the other way round,
    and the report names the steps, versions and engine behind the folder.
    """

    path: Path
    steps: dict[str, dict]

    @classmethod
    def open(cls, out_dir: str | Path) -> Manifest:
        """The manifest of ``out_dir`` (empty when there is none or it is unreadable)."""
        path = Path(out_dir) / MANIFEST_FILE
        recs: dict[str, dict] = {}
        if path.exists():
            try:
                recs = json.loads(path.read_text()).get("steps", {})
            except (json.JSONDecodeError, AttributeError):
                recs = {}
        return cls(path, recs)

    def is_current(self, step: str, version: str) -> bool:
        """True when ``step`` was last made at ``version`` and all its outputs still exist."""
        rec = self.steps.get(step)
        return bool(rec and rec.get("version") == version and all(Path(p).exists() for p in rec.get("outputs", [])))

    def forget(self, names: list[str] | tuple[str, ...]) -> list[str]:
        """Drop the records of ``names`` (so they are remade on the next run); return those dropped."""
        dropped = [s for s in names if self.steps.pop(s, None) is not None]
        if dropped:
            write_json({"steps": self.steps}, self.path)
        return dropped

    def record(
        self, step: str, version: str, outputs: list[str | Path], metrics: dict | None = None, engine: str = "local"
    ) -> None:
        """Record that ``step`` was made at ``version`` with ``outputs`` (by ``engine``), and save."""
        self.steps[step] = {
            "version": version,
            "engine": engine,
            "outputs": [str(p) for p in outputs],
            "metrics": metrics or {},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json({"steps": self.steps}, self.path)
