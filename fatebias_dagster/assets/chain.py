"""The chain's software-defined assets, one factory over fatebias_core's step table.

:func:`build_chain` makes one copy of the chain for a :class:`ChainLayout`: the main
chain (keys ``filtered_cells`` ... ``report``) and the simulation study's partitioned
copy (keys ``study/...``) are the same code. Each step of
:data:`fatebias_core.pipeline.graph.STEPS` becomes one (multi-)asset:

* its assets, their descriptions and kinds are the step's :attr:`Step.assets`;
* the upstream steps whose value it takes (:attr:`Step.reads`) are ``ins``, loaded by
  the run-folder IO manager from the files they wrote; the others are ``deps``;
* its code version is the step's code version (a hash of the sources it runs) and its
  data version the step's version, so Dagster's own staleness follows the same rules as
  ``fatebias run --engine local``;
* it records itself in the run folder's manifest (:class:`~fatebias_core.pipeline.graph.Manifest`),
  the record of what is current that both engines read.
"""

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

from fatebias_core.checks.verdicts import BLOCKING, CHECKS, step_verdicts
from fatebias_core.io import write_text
from fatebias_core.io.layout import CONFIG_USED
from fatebias_core.pipeline.graph import STEPS, Step, code_versions

from .. import metadata as meta
from ..lineage import record_lineage
from ..resources import ChainSource, ClusterResource, ComputeResource, LineageStore, MashBackend
from ..runner import ChainLayout, StepRun, asset_values, manifest_lock, step_value
from ..versions import STEP_ASSETS
from .describe import DESCRIBE

#: Each chain asset's description and kinds, from the step table.
DESCRIPTIONS = {a.name: a.description for step in STEPS.values() for a in step.assets}
KINDS = {a.name: set(a.kinds) for step in STEPS.values() for a in step.assets}

#: The chain's assets share one group, so that its page in the UI shows the whole graph.
CHAIN_GROUP = "chain"

#: The op of the loading step (it makes two assets).
LOAD_OP = "load_experiment"


@dataclass(frozen=True)
class ChainOptions:
    """How one copy of the chain is deployed.

    Attributes
    ----------
    partitions_def
        Partitions of every asset (the simulation study's scenario x seed).
    automation_condition
        Declarative automation of every asset (the main chain reruns on new data).
    group_name
        Group of every asset.
    fit_op_tags
        Tags of the fit's op (the GPU request of a Kubernetes or Dask deployment).
    fit_pool
        Concurrency pool of the fit (``dagster.yaml`` limits pool ``gpu``).
    include_diagnostics
        Whether the chain has the diagnostics asset.
    """

    partitions_def: dg.PartitionsDefinition | None = None
    automation_condition: dg.AutomationCondition | None = None
    group_name: str = CHAIN_GROUP
    fit_op_tags: Mapping[str, Any] | None = None
    fit_pool: str | None = "gpu"
    include_diagnostics: bool = True


def build_chain(layout: ChainLayout, options: ChainOptions | None = None) -> list[dg.AssetsDefinition]:
    """The chain's assets for ``layout``: one per step of the step table."""
    options = options or ChainOptions()
    names = [s for s in STEPS if options.include_diagnostics or s != "diagnostics"]
    return [step_asset(STEPS[s], layout, options) for s in names]


def _edges(step: Step, layout: ChainLayout, options: ChainOptions) -> tuple[dict[str, dg.AssetIn], list[dg.AssetKey]]:
    """``ins`` (values the step takes) and ``deps`` (everything else it reads) of ``step``'s asset."""
    ins = {name: dg.AssetIn(layout.key(name)) for r in step.reads for name in STEP_ASSETS[r]}
    present = [u for u in step.upstream if options.include_diagnostics or u != "diagnostics"]
    deps = [k for u in present if u not in step.reads for k in layout.keys_of(u)]
    root = [layout.root] if step.name == "load" else []
    return ins, [*root, *deps, *layout.settings_deps(step.name)]


def step_asset(step: Step, layout: ChainLayout, options: ChainOptions) -> dg.AssetsDefinition:
    """The (multi-)asset of one step of the chain."""
    names = STEP_ASSETS[step.name]
    ins, deps = _edges(step, layout, options)
    outs = {
        name: dg.AssetOut(
            key=layout.key(name),
            description=DESCRIPTIONS[name],
            code_version=code_versions()[step.name],
            group_name=options.group_name,
            kinds=KINDS[name],
            automation_condition=options.automation_condition,
        )
        for name in names
    }
    fit = step.name == "fit"
    check_specs = [
        dg.AssetCheckSpec(name, asset=layout.key(names[0]), description=text, blocking=name in BLOCKING)
        for name, text in CHECKS.get(step.name, {}).items()
    ]

    @dg.multi_asset(
        name=layout.op_name(LOAD_OP if step.name == "load" else names[0]),
        outs=outs,
        ins=ins,
        deps=deps,
        partitions_def=options.partitions_def,
        op_tags=dict(options.fit_op_tags or {}) if fit else None,
        pool=options.fit_pool if fit else None,
        hooks={record_lineage},
        check_specs=check_specs or None,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        experiment: ChainSource,
        compute: ComputeResource,
        mash: MashBackend,
        lineage: LineageStore,
        cluster: ClusterResource,
        **inputs: Any,
    ) -> Iterator[dg.Output]:
        run = StepRun.start(context, step, experiment, compute, mash, lineage, cluster)
        yield from materialize(run, layout, inputs)

    return _asset


def materialize(run: StepRun, layout: ChainLayout, inputs: Mapping[str, Any]) -> Iterator[dg.Output]:
    """Run the step and yield each of its assets with its data version and metadata."""
    step, names = run.step, STEP_ASSETS[run.step.name]
    if not step.enabled(run.config):
        # Recorded (so that the report's automation is not held up) but kept out of the
        # lineage database: nothing was computed.
        run.context.log.info(f"{step.name} is switched off by the configuration: nothing computed")
        md = {"enabled": dg.MetadataValue.bool(False)}
        yield from (versioned_output(None, n, run.version, md) for n in names)
        yield from check_results(run, layout)
        return
    value = run.compute({r: step_value(r, inputs) for r in step.reads})
    outputs = step.outputs(run.config, run.out_dir)
    if step.name == "load":
        outputs.append(write_text(run.config.to_yaml(), run.out_dir / CONFIG_USED))
    described = DESCRIBE[step.name](run, value)
    run.save_results(layout.key(names[0]), described.tables)
    common = run.metadata(outputs, described.metrics, row_counts=meta.row_counts(outputs), **described.lineage)
    # The record both engines read, once the step and its description succeeded (under the
    # folder's lock: assets of one folder may finish at once).
    with manifest_lock(run.out_dir) as manifest:
        manifest.record(step.name, run.version, outputs, step.metrics(value), engine="dagster")
    for name, asset_value in asset_values(step.name, value).items():
        md = {**common, **described.metadata.get("", {}), **described.metadata.get(name, {})}
        yield versioned_output(asset_value, name, run.version, md)
    yield from check_results(run, layout)


def check_results(run: StepRun, layout: ChainLayout) -> Iterator[dg.AssetCheckResult]:
    """The step's checks (:func:`fatebias_core.checks.verdicts.step_verdicts`) as Dagster asset check results.

    A failed blocking verdict is an ERROR (Dagster skips the steps after it in the run);
    a failed other one, or a check that did not run, a WARN.
    """
    key = layout.key(STEP_ASSETS[run.step.name][0])
    for v in step_verdicts(run.step.name, run.out_dir, run.config):
        severity = dg.AssetCheckSeverity.ERROR if v.passed is False and v.blocking else dg.AssetCheckSeverity.WARN
        md = {k: val for k, val in v.metadata.items() if isinstance(val, (int, float, str, bool))}
        yield dg.AssetCheckResult(
            asset_key=key, check_name=v.name, passed=bool(v.passed), severity=severity, description=v.description,
            metadata={**md, "ran": v.passed is not None},
        )


def versioned_output(value: Any, name: str, version: str, metadata: Mapping[str, Any]) -> dg.Output:
    """An output carrying its data version (a beta parameter in this Dagster version; its warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.Output(value, name, data_version=dg.DataVersion(version), metadata=dict(metadata))


__all__ = ["CHAIN_GROUP", "DESCRIPTIONS", "ChainOptions", "build_chain", "step_asset", "versioned_output"]
