"""Jobs: observe the sources; materialize the chain."""

from __future__ import annotations

import warnings

import dagster as dg

CHAIN_JOB = "fatebias_chain"
OBSERVE_JOB = "observe_sources"

with warnings.catch_warnings():  # include_sources is beta in this Dagster version
    warnings.simplefilter("ignore", dg.BetaWarning)
    #: The observable sources (experiment files, settings): asset selections leave them out by default.
    SOURCES = dg.AssetSelection.all(include_sources=True) - dg.AssetSelection.all()


def build_chain_job() -> dg.UnresolvedAssetJobDefinition:
    """``fatebias_chain``: materialize every asset of the chain.

    Tagged ``gpu``: ``dagster.yaml`` lets one such run proceed at a time.
    """
    return dg.define_asset_job(
        CHAIN_JOB,
        selection=dg.AssetSelection.all(),
        tags={"gpu": "1"},
        description="Materialize the whole chain (fatebias run selects only its stale assets).",
    )


def build_observe_job() -> dg.UnresolvedAssetJobDefinition:
    """``observe_sources``: record the current data version of the experiment's files and settings."""
    return dg.define_asset_job(
        OBSERVE_JOB,
        selection=SOURCES,
        description="Observe the experiment's files and each step's settings (their data versions).",
    )
