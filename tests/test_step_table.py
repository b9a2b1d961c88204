"""The step table: code versions follow the code, the graph is acyclic, imports have no cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fatebias_core.config import make_config
from fatebias_core.pipeline import graph
from fatebias_core.pipeline.graph import (
    CHAIN,
    STEPS,
    UPSTREAM,
    code_versions,
    downstream,
    step_versions,
)

ROOT = Path(__file__).parents[1]


@pytest.fixture
def edited(monkeypatch: pytest.MonkeyPatch) -> Iterator[callable]:
    """Edit a module's source text as the code versions read it (the files stay untouched)."""
    original = graph.read_source
    changed: set[str] = set()

    def read_source(module: str) -> str:
        text = original(module)
        return text + "\n# edited\n" if module in changed else text

    monkeypatch.setattr(graph, "read_source", read_source)
    code_versions.cache_clear()
    yield changed.add
    code_versions.cache_clear()


@pytest.mark.parametrize(
    ("module", "stale"),
    [
        ("fatebias_core.discovery.calls", {"aggregate", "rank", "diagnostics", "report"}),
        ("fatebias_core.mash.fit", {"mash", "aggregate", "rank", "diagnostics", "report"}),
        ("fatebias_core.model.fate_model", {"fit", "export", "mash", "aggregate", "rank", "diagnostics", "report"}),
        ("fatebias_core.report.build", {"report"}),
        # Figures and file names are presentation: only the report (a page, remade in
        # seconds) is remade for them, never a fit.
        ("fatebias_core.report.plots", {"report"}),
        ("fatebias_core.io.layout", {"report"}),
        # The Laplace step computes the fit; loading only validates with it (fatebias check).
        ("fatebias_core.model.laplace", {"fit", "export", "mash", "aggregate", "rank", "diagnostics", "report"}),
    ],
)
def test_editing_a_module_makes_its_steps_and_everything_downstream_stale(edited, module: str, stale: set[str]) -> None:
    config = make_config()
    before_code, before = dict(code_versions()), step_versions(config, "inputs")
    edited(module)
    code_versions.cache_clear()
    after_code, after = dict(code_versions()), step_versions(config, "inputs")
    assert {s for s in STEPS if after[s] != before[s]} == stale
    # The code versions themselves change only for steps that run the module.
    assert {s for s in STEPS if after_code[s] != before_code[s]} <= stale
    assert {s for s in STEPS if after_code[s] != before_code[s]}


def test_editing_orchestration_or_the_schema_changes_no_code_version(edited) -> None:
    """The step table, the CLI and the schema (its values are hashed on their own) are not step code."""
    before = dict(code_versions())
    for module in ("fatebias_core.pipeline.graph", "fatebias_core.cli", "fatebias_core.config"):
        edited(module)
    code_versions.cache_clear()
    assert code_versions() == before


def test_settings_reach_only_the_steps_that_read_them() -> None:
    base, edited_cfg = make_config(), make_config(mash_lfsr_thresh_day=0.01)
    a, b = step_versions(base, "i"), step_versions(edited_cfg, "i")
    assert {s for s in STEPS if a[s] != b[s]} == {"aggregate", "rank", "diagnostics", "report"}
    assert step_versions(base, "other inputs")["fit"] != a["fit"]  # new input files reach everything
    assert step_versions(make_config(device="cpu"), "i") == a  # the device changes nothing


def test_the_table_is_a_chain_in_topological_order() -> None:
    names = list(STEPS)
    for name, ups in UPSTREAM.items():
        assert all(names.index(u) < names.index(name) for u in ups), name
        assert set(STEPS[name].reads) <= set(ups)
    assert CHAIN == ("fit", "export", "mash", "aggregate", "rank", "diagnostics", "report")
    assert downstream("rank") == ["rank", "diagnostics", "report"]


def _module_imports(path: Path, package: str, modules: set[str]) -> set[str]:
    """Module-level imports of ``path`` within ``package`` (``from pkg import submodule``: the submodule)."""
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    name = name.removesuffix(".__init__")
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                base = f"{parent}.{base}" if base else parent
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            found |= subs if len(subs) == len(node.names) else {base, *subs}
    return {m for m in found if m.split(".")[0] == package}


@pytest.mark.parametrize("package", ["fatebias_core", "fatebias_dagster"])
def test_no_import_cycles(package: str) -> None:
    """The module-level import graph of each package has no cycle."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in (ROOT / package).rglob("*.py")}
    edges = {m: {d for d in _module_imports(p, package, set(files)) if d in files and d != m} for m, p in files.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in edges[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(d):], d]))
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in files:
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", ["fatebias_core.pipeline.steps", "fatebias_core.pipeline.graph", "fatebias_core.pipeline.chain"])
def test_each_pipeline_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
