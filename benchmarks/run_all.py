"""Every speed ratio of the project, each measured side by side with its reference in one run.

Prints one table: what is measured, the reference's time, fatebias's time, the ratio and
the goal. References are timed in this same run, on the same data, where they are
installed; only ratios carry over to another machine.

1. **SVI step** at the seed's full scale (200,000 cells, 2,000 guides, 300 genes, Kmax
   20, batch 8,192): ``fatebias_core``'s fit, per step as the difference between a
   long and a short fit, against ``benchmarks/seed_reference.py`` (a reconstruction
   of the seed's plain-Pyro SVI, see there) on the same tensors.
2. **Laplace step** at the same scale: its time against the SVI it refines, in the
   same fit (``--quick``: a 300-step SVI, as ``fit_speed.py --quick``; otherwise the
   default ``num_steps``).
3. **Whole chain**: ``fatebias run`` with defaults, as a process, on a simulated
   experiment of 40,000 cells, 1,800 guides, 300 genes, Kmax 20 (``--quick``: 5,000
   cells, 300 guides, 100 genes and 1,000 SVI steps), against the seed's fit alone:
   5,000 steps (``--quick``: 1,250) at the seed reconstruction's per-step time measured
   on the same experiment. Also the diagnostics' cost against the main fit's.
4. **mash command**: ``fatebias mash`` as a whole process, 20,000 x 4, each mode,
   against ``Rscript`` running mashr on the same CSV (``benchmarks/mash_speed.py``'s
   script), when R with mashr is installed.

Usage::

    python benchmarks/run_all.py                # everything (about 20-30 min on 2 cores)
    python benchmarks/run_all.py --quick        # smaller and shorter (a few minutes)
    python benchmarks/run_all.py --only svi,laplace --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from fatebias_core.config import FatebiasConfig, load_config
from fatebias_core.io.layout import RunLayout
from fatebias_core.pipeline.graph import CHAIN

sys.path.insert(0, str(Path(__file__).parent))

PARTS = ("svi", "laplace", "chain", "mash")
SEED_CHAIN_STEPS = 5000  # the seed's fit: 5,000 SVI steps


@dataclass
class Row:
    """One line of the table."""

    what: str
    reference: str
    ref_s: float | None
    ours_s: float
    ratio: float | None
    goal: str
    met: bool | None
    note: str = ""


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPUs ({cpu}), {gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; load {os.getloadavg()[0]:.1f}"


def _experiment(cells: int, genes: int, guides: int, kmax: int, **extra):
    from fatebias_core.config import make_config
    from fatebias_core.data.load import load_experiment
    from fatebias_core.data.simulate import simulate_experiment

    cfg = make_config(
        sim_n_cells=cells, sim_n_genes=genes, sim_n_guides=guides, sim_kmax=kmax, sim_n_ntc_guides=max(guides // 40, 1),
        batch_size=8192, device="cpu", progress=False, **extra,
    )
    sim = simulate_experiment(cfg)
    return cfg, load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)


def _fit_seconds(exp, cfg, steps: int) -> float:
    """Seconds of the SVI loop of a ``steps``-step fit at a fixed likelihood weight (no dispersion updates)."""
    from fatebias_core.model.inference import fit

    update = {"num_steps": steps, "posterior_method": "meanfield", "likelihood_weight": 1.0}
    return fit(exp, cfg.model_copy(update=update)).info["runtime_s"]


def svi_rows(quick: bool) -> list[Row]:
    """Per-step time of the fit against the seed reconstruction on the same tensors."""
    from seed_reference import time_seed_steps

    cfg, exp = _experiment(200_000, 300, 2000, 20)
    short, long_ = (30, 130) if quick else (60, 360)
    ours = (_fit_seconds(exp, cfg, long_) - _fit_seconds(exp, cfg, short)) / (long_ - short)
    seed = time_seed_steps(exp, cfg.contrast_fates, cfg.ref_fate, 8192, steps=(5, 15) if quick else (10, 40))
    ref = seed["ms_per_step"] / 1e3
    return [Row(
        "SVI step, 200k cells, 2,000 guides, Kmax 20, batch 8,192", "seed SVI (reconstruction)", ref, ours, ref / ours,
        ">= 30x", ref / ours >= 30, f"fatebias: SVI loop of {long_} minus {short} steps, weight fixed",
    )]


def laplace_rows(quick: bool) -> list[Row]:
    """The Laplace refinement against the SVI it refines, in one fit."""
    from fatebias_core.model.inference import fit

    cfg, exp = _experiment(200_000, 300, 2000, 20)
    if quick:
        cfg = cfg.model_copy(update={"num_steps": 300})
    info = fit(exp, cfg).info
    svi, lap = info["runtime_s"], info["laplace_runtime_s"]
    return [Row(
        f"Laplace step, 200k cells ({info['steps']}-step SVI)", "the SVI it refines", svi, lap, svi / lap,
        "Laplace <= SVI", lap <= svi, f"{info['laplace_newton_iterations']} Newton iterations",
    )]


def _step_durations(out: Path, start: float, config: FatebiasConfig) -> dict[str, float]:
    """Seconds each step of a finished run took, from when its files were last written.

    Both engines write each step's files at its end (the Dagster engine keeps no
    manifest), so a step's finish time is the newest of its files' modification times.
    """
    layout = RunLayout(out, config)
    done = []
    for step in CHAIN:
        files = [p for p in layout.step_files(step) if p.exists()]
        if files:
            done.append((max(p.stat().st_mtime for p in files), step))
    out_s, prev = {}, start
    for t, step in sorted(done):
        out_s[step] = max(t - prev, 0.0)
        prev = t
    return out_s


def chain_rows(quick: bool) -> list[Row]:
    """``fatebias run`` with defaults as a process, against the seed's 5,000-step fit."""
    from seed_reference import time_seed_steps

    from fatebias_core.data.simulate import simulate

    cells, genes, guides = (5_000, 100, 300) if quick else (40_000, 300, 1800)
    cfg, exp = _experiment(cells, genes, guides, 20)
    # --quick: 1,000 SVI steps instead of the default 4,000, and the seed's 5,000 scaled alike.
    steps = 1000 if quick else cfg.num_steps
    seed_steps = SEED_CHAIN_STEPS * steps // cfg.num_steps
    seed = time_seed_steps(exp, cfg.contrast_fates, cfg.ref_fate, 8192, steps=(5, 15) if quick else (10, 30))
    seed_s = seed["ms_per_step"] * seed_steps / 1e3
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulate(cfg.model_copy(update={"progress": False, "num_steps": steps}), Path(tmp) / "sim")
        t0 = time.time()
        proc = subprocess.run([_exe(), "run", "--config", str(sim.paths["config"])], capture_output=True, text=True)
        total = time.time() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"fatebias run failed: {proc.stderr[-800:]}")
        run_cfg = load_config(sim.paths["config"])
        out = Path(run_cfg.out_dir)
        fit_info = json.loads((out / "fit" / "fit.json").read_text())["info"]
        diag = json.loads((out / "diagnostics.json").read_text())
        steps = _step_durations(out, t0, run_cfg)
    fit_s = fit_info["runtime_s"] + fit_info.get("laplace_runtime_s", 0.0)
    diag_s = float(diag.get("runtime_s") or steps.get("diagnostics", 0.0))
    scenario = f"{cells // 1000}k cells, {guides:,} guides, Kmax 20"
    note = (
        f"fit {fit_s:.0f} s (SVI {fit_info['runtime_s']:.0f}, Laplace {fit_info.get('laplace_runtime_s', 0):.0f}), "
        f"export to ranking {sum(steps.get(s, 0) for s in ('export', 'mash', 'aggregate', 'rank')):.0f} s, "
        f"diagnostics {diag_s:.0f} s, report {steps.get('report', 0):.0f} s"
    )
    return [
        Row(f"`fatebias run`, defaults{' but 1,000 steps' if quick else ''}, {scenario}", f"seed fit ({seed_steps} steps)", seed_s, total,
            seed_s / total, ">= 10x", seed_s / total >= 10, note),
        Row(f"diagnostics, {scenario}", "the main fit", fit_s, diag_s, fit_s / diag_s, "diagnostics <= 0.5 x fit",
            diag_s <= 0.5 * fit_s, ""),
    ]


def _exe() -> str:
    return shutil.which("fatebias") or str(Path(sys.executable).with_name("fatebias"))


def mash_rows(quick: bool) -> list[Row]:
    """``fatebias mash`` against ``Rscript`` + mashr, both as whole processes, in each mode."""
    from mash_speed import RSCRIPT, best_of, rscript_mashr, run_process, simulate

    ok, why = rscript_mashr()
    if not ok:
        return [Row("`fatebias mash` 20,000 x 4 (whole process)", "Rscript mashr", None, float("nan"), None, ">= 20x", None,
                    f"R not timed: {why}")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src, script = Path(tmp) / "table.csv", Path(tmp) / "mash_mode.R"
        simulate(20_000, 4).to_csv(src, index=False)
        script.write_text(RSCRIPT)
        for mode in ("conservative", "enriched"):
            out = Path(tmp) / f"out_{mode}.csv"
            ours, _, _ = best_of(lambda: run_process([_exe(), "mash", str(src), str(out), "--mode", mode]), 3)  # noqa: B023
            ref, _, _ = best_of(lambda: run_process(["Rscript", str(script), str(src), f"{out}.R.csv", mode]), 1)  # noqa: B023
            rows.append(Row(f"`fatebias mash --mode {mode}` 20,000 x 4 (whole process)", "Rscript mashr", ref, ours,
                            ref / ours, ">= 20x", ref / ours >= 20, "best of 3 (R: 1 run)"))
    return rows


def _fmt(x: float | None, unit: str = "s") -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.3f} {unit}" if x < 1 else f"{x:.1f} {unit}"


def print_table(rows: list[Row]) -> None:
    print("| what | reference | reference time | fatebias | ratio | goal | met | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.1f}x"
        met = "-" if r.met is None else ("yes" if r.met else "no")
        print(f"| {r.what} | {r.reference} | {_fmt(r.ref_s)} | {_fmt(r.ours_s)} | {ratio} | {r.goal} | {met} | {r.note} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller scenarios, fewer steps")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    runners: dict[str, Callable[[bool], list[Row]]] = {"svi": svi_rows, "laplace": laplace_rows, "chain": chain_rows, "mash": mash_rows}
    print(f"machine: {_machine()}{' (--quick)' if args.quick else ''}")
    rows: list[Row] = []
    for part in parts:
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        try:
            new = runners[part](args.quick)
        except Exception as exc:  # noqa: BLE001 - one failed part must not lose the others' numbers
            print(f"  {part}: failed ({exc.__class__.__name__}: {str(exc)[:300]})", flush=True)
            continue
        rows.extend(new)
        print(f"  {part}: measured in {time.perf_counter() - t0:.0f} s (load average {load0:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after)", flush=True)
        for r in new:
            print(f"    {r.what}: reference {_fmt(r.ref_s)}, fatebias {_fmt(r.ours_s)}, ratio "
                  f"{'-' if r.ratio is None else f'{r.ratio:.1f}x'}; {r.note}", flush=True)
    print()
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
