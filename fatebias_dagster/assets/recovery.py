"""The simulation study: the chain on many simulations, scored against the truth.

Every asset but ``recovery_summary`` is partitioned by ``<variant>|<seed>``
(:class:`~fatebias_dagster.resources.study.Study`); a backfill over partitions runs many
simulations at once. Per partition: ``study/simulated_experiment`` simulates with known
truth, the chain (the same assets as the main chain, keys ``study/...``) analyses it,
and ``study/recovery_scores`` scores the ranked hits against the truth
(:func:`fatebias_core.discovery.evaluate.evaluate_files`). ``recovery_summary`` gathers every
scored partition into one table and figure, in the format of ``fatebias sweep``
(``sweep_results.csv``/``.png``, :func:`fatebias_core.studies.sweep.plot_sweep`).
"""

import math
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from fatebias_core.discovery.evaluate import evaluate_files
from fatebias_core.hashing import file_hash, json_hash
from fatebias_core.io import layout as run_files
from fatebias_core.io import read_csv, write_csv
from fatebias_core.pipeline.graph import modules_version
from fatebias_core.studies.sweep import plot_sweep, score_row

from .. import metadata as meta
from ..executors import fit_op_tags, fit_pool
from ..lineage import record_lineage, utcnow
from ..resources import ClusterResource, ComputeResource, LineageStore, MashBackend, StudyConfig
from ..resources.study import Study
from ..runner import ChainLayout, lineage_metadata, manifest_lock, save_results
from ..versions import input_files, step_versions
from .chain import ChainOptions, build_chain
from .sources import build_simulated_experiment

GROUP = "recovery_study"
LAYOUT = ChainLayout(prefix=("study",), root=dg.AssetKey(["study", "simulated_experiment"]), settings_sources=False)
SCORES_KEY = dg.AssetKey(["study", "recovery_scores"])
SUMMARY_KEY = dg.AssetKey("recovery_summary")
EVALUATE_CODE_VERSION = modules_version(("fatebias_core.discovery.evaluate",))
SUMMARY_CODE_VERSION = modules_version(("fatebias_core.studies.sweep",))
SCORE_FILES = (run_files.DAYWISE_CONFUSION, run_files.CALL_SUMMARY)


def build_recovery_assets(study: Study) -> list[dg.AssetsDefinition]:
    """The study's assets for ``study``'s partitions."""
    partitions = study.partitions_def()
    sim = build_simulated_experiment(LAYOUT.root, partitions_def=partitions, group_name=GROUP)
    options = ChainOptions(
        partitions_def=partitions, group_name=GROUP, fit_op_tags=fit_op_tags(), fit_pool=fit_pool(), include_diagnostics=False
    )
    chain = build_chain(LAYOUT, options)
    return [sim, *chain, recovery_scores_asset(partitions), recovery_summary_asset(partitions)]


def recovery_scores_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """``study/recovery_scores``: one partition's ranked hits scored against its truth."""

    @dg.asset(
        key=SCORES_KEY,
        deps=[LAYOUT.key("ranked_hits"), LAYOUT.root],
        partitions_def=partitions,
        group_name=GROUP,
        code_version=EVALUATE_CODE_VERSION,
        kinds={"pandas", "csv"},
        description="Recovery of the simulated truth by one partition's ranked hits: TP, FP, FN, TN, "
        "precision, recall, F1 and FPR per day, pooled and any-day: daywise_confusion.csv, pred_call_summary.json.",
        hooks={record_lineage},
    )
    def recovery_scores(
        context: AssetExecutionContext,
        experiment: StudyConfig,
        compute: ComputeResource,
        mash: MashBackend,
        lineage: LineageStore,
        cluster: ClusterResource,
    ) -> dg.MaterializeResult:
        started = utcnow()
        key = context.partition_key
        folder = experiment.run_folder(key, **compute.overrides(), **mash.overrides())
        run, _ = experiment.sweep_run(key)
        truth = experiment.partition_dir(key) / run_files.truth_daywise_file()
        hits = folder.out_dir / run_files.HITS
        cfg = folder.config
        ev = cluster.call(
            context, step="evaluate", workdir=folder.out_dir, fn=evaluate_files, args=(hits, truth, folder.out_dir),
            kwargs={"truth_thresh": cfg.sim_truth_thresh, "config": cfg},
        )
        rank_version = step_versions(cfg)["rank"]
        payload = [EVALUATE_CODE_VERSION, rank_version, file_hash(truth), cfg.sim_truth_thresh]
        version = json_hash(payload)
        row = {"partition": str(key), "scenario": Study.variant(run), "seed": run.seed, **score_row(ev.summary)}
        with manifest_lock(folder.out_dir) as manifest:
            manifest.record("evaluate", version, [folder.out_dir / n for n in SCORE_FILES], row)
        confusion = ev.confusion.assign(scenario=row["scenario"], seed=run.seed)
        db = lineage.db(folder.lineage_db)
        save_results(context, db, SCORES_KEY, folder.partition_key, {"recovery_scores": confusion})
        common = lineage_metadata(
            step="evaluate", version=version, db=db, out_dir=folder.out_dir, started_at=started,
            settings={"sim_truth_thresh": cfg.sim_truth_thresh}, outputs=list(ev.paths.values()),
            metrics={k: v for k, v in row.items() if not _is_nan(v)},
            input_files=input_files(cfg) + [str(truth)], input_version=file_hash(truth),
        )
        md = {k: dg.MetadataValue.float(meta.rounded(v, 3)) for k, v in row.items() if k.endswith(("precision", "recall", "f1")) and not _is_nan(v)}
        md["confusion"] = dg.MetadataValue.md(meta.markdown_table(ev.confusion, max_rows=len(ev.confusion)))
        return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={**common, **md})

    return recovery_scores


def recovery_summary_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """``recovery_summary``: every scored partition in one table and figure."""

    @dg.asset(
        key=SUMMARY_KEY,
        deps=[dg.AssetDep(SCORES_KEY, partition_mapping=dg.AllPartitionMapping())],
        group_name=GROUP,
        code_version=SUMMARY_CODE_VERSION,
        kinds={"pandas", "matplotlib"},
        description="Every scored partition of the study in one table and figure: recovery_summary.csv (one row "
        "per simulation: variant, seed, daywise and any-day precision, recall, F1, FPR) and recovery_summary.png.",
        hooks={record_lineage},
    )
    def recovery_summary(
        context: AssetExecutionContext, experiment: StudyConfig, lineage: LineageStore
    ) -> dg.MaterializeResult:
        started = utcnow()
        res = experiment
        study = res.load()
        rows, versions = [], {}
        for key in partitions.get_partition_keys():
            out = Path(res.run_folder(key).out_dir)
            with manifest_lock(out) as manifest:
                rec = manifest.steps.get("evaluate")
            if rec and all((out / n).exists() for n in SCORE_FILES):
                rows.append(rec["metrics"])
                versions[f"{SCORES_KEY.to_user_string()}[{key}]"] = rec["version"]
        if not rows:
            raise dg.Failure("no partition of study/recovery_scores is materialized yet: backfill some partitions first")
        table = pd.DataFrame(rows)
        for dim in study.spec.varied:
            if dim != "scenario" and dim not in table:
                # Grid values are part of the variant label: spell them out as columns for the figure.
                table[dim] = [dict(p.split("=", 1) for p in v.split("+") if "=" in p).get(dim) for v in table["scenario"]]
                table[dim] = pd.to_numeric(table[dim], errors="ignore")
        root = res.study_root()
        csv = write_csv(table, root / run_files.RECOVERY_SUMMARY)
        png = plot_sweep(table, study.spec, root / run_files.RECOVERY_FIGURE)
        version = json_hash([SUMMARY_CODE_VERSION, sorted(versions.items())])
        db = lineage.db(res.experiment.lineage_default())
        save_results(context, db, SUMMARY_KEY, None, {"recovery_summary": table})
        common = lineage_metadata(
            step="summarise", version=version, db=db, out_dir=root, started_at=started, settings={"study": study.spec.to_dict()},
            outputs=[csv, png], row_counts={csv.name: len(table)}, metrics={"partitions": len(table)},
        )
        shown = read_csv(csv, what="recovery summary")
        cols = [c for c in ("scenario", "seed", "daywise_precision", "daywise_recall", "anyday_precision", "anyday_recall", "anyday_fpr") if c in shown]
        md = {
            "partitions scored": dg.MetadataValue.int(len(table)),
            "of": dg.MetadataValue.int(len(partitions.get_partition_keys())),
            "scores": dg.MetadataValue.md(meta.markdown_table(shown[cols], max_rows=50)),
            "figure": meta.image_markdown(png, "recovery summary"),
        }
        return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={**common, **md})

    return recovery_summary


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)
