"""The ``fatebias`` command line: thin wrappers over the library's step functions.

Every command validates its inputs before any work, prints one line and exits
non-zero on bad input (``FatebiasError``), and writes its outputs atomically.

Each command imports the library modules it runs inside its handler, on purpose: the
table commands (``fatebias mash``, ``ash``, ``aggregate``, ``rank``) then start without
loading torch, Pyro or AnnData (``tests/mash/test_cli_imports.py`` pins it), which is
most of their wall time at 20,000 rows.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from fatebias_core.config import DEVICES, MASH_BACKENDS, MASH_MODES
from fatebias_core.errors import FatebiasError

log = logging.getLogger("fatebias")

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str):
    """Register ``fn`` (taking parsed args) as a subcommand with its argument builder."""

    def deco(build: Callable[[argparse.ArgumentParser], None]):
        def register(run: Callable[[argparse.Namespace], int]):
            COMMANDS[name] = (help, build, run)
            return run

        return register

    return deco


def _config(args: argparse.Namespace, **overrides):
    from fatebias_core.config import load_config

    overrides = {k: v for k, v in overrides.items() if v is not None}
    return load_config(getattr(args, "config", None), **overrides)


# --------------------------------------------------------------------------- fit
def _build_fit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="YAML configuration file")
    p.add_argument("--out", help="output folder (overrides out_dir)")
    p.add_argument("--device", choices=DEVICES, help="torch device (overrides device)")
    p.add_argument("--num-steps", type=int, help="SVI steps (overrides num_steps)")


@command("fit", "load the experiment, fit the model and export posterior summaries")(_build_fit)
def _run_fit(args: argparse.Namespace) -> int:
    from fatebias_core.pipeline.chain import fit_and_export

    cfg = _config(args, out_dir=args.out, device=args.device, num_steps=args.num_steps)
    result = fit_and_export(cfg)
    print(result.describe())
    return 0


# --------------------------------------------------------------------------- check
def _build_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="YAML configuration file")


@command("check", "check the data before a fit: every loader validation and the load summary, nothing written")(_build_check)
def _run_check(args: argparse.Namespace) -> int:
    from fatebias_core.pipeline.check import check_data

    cfg = _config(args)
    result = check_data(cfg)
    print(result.describe(args.config))
    return 0


# --------------------------------------------------------------------------- assign
def _build_assign(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="YAML configuration file")
    p.add_argument("--out", help="output folder (overrides out_dir)")


@command("assign", "read the guides (assigning them from UMI counts) and write them beside the run with the load summary, without fitting")(_build_assign)
def _run_assign(args: argparse.Namespace) -> int:
    from fatebias_core.io.layout import RunLayout
    from fatebias_core.pipeline.steps import load_step

    cfg = _config(args, out_dir=args.out)
    experiment = load_step(cfg)
    written = ", ".join(p.name for p in RunLayout.of(cfg).load_files() if p.exists())
    print(f"guides of {experiment.summary.n_cells_in} cells written to {cfg.out_dir}: {written}")
    return 0


# --------------------------------------------------------------------------- lineage
def _build_lineage(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="run folder (out_dir of a run made with the dagster engine)")
    where.add_argument("--config", "-c", help="the run's YAML configuration (its out_dir)")
    p.add_argument("--settings", action="store_true", help="print the settings of every asset, not only the hit list's")


@command("lineage", "print what made the latest hit list: input files, each step's version, run and settings")(_build_lineage)
def _run_lineage(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fatebias_core.io import layout as names

    out = Path(args.out) if args.out else Path(_config(args).out_dir)
    try:
        from fatebias_dagster.lineage import format_hit_lineage, hit_list_lineage
        from fatebias_dagster.resources import LineageStore
    except ImportError:
        raise FatebiasError('fatebias lineage needs the platform: pip install "fatebias[platform]"') from None
    db = LineageStore.from_env().db(out / names.LINEAGE_DB)
    if not db.path.exists():
        manifest = out / names.MANIFEST
        hint = f"; {manifest} lists the steps that made the folder" if manifest.exists() else ""
        raise FatebiasError(
            f"no lineage database at {db.path}: only runs with the dagster engine record lineage{hint}"
        )
    print(format_hit_lineage(hit_list_lineage(db, out), db.path, all_settings=args.settings))
    return 0


# --------------------------------------------------------------------------- simulate
def _build_simulate(p: argparse.ArgumentParser) -> None:
    from fatebias_core.config import FatebiasConfig

    p.add_argument("--out", required=True, help="folder for adata.h5ad, guide_map.csv, truth and config")
    p.add_argument("--config", "-c", help="YAML file with sim_* settings (and run settings for config.yaml)")
    for name, info in FatebiasConfig.model_fields.items():
        if name.startswith("sim_"):
            flag = "--" + name.removeprefix("sim_").replace("_", "-")
            typ = type(info.default) if info.default is not None else float
            p.add_argument(flag, dest=name, type=typ, help=f"{info.description} (default {info.default})")


@command("simulate", "simulate an experiment with known truth")(_build_simulate)
def _run_simulate(args: argparse.Namespace) -> int:
    from fatebias_core.config import FatebiasConfig
    from fatebias_core.data.simulate import simulate

    sim = {k: getattr(args, k) for k in FatebiasConfig.model_fields if k.startswith("sim_")}
    cfg = _config(args, **sim)
    result = simulate(cfg, args.out)
    print(result.describe())
    return 0


# --------------------------------------------------------------------------- demo
def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine", choices=["auto", "dagster", "local"], default="auto",
        help="dagster: materialise the asset graph in-process (lineage recorded); local: plain in-process chain; "
        'auto: dagster when installed (pip install "fatebias[platform]"), else local',
    )


def _build_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="fatebias_demo", help="output folder (default ./fatebias_demo)")
    p.add_argument("--config", "-c", help="optional YAML overriding the demo's settings")
    _add_engine(p)


@command("demo", "simulate a modest experiment and run every step of the chain on it")(_build_demo)
def _run_demo(args: argparse.Namespace) -> int:
    from fatebias_core.pipeline.chain import run_demo

    result = run_demo(args.out, config_path=args.config, engine=args.engine)
    print(result.describe())
    return 0


# --------------------------------------------------------------------------- run
def _build_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="YAML configuration file")
    p.add_argument("--out", help="output folder (overrides out_dir)")
    p.add_argument(
        "--rerun",
        metavar="STEP",
        help="remake STEP and every step after it even when their files are current "
        "(a step of the chain, e.g. fit or rank; an unknown name is an error listing them; "
        "'fit' also discards the fit's checkpoint)",
    )
    _add_engine(p)


@command("run", "run the whole chain: fit, export, mash, aggregate, rank, diagnostics")(_build_run)
def _run_run(args: argparse.Namespace) -> int:
    from fatebias_core.pipeline.chain import chain_engine, forget_steps

    cfg = _config(args, out_dir=args.out)
    if args.rerun:
        dropped = forget_steps(cfg, args.rerun)
        if dropped:
            print(f"rerunning {', '.join(dropped)} in {cfg.out_dir}", file=sys.stderr)
    result = chain_engine(args.engine)(cfg, rerun=args.rerun)
    print(result.describe())
    return 0


# --------------------------------------------------------------------------- mash / ash
def _build_mash(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="daywise table with betahat_d*, se_d* columns")
    p.add_argument("output", help="output CSV (input columns + postmean_d*, postsd_d*, lfsr_d*, lfsr_min, best_day)")
    p.add_argument("--mode", choices=MASH_MODES, default="conservative")
    p.add_argument("--config", "-c", help="YAML with mash_* settings")
    p.add_argument("--backend", choices=MASH_BACKENDS, help="overrides mash_backend")


@command("mash", "multivariate adaptive shrinkage of a daywise effect table")(_build_mash)
def _run_mash(args: argparse.Namespace) -> int:
    from fatebias_core.mash import mash_file

    cfg = _config(args, mash_backend=args.backend)
    res = mash_file(args.input, args.output, mode=args.mode, config=cfg)
    print(res.describe())
    return 0


def _build_ash(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="table with betahat, sebetahat columns")
    p.add_argument("output", help="output CSV (input columns + postmean, postsd, lfsr, qvalue)")
    p.add_argument("--config", "-c", help="YAML settings")


@command("ash", "univariate adaptive shrinkage of an across-day summary")(_build_ash)
def _run_ash(args: argparse.Namespace) -> int:
    from fatebias_core.mash import ash_file

    cfg = _config(args)
    res = ash_file(args.input, args.output, config=cfg)
    print(res.describe())
    return 0


# --------------------------------------------------------------------------- discovery
def _build_aggregate(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="mash_guide_<mode>.csv")
    p.add_argument("output", help="gene_from_guide_mash_<mode>.csv")
    p.add_argument("--config", "-c", help="YAML settings (thresholds)")


@command("aggregate", "combine guide-level mash posteriors into gene-level ones")(_build_aggregate)
def _run_aggregate(args: argparse.Namespace) -> int:
    from fatebias_core.discovery.aggregate import aggregate_file

    cfg = _config(args)
    df = aggregate_file(args.input, args.output, cfg)
    print(f"wrote {args.output}: {len(df)} genes")
    return 0


def _build_rank(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="mash gene table, aggregated table or ash table")
    p.add_argument("output", help="hits_ranked.csv")
    p.add_argument("--config", "-c", help="YAML settings (thresholds, discovery_source)")
    p.add_argument("--source", choices=["gene", "guide_agg", "ash"], help="overrides discovery_source")


@command("rank", "call and rank hits")(_build_rank)
def _run_rank(args: argparse.Namespace) -> int:
    from fatebias_core.discovery.calls import rank_file

    cfg = _config(args, discovery_source=args.source)
    df = rank_file(args.input, args.output, cfg)
    print(f"wrote {args.output}: {int(df['hit_anyday'].sum())} hits of {len(df)} rows")
    return 0


def _build_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hits", required=True, help="hits_ranked.csv")
    p.add_argument("--truth", required=True, help="truth_daywise.csv")
    p.add_argument("--out", required=True, help="folder for daywise_confusion.csv and pred_call_summary.json")
    p.add_argument("--truth-thresh", type=float, default=0.2, help="|theta| above which a gene/day is truly active")


@command("evaluate", "score ranked hits against a simulation's truth")(_build_evaluate)
def _run_evaluate(args: argparse.Namespace) -> int:
    from fatebias_core.discovery.evaluate import evaluate_files

    summary = evaluate_files(args.hits, args.truth, args.out, truth_thresh=args.truth_thresh)
    print(summary.describe())
    return 0


def _build_diagnose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="YAML configuration file")
    p.add_argument("--out", help="output folder (overrides out_dir)")


@command("diagnose", "held-out fit, permutation negative control and sanity checks")(_build_diagnose)
def _run_diagnose(args: argparse.Namespace) -> int:
    from fatebias_core.pipeline.chain import diagnose

    cfg = _config(args, out_dir=args.out)
    result = diagnose(cfg)
    print(result.describe())
    return 0


# --------------------------------------------------------------------------- sweep
def _build_sweep(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--spec", help="sweep spec YAML: setting -> [values], seeds: [...], optional scenarios")
    which.add_argument("--preset", choices=["prior", "tau", "stress"], help="a named sweep")
    p.add_argument("--out", required=True, help="folder for sweep_results.csv, sweep_results.png and runs/")
    p.add_argument("--config", "-c", help="YAML base settings of every run (simulation size, steps, ...)")


@command("sweep", "simulate and run the chain over a grid of simulation and prior settings; score recovery")(_build_sweep)
def _run_sweep(args: argparse.Namespace) -> int:
    from fatebias_core.studies.sweep import load_spec, preset, run_sweep

    spec = load_spec(args.spec) if args.spec else preset(args.preset)
    result = run_sweep(spec, args.out, _config(args))
    print(result.describe())
    return 0 if result.n_failed == 0 else 1


# --------------------------------------------------------------------------- calibrate
def _build_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for calibration_results.csv, calibration_summary.csv and figures")
    p.add_argument("--config", "-c", help="YAML base settings (simulation and inference)")
    p.add_argument("--scenarios", help="comma-separated scenarios (default: all)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--methods", help="comma-separated inference methods (default: laplace, laplace_model, laplace_no_clone_effect)")


@command("calibrate", "calibration study: interval coverage, false sign rate and power over simulated scenarios")(_build_calibrate)
def _run_calibrate(args: argparse.Namespace) -> int:
    from fatebias_core.studies.calibration import METHODS, run_calibration

    cfg = _config(args)
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    try:
        seeds = [int(x) for x in split(args.seeds)]
    except ValueError:
        raise FatebiasError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    res = run_calibration(args.out, cfg, scenarios=split(args.scenarios), seeds=seeds, methods=split(args.methods) or METHODS[:3])
    print(res.describe())
    return 0


# --------------------------------------------------------------------------- report
def _build_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run folder (out_dir of a finished run); report.html is written there")
    p.add_argument("--config", "-c", help="the run's YAML settings (default: the folder's config_used.yaml)")


@command("report", "write the HTML report of a finished run (report.html, self-contained)")(_build_report)
def _run_report(args: argparse.Namespace) -> int:
    from fatebias_core.report.build import build_report

    cfg = _config(args) if args.config else None
    print(build_report(args.out, cfg).describe())
    return 0


# --------------------------------------------------------------------------- config
def _build_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["check", "show", "reference"], help="check a file, show resolved settings, or print the reference")
    p.add_argument("path", nargs="?", help="YAML configuration file")


@command("config", "check a configuration file or print the configuration reference")(_build_config)
def _run_config(args: argparse.Namespace) -> int:
    from fatebias_core.config import load_config, schema_markdown

    if args.action == "reference":
        print(schema_markdown())
        return 0
    cfg = load_config(args.path)
    if args.action == "show":
        print(cfg.to_yaml(), end="")
    else:
        print(f"{args.path}: ok (the settings; `fatebias check --config {args.path}` checks the data they name)")
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    from fatebias_core import __version__

    parser = argparse.ArgumentParser(prog="fatebias", description="Fate-bias analysis of time-course Perturb-seq with CellRank fate probabilities.")
    parser.add_argument("--version", action="version", version=f"fatebias {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (help_, build, _run) in COMMANDS.items():
        build(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fatebias`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    # Our own messages at INFO; other libraries' (matplotlib's font cache, Dagster's
    # storage migrations, ...) only from WARNING on, unless --verbose.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("fatebias").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    warnings.simplefilter("default" if args.verbose else "ignore", FutureWarning)
    if not args.verbose:
        # Our own warnings (deprecations, QC) print as one line each.
        warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    _, _, run = COMMANDS[args.command]
    try:
        return run(args)
    except FatebiasError as exc:
        if args.verbose:
            raise
        print(f"fatebias {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fatebias {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
