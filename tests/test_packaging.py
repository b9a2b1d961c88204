"""The core installs alone: ``pip install fatebias`` has no Dagster, Dask or DuckDB, and needs none.

``fatebias[platform]`` adds them (fatebias_dagster); ``fatebias[dev]`` includes the platform.
The run without the platform is a subprocess whose imports of the platform's packages fail,
as they would in an environment where only the core was installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fatebias_core.pipeline.chain import LOCAL_FALLBACK, PLATFORM_MODULES

from .conftest import TINY_CHAIN

ROOT = Path(__file__).resolve().parents[1]

#: Distributions of the platform, as pyproject.toml names them.
PLATFORM_DISTS = {"dagster", "dagster-webserver", "dagster-dask", "dask", "dask-jobqueue", "duckdb", "distributed"}


def _project() -> dict:
    """pyproject.toml's ``[project]`` table (tomllib from Python 3.11; tomli before it)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """The distribution name of a requirement (``dask[distributed]>=2024.1`` -> ``dask``), normalised."""
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_core_dependencies_have_no_platform() -> None:
    project = _project()
    core = {_name(r) for r in project["dependencies"]}
    assert core.isdisjoint(PLATFORM_DISTS), sorted(core & PLATFORM_DISTS)
    extras = project["optional-dependencies"]
    platform = {_name(r) for r in extras["platform"]}
    assert {"dagster", "dagster-webserver", "dagster-dask", "dask", "dask-jobqueue", "duckdb"} <= platform
    # The README's install line (`pip install -e ".[dev]"`) still installs everything.
    assert "fatebias[platform]" in extras["dev"]
    # The Dagster family stays pinned together.
    pins = {_name(r): r for r in extras["platform"]}
    assert pins["dagster"] == "dagster==1.13.27" and pins["dagster-webserver"] == "dagster-webserver==1.13.27"


def test_readme_names_both_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install fatebias" in readme and 'pip install "fatebias[platform]"' in readme


#: Run in a fresh interpreter: every import of the platform fails, then the CLI and the
#: notebook API run a tiny simulated experiment. Prints the JSON facts the test checks.
NO_PLATFORM = textwrap.dedent(
    """
    import json, sys

    # As if not installed: `import dask` raises ModuleNotFoundError and
    # importlib.util.find_spec("dask") is None (anndata and others probe with it).
    BLOCKED = set(sys.argv[1].split(","))
    for name in BLOCKED:
        sys.modules[name] = None
    folder = sys.argv[2]

    import pandas as pd
    import matplotlib
    matplotlib.use("Agg")

    import fatebias_core
    import fatebias_core.api as fb
    from fatebias_core.cli import main

    assert main(["simulate", "--out", folder, "--config", folder + "/tiny.yaml"]) == 0
    assert main(["run", "--config", folder + "/config.yaml"]) == 0  # --engine auto: falls back to local

    import anndata as ad
    adata = ad.read_h5ad(folder + "/adata.h5ad")
    guide_map = pd.read_csv(folder + "/guide_map.csv")
    model = fb.FateBias.load(folder + "/results", adata, guide_map)
    ranked = model.get_ranked()
    fb.pl.volcano(model, "d1")

    from fatebias_core.errors import ConfigError
    from fatebias_core.pipeline.chain import chain_engine
    try:
        chain_engine("dagster")
        named = "no error"
    except ConfigError as exc:
        named = str(exc)
    loaded = sorted(m for m, mod in sys.modules.items()
                    if mod is not None and m.split(".")[0] in BLOCKED | {"fatebias_dagster"})
    print(json.dumps({"loaded": loaded, "genes": list(ranked["gene"]), "hits": int(ranked["hit_anyday"].sum()),
                      "postmean_d1": ranked["postmean_d1"].tolist(), "named": named}))
    """
)


def test_core_runs_without_the_platform(tmp_path: Path) -> None:
    """With dagster, dask, dask_jobqueue and duckdb unimportable: `fatebias simulate`, `fatebias run`
    (auto engine -> local, said in one line) and the notebook API on its folder all work."""
    settings = {**TINY_CHAIN, "run_diagnostics": False}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", NO_PLATFORM, ",".join(PLATFORM_MODULES), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(LOCAL_FALLBACK) == 1, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["loaded"] == []  # nothing of the platform, nor fatebias_dagster, was imported
    # Asking for the Dagster engine by name says what to install.
    assert 'pip install "fatebias[platform]"' in facts["named"], facts["named"]
    # The notebook API's ranking is the run folder's, gene for gene and value for value.
    hits = pd.read_csv(tmp_path / "results" / "hits_ranked.csv", float_precision="round_trip")
    assert facts["genes"] == list(hits["gene"]) and facts["hits"] == int(hits["hit_anyday"].sum()) > 0
    assert facts["postmean_d1"] == hits["postmean_d1"].tolist()
    # The local engine's record, not Dagster's: the manifest lists every step it ran.
    manifest = json.loads((tmp_path / "results" / "fatebias_manifest.json").read_text())
    assert {"fit", "export", "mash", "rank", "report"} <= set(manifest["steps"])
