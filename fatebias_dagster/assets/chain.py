"""The chain's software-defined assets (PLATFORM.md), each a thin call into fatebias_core.

:func:`build_chain` makes one copy of the chain for a :class:`ChainLayout`: the main
chain (keys ``filtered_cells`` ... ``diagnostics``) and the simulation study's
partitioned copy (keys ``study/...``) are the same code. Files keep the seed's names in
the run folder; the values handed from asset to asset are fatebias_core's own typed
objects (:class:`FilteredCells` with its :class:`LoadSummary`, :class:`GuideEmbedding`,
:class:`FitResult`); the later steps read and write files in the run folder.
"""


import json
import warnings
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from fatebias_core.io import write_text
from fatebias_core.model.posterior import export_paths
from fatebias_core.pipeline.steps import (
    DROPPED_CELLS_FILE,
    FIT_DIR,
    aggregate_paths,
    aggregate_step,
    diagnostics_step,
    export_step,
    fit_step,
    load_step,
    mash_outputs,
    mash_step,
    rank_outputs,
    rank_step,
    report_step,
    step_outputs,
)
from fatebias_core.report import REPORT_FILE
from fatebias_core.types import Experiment, FilteredCells, GuideEmbedding, LoadSummary

from .. import metadata as meta
from .. import results
from ..runner import CHAIN_RESOURCES, ChainLayout, StepRun
from ..versions import CODE_VERSIONS, input_files, input_version

DESCRIPTIONS = {
    "filtered_cells": "Cells kept after validation and the Kmax filter: fate probabilities, day, replicate, "
    "burden and burden centred within day, with the loading summary. Writes load_summary.json and dropped_cells.csv.",
    "guide_embeddings": "The padded embedding-sum representation of each cell's guides: guide_ids, mask, "
    "gene_of_guide, guide and gene names.",
    "fitted_posterior": "The fitted variational posterior, ELBO trace and fit settings: the "
    "GPU-resourced step. Writes fit/variational_params.npz, fit/elbo_trace.csv, fit/fit.json, elbo_trace.png.",
    "daywise_exports": "Posterior summaries for mash: gene_daywise_for_mash.csv, "
    "guide_daywise_for_mash.csv, theta/delta npz summaries, QC tables, gene_summary_for_ash.csv.",
    "mash_outputs": "mash on the gene and guide tables in both modes: mash_gene_<mode>.csv, "
    "mash_guide_<mode>.csv, ash_gene_summary.csv.",
    "aggregated_genes": "Guide-to-gene inverse-variance aggregation of the guide-level mash posteriors: "
    "gene_from_guide_mash_<mode>.csv.",
    "ranked_hits": "Called and ranked hits: hits_ranked.csv (mash_default_mode) and "
    "mash_mode_comparison.csv.",
    "diagnostics": "NTC pseudo-gene calibration check, held-out cross-entropy, permutation negative control "
    "(clones permuted) and sanity checks: diagnostics.json, ntc_calibration.csv. With "
    "run_diagnostics false it is recorded as disabled and nothing is computed.",
    "report": "The run as one self-contained HTML page with figures (report.html): inputs, fit, hits, "
    "effects by day, guide concordance, QC, negative control, mode comparison, recovery. Linked below.",
}

#: The chain's assets share one group, so that its page in the UI shows the whole graph.
CHAIN_GROUP = "chain"

KINDS = {
    "filtered_cells": {"numpy", "anndata"},
    "guide_embeddings": {"numpy"},
    "fitted_posterior": {"pytorch", "pyro"},
    "daywise_exports": {"pandas", "csv"},
    "mash_outputs": {"scipy", "csv"},
    "aggregated_genes": {"pandas", "csv"},
    "ranked_hits": {"pandas", "csv"},
    "diagnostics": {"pytorch", "json"},
    "report": {"html"},
}


def versioned_output(value: Any, version: str, metadata: Mapping[str, Any], output_name: str = "result") -> dg.Output:
    """An output carrying its data version (a beta parameter in this Dagster version; warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.Output(value, output_name, data_version=dg.DataVersion(version), metadata=dict(metadata))


def build_chain(
    layout: ChainLayout,
    *,
    partitions_def: dg.PartitionsDefinition | None = None,
    automation_condition: dg.AutomationCondition | None = None,
    group_name: str | None = None,
    fit_op_tags: Mapping[str, Any] | None = None,
    fit_pool: str | None = "gpu",
    include_diagnostics: bool = True,
) -> list[dg.AssetsDefinition]:
    """The chain's assets for ``layout``.

    Parameters
    ----------
    layout
        Key prefix, root asset and whether the steps depend on settings sources.
    partitions_def
        Partitions of every asset (the simulation study's scenario x seed).
    automation_condition
        Declarative automation of every asset (the main chain reruns on new data).
    group_name
        Group of every asset (default ``chain``).
    fit_op_tags
        Tags of the fit's op (the GPU request of a Kubernetes or Dask deployment).
    fit_pool
        Concurrency pool of the fit (``dagster.yaml`` limits pool ``gpu``).
    include_diagnostics
        Whether the chain has the diagnostics asset.
    """

    def spec(name: str, step: str) -> dict[str, Any]:
        return {
            "description": DESCRIPTIONS[name],
            "code_version": CODE_VERSIONS[step],
            "group_name": group_name or CHAIN_GROUP,
            "kinds": KINDS[name],
            "automation_condition": automation_condition,
        }

    common = {"partitions_def": partitions_def, "required_resource_keys": set(CHAIN_RESOURCES)}
    key = layout.key

    # ------------------------------------------------------------------ load
    @dg.multi_asset(
        name=layout.op_name("load_experiment"),
        outs={
            "filtered_cells": dg.AssetOut(key=key("filtered_cells"), **spec("filtered_cells", "load")),
            "guide_embeddings": dg.AssetOut(key=key("guide_embeddings"), **spec("guide_embeddings", "load")),
        },
        deps=[layout.root, *layout.settings_deps("load")],
        **common,
    )
    def load_experiment(context: AssetExecutionContext):
        run = StepRun.start(context, "load", layout)
        cfg = run.config
        done = run.execute(
            lambda: load_step(cfg, run.out_dir),
            outputs=lambda: [run.out_dir / "load_summary.json", run.out_dir / DROPPED_CELLS_FILE, run.out_dir / "config_used.yaml"],
            metrics=lambda e: {"input_version": input_version(cfg), "input_files": input_files(cfg), "n_cells": e.n_cells},
            always=True,
        )
        experiment: Experiment = done.value
        write_text(cfg.to_yaml(), run.out_dir / "config_used.yaml")
        common_md = run.record(done.reused, [run.out_dir / "load_summary.json"], metrics={"n_cells": experiment.n_cells})
        yield versioned_output(
            (experiment.cells, experiment.summary), run.version,
            {**common_md, **meta.load_metadata(experiment.summary, cfg)}, "filtered_cells",
        )
        yield versioned_output(
            experiment.guides, run.version,
            {**common_md, **meta.guides_metadata(experiment.guides, experiment.summary)}, "guide_embeddings",
        )

    # ------------------------------------------------------------------ fit
    @dg.asset(
        key=key("fitted_posterior"),
        ins={"filtered_cells": dg.AssetIn(key("filtered_cells")), "guide_embeddings": dg.AssetIn(key("guide_embeddings"))},
        deps=layout.settings_deps("fit"),
        op_tags=dict(fit_op_tags or {}),
        pool=fit_pool,
        **spec("fitted_posterior", "fit"),
        **common,
    )
    def fitted_posterior(
        context: AssetExecutionContext,
        filtered_cells: tuple[FilteredCells, LoadSummary],
        guide_embeddings: GuideEmbedding,
    ):
        from fatebias_core.model.inference import load_fit

        run = StepRun.start(context, "fit", layout)
        fit_dir = run.out_dir / FIT_DIR
        experiment = Experiment(filtered_cells[0], guide_embeddings, filtered_cells[1])
        done = run.execute(
            lambda: fit_step(experiment, run.config, run.out_dir),
            outputs=lambda: step_outputs("fit", run.config, run.out_dir),
            reuse=lambda: load_fit(fit_dir),
            metrics=lambda r: {"final_loss_per_cell": r.info["final_loss_per_cell"], "converged": r.info["converged"]},
        )
        fit = done.value
        info = fit.info
        headline = {k: info.get(k) for k in ("steps", "converged", "final_loss_per_cell", "ms_per_step", "device", "runtime_s")}
        outputs = [fit_dir / n for n in ("fit.json", "variational_params.npz", "elbo_trace.csv")]
        common_md = run.record(done.reused, outputs, metrics=headline, row_counts=meta.row_counts(outputs))
        return versioned_output(fit, run.version, {**common_md, **meta.fit_metadata(info, run.out_dir)})

    # ------------------------------------------------------------------ exports
    @dg.asset(
        key=key("daywise_exports"),
        ins={"fitted_posterior": dg.AssetIn(key("fitted_posterior"))},
        deps=layout.settings_deps("export"),
        **spec("daywise_exports", "export"),
        **common,
    )
    def daywise_exports(context: AssetExecutionContext, fitted_posterior) -> dg.MaterializeResult:
        run = StepRun.start(context, "export", layout)
        cfg = run.config
        done = run.execute(
            lambda: export_step(fitted_posterior, cfg, run.out_dir), outputs=lambda: step_outputs("export", cfg, run.out_dir)
        )
        files = export_paths(cfg, run.out_dir, cfg.contrast_fates)
        md = meta.export_metadata(files, cfg.contrast_fate)
        outputs = step_outputs("export", cfg, run.out_dir)
        common_md = run.record(done.reused, outputs, metrics={"qc": md["QC offsets"].value}, row_counts=meta.row_counts(outputs))
        return dg.MaterializeResult(data_version=dg.DataVersion(run.version), metadata={**common_md, **md})

    # ------------------------------------------------------------------ mash
    @dg.asset(
        key=key("mash_outputs"),
        deps=[key("daywise_exports"), *layout.settings_deps("mash")],
        **spec("mash_outputs", "mash"),
        **common,
    )
    def mash_outputs_asset(context: AssetExecutionContext) -> dg.MaterializeResult:
        run = StepRun.start(context, "mash", layout)
        cfg = run.config
        planned = mash_outputs(cfg, run.out_dir)
        done = run.execute(lambda: mash_step(cfg, run.out_dir), outputs=lambda: planned.all_paths)
        messages = done.value.messages if done.value is not None else []
        tables = {} if done.reused else results.mash_tables(planned)
        sig = {f"{level}_{mode}_{fate}": meta.significant_rows(p, cfg.mash_lfsr_thresh_day) for (level, mode, fate), p in planned.files.items()}
        common_md = run.record(
            done.reused, planned.all_paths, metrics={"significant_rows": sig},
            row_counts=meta.row_counts(planned.all_paths), tables=tables,
        )
        md = meta.mash_metadata(planned.files, cfg.mash_lfsr_thresh_day, messages)
        return dg.MaterializeResult(data_version=dg.DataVersion(run.version), metadata={**common_md, **md})

    # ------------------------------------------------------------------ aggregate
    @dg.asset(
        key=key("aggregated_genes"),
        deps=[key("mash_outputs"), *layout.settings_deps("aggregate")],
        **spec("aggregated_genes", "aggregate"),
        **common,
    )
    def aggregated_genes(context: AssetExecutionContext) -> dg.MaterializeResult:
        run = StepRun.start(context, "aggregate", layout)
        cfg = run.config
        paths = aggregate_paths(cfg, run.out_dir)
        done = run.execute(lambda: aggregate_step(cfg, run.out_dir), outputs=lambda: list(paths.values()))
        md = meta.aggregate_metadata(paths)
        tables = {} if done.reused else results.aggregate_tables(paths)
        metrics = {k: v.value for k, v in md.items()}
        common_md = run.record(done.reused, list(paths.values()), metrics=metrics, row_counts=meta.row_counts(paths.values()), tables=tables)
        return dg.MaterializeResult(data_version=dg.DataVersion(run.version), metadata={**common_md, **md})

    # ------------------------------------------------------------------ rank
    @dg.asset(
        key=key("ranked_hits"),
        deps=[key("mash_outputs"), key("aggregated_genes"), key("daywise_exports"), *layout.settings_deps("rank")],
        **spec("ranked_hits", "rank"),
        **common,
    )
    def ranked_hits(context: AssetExecutionContext) -> dg.MaterializeResult:
        run = StepRun.start(context, "rank", layout)
        cfg = run.config
        outputs = rank_outputs(cfg, run.out_dir)
        done = run.execute(
            lambda: rank_step(cfg, run.out_dir),
            outputs=lambda: outputs,
            metrics=lambda r: {"n_hits": int(r.hits["hit_anyday"].sum())},
        )
        tables = results.rank_tables(*outputs)
        hits, comparison = tables["hits"], tables["mash_mode_comparison"]
        metrics = {"n_hits": int(hits["hit_anyday"].astype(bool).sum()), "n_genes": len(hits)}
        common_md = run.record(
            done.reused, outputs, metrics=metrics, row_counts=meta.row_counts(outputs), tables={} if done.reused else tables
        )
        md = meta.rank_metadata(hits, comparison, cfg.mash_default_mode)
        return dg.MaterializeResult(data_version=dg.DataVersion(run.version), metadata={**common_md, **md})

    assets = [load_experiment, fitted_posterior, daywise_exports, mash_outputs_asset, aggregated_genes, ranked_hits]

    # ------------------------------------------------------------------ diagnostics
    if include_diagnostics:

        @dg.asset(
            key=key("diagnostics"),
            ins={"filtered_cells": dg.AssetIn(key("filtered_cells")), "guide_embeddings": dg.AssetIn(key("guide_embeddings"))},
            # The sanity checks and the permutation verdict read the ranked results.
            deps=[key("ranked_hits"), *layout.settings_deps("diagnostics")],
            output_required=False,
            **spec("diagnostics", "diagnostics"),
            **common,
        )
        def diagnostics(context: AssetExecutionContext, filtered_cells, guide_embeddings):
            run = StepRun.start(context, "diagnostics", layout)
            cfg = run.config
            if not cfg.run_diagnostics:
                # Recorded (not skipped) so that the report downstream still runs.
                context.log.info("run_diagnostics is false: diagnostics disabled, nothing computed")
                yield dg.MaterializeResult(
                    data_version=dg.DataVersion(run.version),
                    metadata={"run_diagnostics": dg.MetadataValue.bool(False)},
                )
                return
            experiment = Experiment(filtered_cells[0], guide_embeddings, filtered_cells[1])
            path = run.out_dir / "diagnostics.json"
            done = run.execute(lambda: diagnostics_step(experiment, cfg, run.out_dir), outputs=lambda: [path])
            summary = json.loads(path.read_text())
            common_md = run.record(done.reused, [path], metrics=summary if isinstance(summary, dict) else {})
            ntc = (summary.get("ntc_calibration") or {}).get("headline") if isinstance(summary, dict) else None
            ntc_md = {} if not ntc else {
                "ntc_z_sd": dg.MetadataValue.float(round(float(ntc["sd"]), 3)),
                "ntc_beyond_1.96": dg.MetadataValue.float(round(float(ntc["beyond_1.96"]), 3)),
            }
            yield dg.MaterializeResult(
                data_version=dg.DataVersion(run.version),
                metadata={**common_md, **ntc_md, "summary": dg.MetadataValue.json(meta.round_tree(summary, 4))},
            )

        assets.append(diagnostics)

    # ------------------------------------------------------------------ report
    @dg.asset(
        key=key("report"),
        deps=[key("ranked_hits"), *([key("diagnostics")] if include_diagnostics else [])],
        **spec("report", "report"),
        **common,
    )
    def report(context: AssetExecutionContext) -> dg.MaterializeResult:
        run = StepRun.start(context, "report", layout)
        path = run.out_dir / REPORT_FILE
        done = run.execute(
            lambda: report_step(run.config, run.out_dir),
            outputs=lambda: [path],
            metrics=lambda r: {"size_bytes": r.size_bytes, "n_figures": r.n_figures},
        )
        common_md = run.record(done.reused, [path], metrics={"size_bytes": path.stat().st_size})
        return dg.MaterializeResult(
            data_version=dg.DataVersion(run.version),
            metadata={
                **common_md,
                "report": dg.MetadataValue.url(path.resolve().as_uri()),
                "report path": dg.MetadataValue.path(str(path.resolve())),
                "size (KiB)": dg.MetadataValue.int(path.stat().st_size // 1024),
            },
        )

    assets.append(report)
    return assets


__all__ = ["CHAIN_GROUP", "DESCRIPTIONS", "build_chain", "versioned_output"]
