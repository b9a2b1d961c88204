"""fatebias_core: which gene knockdowns shift cell fate, on which day, and how sure are we.

The science of fatebias, with no platform in it. Each step of the chain is a function:

* :func:`load_config` / :class:`FatebiasConfig`: the one configuration schema
* :func:`load_experiment`: AnnData + guide map -> :class:`Experiment`
* :func:`fit`: the MOI-aware Bayesian fate model by SVI -> :class:`FitResult`
* :func:`export_posterior`: gene/day and guide/day posterior tables for mash
* :mod:`fatebias_core.mash`: multivariate adaptive shrinkage (native, or R mashr)
* :func:`aggregate_guides`, :func:`rank_hits`: guide-to-gene aggregation and hit calling
* :func:`run_diagnostics`, :func:`ntc_calibration`: held-out fit, permutation control,
  sanity checks, and the NTC pseudo-gene calibration check on the user's own data
* :func:`simulate`: data with known truth; :func:`run_chain`: every step in one call
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public names, imported lazily so that ``import fatebias_core`` stays light.
_EXPORTS = {
    "FatebiasConfig": "config",
    "load_config": "config",
    "make_config": "config",
    "FatebiasError": "errors",
    "Experiment": "types",
    "FilteredCells": "types",
    "GuideEmbedding": "types",
    "LoadSummary": "types",
    "DiagnosticsResult": "types",
    "load_experiment": "data.load",
    "fit": "model.inference",
    "FitResult": "types",
    "load_fit": "model.inference",
    "export_posterior": "model.posterior",
    "simulate": "data.simulate",
    "aggregate_guides": "discovery.aggregate",
    "rank_hits": "discovery.calls",
    "compare_modes": "discovery.calls",
    "score_calls": "discovery.evaluate",
    "run_chain": "pipeline.chain",
    "run_demo": "pipeline.chain",
    "mash_table": "mash",
    "ash_table": "mash",
    "run_diagnostics": "checks.diagnostics",
    "ntc_calibration": "checks.ntc",
    "run_sweep": "studies.sweep",
    "run_calibration": "studies.calibration",
    "build_report": "report.build",
    "refine_posterior": "model.inference",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'fatebias_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (:data:`__all__`), not this module's helpers nor its loaded submodules."""
    return sorted(__all__)
