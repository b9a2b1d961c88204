"""``python -m fatebias_dagster.slurm SLURM.yaml``: print each pool's job script (nothing is submitted)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from fatebias_core.errors import ConfigError

from .settings import parse_slurm_block, pool_job_scripts


def main(argv: Sequence[str] | None = None) -> int:
    """Print the job script of each pool of the file's ``slurm:`` block."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m fatebias_dagster.slurm SLURM.yaml", file=sys.stderr)
        return 2
    try:
        raw = yaml.safe_load(Path(args[0]).read_text())
    except (OSError, yaml.YAMLError) as exc:
        print(f"{args[0]}: {exc}", file=sys.stderr)
        return 2
    raw = raw.get("cluster", raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict) or "slurm" not in raw:
        print(f"{args[0]}: no slurm: block", file=sys.stderr)
        return 2
    try:
        settings = parse_slurm_block(raw["slurm"])
        scripts = pool_job_scripts(raw["slurm"])
    except ConfigError as exc:
        print(f"{args[0]}: {exc}", file=sys.stderr)
        return 2
    if settings.ignored:
        print(f"# ignored (keys of the Dask route): {', '.join(settings.ignored)}")
    for pool, script in scripts.items():
        print(f"# ---- the {pool} pool's job script ----\n{script}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
