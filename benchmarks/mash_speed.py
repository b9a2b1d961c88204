"""Speed and memory of the native mash against R mashr (not a test).

Simulates a daywise gene table (random-walk effects in 15% of rows, noise correlated
0.2 across days, SEs growing over days) and times each mode, plus the across-day
``ash_table``. Where R with mashr is installed it times R in the same run, two ways:

* whole processes: the ``fatebias mash IN OUT --mode M`` command against ``Rscript``
  running the same mode with mashr on the same CSV (read, SE inflation, V estimated
  and regularised, covariances, fit, write), start-up included; the ratio R / native
  is the speed target (at least 30x in each mode at 200,000 x 4). It also prints the
  largest difference between the two output files' posterior means, SDs and lfsr;
* in process (``--in-process``; slow at screen scale): ``mash_table`` with
  ``mash_backend: r`` (the same steps run by R mashr through rpy2) against the native
  ``mash_table``.

Speed is always a ratio against a reference timed side by side in the same run, on the
same machine; the last lines are a table (rows, mode, native s, R s, ratio, machine,
load) for the README. With ``--rows 1000000`` it also reports the peak resident memory,
which is dominated by the one rows x components likelihood matrix.

Usage::

    python benchmarks/mash_speed.py --rows 200000               # the screen-scale target, with R
    python benchmarks/mash_speed.py --rows 20000 --in-process   # both comparisons at 20,000 rows
    python benchmarks/mash_speed.py --no-r                      # native only
    python benchmarks/mash_speed.py --rows 1000000 --modes conservative --no-r
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.mash import ash_table, mash_table

TARGET = 30.0

# One mode run by R mashr on a daywise CSV, as the native command runs it (SE inflation
# and floor from the arguments: the defaults the native command uses).
RSCRIPT = r"""
suppressPackageStartupMessages(library(mashr))
args <- commandArgs(trailingOnly = TRUE)
df <- read.csv(args[1], check.names = FALSE)
mode <- args[3]
B <- as.matrix(df[, grep("^betahat_", names(df))])
S <- pmax(as.matrix(df[, grep("^se_", names(df))]) * as.numeric(args[4]), as.numeric(args[5]))
colnames(B) <- colnames(S) <- sub("^betahat_", "", colnames(B))
V <- tryCatch(estimate_null_correlation_simple(mash_set_data(B, S)), error = function(e) diag(ncol(B)))
e <- eigen(V, symmetric = TRUE)
V <- e$vectors %*% diag(pmax(e$values, 1e-6)) %*% t(e$vectors)
V <- cov2cor(V)
V <- 0.95 * V + 0.05 * diag(ncol(B))
data <- mash_set_data(B, S, V = V)
U <- cov_canonical(data)
if (mode == "enriched") {
  strong <- get_significant_results(mash_1by1(data), 0.1)
  if (length(strong) >= 50) U <- c(U, cov_ed(data, cov_pca(data, 2, subset = strong), subset = strong))
  m <- mash(data, U, prior = "uniform", nullweight = 3, verbose = FALSE)
} else {
  m <- mash(data, U, prior = "nullbiased", nullweight = 10, verbose = FALSE)
}
pm <- get_pm(m); psd <- get_psd(m); lf <- get_lfsr(m)
colnames(pm) <- paste0("postmean_", colnames(B))
colnames(psd) <- paste0("postsd_", colnames(B))
colnames(lf) <- paste0("lfsr_", colnames(B))
write.csv(cbind(df, pm, psd, lf), args[2], row.names = FALSE)
"""


def simulate(n_rows: int, n_days: int, seed: int = 0) -> pd.DataFrame:
    """A daywise table like the pipeline's gene export."""
    rng = np.random.default_rng(seed)
    se = rng.uniform(0.04, 0.3, (n_rows, 1)) * np.linspace(1.0, 1.8, n_days)[None, :]
    eff = np.zeros((n_rows, n_days))
    active = rng.random(n_rows) < 0.15
    eff[active] = np.cumsum(rng.normal(0.0, 0.35, (int(active.sum()), n_days)), axis=1)
    corr = np.full((n_days, n_days), 0.2)
    np.fill_diagonal(corr, 1.0)
    noise = rng.multivariate_normal(np.zeros(n_days), corr, n_rows) * se
    df = pd.DataFrame({"gene": [f"Gene{i + 1}" for i in range(n_rows)]})
    for d in range(n_days):
        df[f"betahat_d{d}"] = eff[:, d] + noise[:, d]
    for d in range(n_days):
        df[f"se_d{d}"] = se[:, d]
    return df


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def r_available() -> tuple[bool, str]:
    """Whether R mashr can be timed here (rpy2 + mashr, and Rscript); the reason when not."""
    from fatebias_core.mash.rbackend import r_backend_available

    ok, why = r_backend_available()
    if ok and shutil.which("Rscript") is None:
        return False, "Rscript is not on PATH"
    return ok, why


def rscript_mashr() -> tuple[bool, str]:
    """Whether ``Rscript`` runs and loads mashr (the whole-process comparison needs no rpy2)."""
    if shutil.which("Rscript") is None:
        return False, "Rscript is not on PATH"
    proc = subprocess.run(["Rscript", "-e", "suppressPackageStartupMessages(library(mashr))"], capture_output=True, text=True)
    return (True, "") if proc.returncode == 0 else (False, "R has no mashr package")


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """Best wall time of ``repeats`` calls of ``fn``, all of them, and the last result."""
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def run_process(cmd: list[str]) -> None:
    """Run a command, raising with its stderr when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.strip()[-500:]}")


def machine() -> str:
    """The processor and the cores this process may use."""
    model = "unknown processor"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return f"{model}, {cores} cores"


def max_differences(native: Path, r: Path) -> str:
    """Largest |native - R| in posterior means, SDs and lfsr between two output files."""
    a, b = pd.read_csv(native), pd.read_csv(r)
    out = []
    for k in ("postmean", "postsd", "lfsr"):
        cols = [c for c in b.columns if c.startswith(k + "_")]
        out.append(f"{k} {float(np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max()):.1e}")
    return "max |native - R|: " + ", ".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--modes", default="conservative,enriched")
    p.add_argument("--repeats", type=int, default=3, help="timed native runs per mode (best is reported)")
    p.add_argument("--r-repeats", type=int, default=1, help="timed R runs per mode (best is reported)")
    p.add_argument("--no-r", action="store_true", help="do not time R even when it is installed")
    p.add_argument("--in-process", action="store_true", help="also time mash_table against the rpy2 backend")
    p.add_argument("--target", type=float, default=TARGET, help="R / native ratio to reach in each mode")
    args = p.parse_args()

    load = os.getloadavg()
    df = simulate(args.rows, args.days)
    cfg = FatebiasConfig()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    with_r, why = (False, "--no-r") if args.no_r else r_available() if args.in_process else (False, "no --in-process")
    whole_r, whole_why = (False, "--no-r") if args.no_r else rscript_mashr()
    print(f"{args.rows} rows x {args.days} days on {machine()}; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("R mashr in process (rpy2): " + ("timed in this run" if with_r else f"not timed ({why})"))
    print("R mashr whole process (Rscript): " + ("timed in this run" if whole_r else f"not timed ({whole_why})"))
    print(f"{'step':<34}{'best s':>8}  {'all runs (s)':<28}{'R / native':>11}  notes")
    ratios: dict[str, float] = {}
    table: list[str] = []

    def row(label: str, best: float, times: list[float], ratio: float | None, note: str = "") -> None:
        runs = ", ".join(f"{t:.2f}" for t in times)
        r = f"{ratio:.1f}x" if ratio is not None else ""
        print(f"{label:<34}{best:>8.2f}  {runs:<28}{r:>11}  {note}", flush=True)

    for mode in modes if args.in_process or not whole_r else []:
        best, times, res = best_of(partial(mash_table, df, mode, cfg), args.repeats)
        note = f"{len(res.covariance_names)} covariances, strong={res.fit.result.n_strong}, hits={(res.table['lfsr_min'] < 0.05).sum()}"
        if not with_r:
            row(f"mash {mode} (native)", best, times, None, note)
            continue
        r_best, r_times, r_res = best_of(partial(mash_table, df, mode, FatebiasConfig(mash_backend="r")), args.r_repeats)
        post = [c for c in res.table.columns if c.startswith(("postmean_", "postsd_", "lfsr_"))]
        dmax = float(abs(res.table[post].to_numpy() - r_res.table[post].to_numpy()).max())
        ratios[f"{mode} in process"] = r_best / best
        row(f"mash {mode} (native)", best, times, r_best / best, note)
        row(f"mash {mode} (R via rpy2)", r_best, r_times, None, f"max |native - R| {dmax:.1e}")
    if whole_r:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "table.csv"
            df.to_csv(src, index=False)
            script = Path(tmp) / "mash_mode.R"
            script.write_text(RSCRIPT)
            exe = shutil.which("fatebias") or str(Path(sys.executable).with_name("fatebias"))
            for mode in modes:
                out = Path(tmp) / f"out_{mode}.csv"
                r_out = Path(tmp) / f"out_{mode}.R.csv"
                native_cmd = [exe, "mash", str(src), str(out), "--mode", mode]
                r_cmd = ["Rscript", str(script), str(src), str(r_out), mode, str(cfg.mash_se_inflate), str(cfg.mash_se_floor)]
                before = os.getloadavg()[0]
                best, times, _ = best_of(partial(run_process, native_cmd), args.repeats)
                r_best, r_times, _ = best_of(partial(run_process, r_cmd), args.r_repeats)
                after = os.getloadavg()[0]
                ratios[f"{mode} whole process"] = r_best / best
                row(f"fatebias mash --mode {mode}", best, times, r_best / best, "whole process")
                row(f"Rscript mashr {mode}", r_best, r_times, None, "whole process; " + max_differences(out, r_out))
                table.append(
                    f"| {args.rows:,} x {args.days} | {mode} | {best:.2f} | {r_best:.1f} | {r_best / best:.1f}x "
                    f"| {machine()} | {before:.1f} / {after:.1f} |"
                )
    summary = pd.DataFrame(
        {"gene": df["gene"], "betahat": df[[c for c in df if c.startswith("betahat_")]].mean(axis=1),
         "sebetahat": np.sqrt((df[[c for c in df if c.startswith("se_")]] ** 2).sum(axis=1)) / args.days}
    )
    t0 = time.perf_counter()
    ash_table(summary, cfg)
    print(f"{'ash':<34}{time.perf_counter() - t0:>8.2f}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB; load average after: {os.getloadavg()[0]:.2f}")
    if ratios:
        verdict = "all" if min(ratios.values()) >= args.target else "NOT all"
        print("R / native: " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()) + f" ({verdict} >= {args.target:g}x)")
    if table:
        print("| rows x days | mode | native s (fatebias mash) | R s (Rscript) | R / native | machine | load before / after |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(table))


if __name__ == "__main__":
    main()
