"""The core installs alone: ``pip install fatebias`` has no Dagster, Dask or DuckDB, and needs none.

``fatebias[platform]`` adds them (fatebias_dagster); ``fatebias[dev]`` includes the platform.
The run without the platform installs the project into a new virtual environment (torch
first, as the README does, then the core with its own dependencies only) and runs the CLI
and the notebook API there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
PLATFORM_DISTS = {"dagster", "dagster-webserver", "dagster-pipes", "dagster-dask", "dask", "duckdb", "distributed"}


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
    assert {"dagster", "dagster-webserver", "dagster-pipes", "dagster-dask", "dask", "duckdb"} <= platform
    assert "dask-jobqueue" not in platform  # Slurm runs through Dagster Pipes, not Dask
    # The README's install line (`pip install -e ".[dev]"`) still installs everything.
    assert "fatebias[platform]" in extras["dev"]
    # The Dagster family moves together within one minor release, from the version tested.
    pins = {_name(r): r.split(_name(r), 1)[1] for r in extras["platform"]}
    assert pins["dagster"] == pins["dagster-webserver"] == pins["dagster-pipes"] == ">=1.13.27,<1.14"
    assert pins["dagster-dask"] == ">=0.29.27,<0.30"


def test_readme_names_both_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install fatebias" in readme and 'pip install "fatebias[platform]"' in readme


#: Run by the fresh environment's interpreter: the platform is not installed there; the CLI
#: and the notebook API run a tiny simulated experiment. Prints the JSON facts the test checks.
CORE_ONLY = textwrap.dedent(
    """
    import importlib.util, json, sys

    PLATFORM = sys.argv[1].split(",")
    folder = sys.argv[2]
    installed = [m for m in PLATFORM if importlib.util.find_spec(m) is not None]

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
    # The bare fatebias_dagster package may be imported by the engine lookup: its __init__ imports
    # nothing (defs is loaded on first use); none of its modules may be.
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in set(PLATFORM) or m.startswith("fatebias_dagster."))
    print(json.dumps({"installed": installed, "loaded": loaded, "core_from": fatebias_core.__file__, "genes": list(ranked["gene"]),
                      "hits": int(ranked["hit_anyday"].sum()), "postmean_d1": ranked["postmean_d1"].tolist(),
                      "named": named}))
    """
)


def _pip(env: Path, *args: str) -> None:
    """``pip install`` into ``env``; no bytecode compiled (the environment runs once, and compiling torch's
    sources took a third of the install)."""
    proc = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"pip install {' '.join(args)} failed:\n{proc.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="the fresh environment's layout is POSIX's")
def test_the_core_installs_alone_in_a_fresh_environment(tmp_path: Path) -> None:
    """`pip install fatebias` into a new virtual environment: no Dagster, Dask or DuckDB comes with it,
    and `fatebias simulate`, `fatebias run` (auto engine -> local, said in one line) and the notebook
    API on its folder all work there."""
    import torch

    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    # The torch build this environment has (the README installs it first: a CPU build), then the
    # project from its source tree with the core's dependencies only.
    _pip(env, f"torch=={torch.__version__.split('+')[0]}")
    # From a copy of what the package is built from: pip builds in the tree it is given (build/, *.egg-info).
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("fatebias_core", "fatebias_dagster"):
        shutil.copytree(ROOT / part, src / part, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    _pip(env, str(src))
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.yaml").write_text(yaml.safe_dump({**TINY_CHAIN, "run_diagnostics": False}))
    env_vars = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(env / "bin" / "python"), "-c", CORE_ONLY, ",".join(PLATFORM_MODULES), str(work)],
        capture_output=True, text=True, env=env_vars, cwd=work, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(LOCAL_FALLBACK) == 1, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["installed"] == []  # none of the platform came with the core
    assert facts["loaded"] == []  # and the run imported none of it, nor fatebias_dagster
    assert Path(facts["core_from"]).is_relative_to(env)  # the installed copy, not this checkout
    # Asking for the Dagster engine by name says what to install.
    assert 'pip install "fatebias[platform]"' in facts["named"], facts["named"]
    # The notebook API's ranking is the run folder's, gene for gene and value for value.
    hits = pd.read_csv(work / "results" / "hits_ranked.csv", float_precision="round_trip")
    assert facts["genes"] == list(hits["gene"]) and facts["hits"] == int(hits["hit_anyday"].sum()) > 0
    assert facts["postmean_d1"] == hits["postmean_d1"].tolist()
    # The local engine's record: the manifest lists every step it ran.
    manifest = json.loads((work / "results" / "fatebias_manifest.json").read_text())
    assert {"fit", "export", "mash", "rank", "report"} <= set(manifest["steps"])
    # The console script is installed too.
    cli = subprocess.run([str(env / "bin" / "fatebias"), "--help"], capture_output=True, text=True, env=env_vars, timeout=120)
    assert cli.returncode == 0 and "simulate" in cli.stdout
