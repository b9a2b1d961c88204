"""Speed and memory of the native mash (not a test).

Simulates a daywise gene table (random-walk effects in 15% of rows, noise correlated
0.2 across days, SEs growing over days) and times ``mash_table`` in each mode, plus
the across-day ``ash_table``. With ``--rows 1000000`` it also reports the peak
resident memory, which is dominated by the one rows x components likelihood matrix
(the per-block temporaries are bounded by ``mash_chunk_rows``).

Usage::

    python benchmarks/mash_speed.py                 # 20,000 rows x 4 days
    python benchmarks/mash_speed.py --rows 1000000 --modes conservative

Reference (this machine, 2 cores, R 4.2.2 / mashr 0.2.81): about 19 s conservative
and 42 s enriched at 20,000 x 4.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.mash import ash_table, mash_table

R_SECONDS = {"conservative": 19.0, "enriched": 42.0}


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--modes", default="conservative,enriched")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per mode (best is reported)")
    args = p.parse_args()

    load = os.getloadavg()
    df = simulate(args.rows, args.days)
    cfg = FatebiasConfig()
    print(f"{args.rows} rows x {args.days} days; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'step':<20}{'best s':>8}  {'all runs (s)':<34}{'R / best':>9}  notes")
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = mash_table(df, mode, cfg)
            times.append(time.perf_counter() - t0)
        best = min(times)
        ratio = f"{R_SECONDS[mode] / best:.1f}x" if args.rows == 20_000 and args.days == 4 else "-"
        n_cov = len(res.covariance_names)
        note = f"{n_cov} covariances, strong={res.fit.result.n_strong}, hits={(res.table['lfsr_min'] < 0.05).sum()}"
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"{'mash ' + mode:<20}{best:>8.2f}  {runs:<34}{ratio:>9}  {note}")
    summary = pd.DataFrame(
        {"gene": df["gene"], "betahat": df[[c for c in df if c.startswith("betahat_")]].mean(axis=1),
         "sebetahat": np.sqrt((df[[c for c in df if c.startswith("se_")]] ** 2).sum(axis=1)) / args.days}
    )
    t0 = time.perf_counter()
    ash_table(summary, cfg)
    print(f"{'ash':<20}{time.perf_counter() - t0:>8.2f}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB; load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
