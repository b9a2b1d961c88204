"""The ``fatebias mash`` and ``fatebias ash`` commands load no torch, Pyro, AnnData, Dagster or matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

HEAVY = ("torch", "pyro", "anndata", "dagster", "matplotlib", "h5py", "duckdb")

SCRIPT = """
import json, sys
from fatebias_core.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "loaded": sorted(m for m in %r if m in sys.modules)}))
"""


def _table(n: int = 300, days: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"gene": [f"G{i}" for i in range(n)]})
    for d in range(days):
        df[f"betahat_d{d}"] = rng.normal(0, 0.3, n)
    for d in range(days):
        df[f"se_d{d}"] = rng.uniform(0.1, 0.3, n)
    return df


@pytest.mark.parametrize("command", ["mash", "ash"])
def test_command_imports_no_heavy_library(tmp_path: Path, command: str) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    table = _table()
    if command == "ash":
        table = pd.DataFrame({"gene": table["gene"], "betahat": table["betahat_d0"], "sebetahat": table["se_d0"]})
    table.to_csv(src, index=False)
    args = [command, str(src), str(out)] + (["--mode", "enriched"] if command == "mash" else [])
    proc = subprocess.run([sys.executable, "-c", SCRIPT % (HEAVY,), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "loaded": []}
    assert out.exists()
