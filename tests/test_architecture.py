"""The package layering of docs/architecture.md: imports point down the layers (cycles: tests/test_step_table.py)."""

from __future__ import annotations

from pathlib import Path

import fatebias_core
from fatebias_core.pipeline.graph import module_imports

ROOT = Path(fatebias_core.__file__).parent

# Bottom first; a module may import from its own layer and the ones before it.
LAYERS = [
    {"errors", "config", "types", "hashing"},
    {"io"},
    {"data"},
    {"model", "mash"},
    {"discovery"},
    {"checks"},
    {"report"},
    {"pipeline"},
    {"studies"},
    {"api", "tl", "pl", "cli", "__init__", "__main__"},
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """Each module's fatebias_core imports, anywhere in it (absolute or relative): the code versions' import walker."""
    return {name: module_imports(name) - {name} for name in map(_module_name, ROOT.rglob("*.py"))}


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def test_imports_point_down_the_layers() -> None:
    wrong = [
        f"{mod} (layer {_layer(mod)}) imports {dep} (layer {_layer(dep)})"
        for mod, deps in _graph().items()
        for dep in deps
        if dep != "fatebias_core" and _layer(dep) > _layer(mod)
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_typed_objects_live_in_types_and_keep_their_old_imports() -> None:
    """DiagnosticsResult is defined in fatebias_core.types; its old import path still works."""
    from fatebias_core import types
    from fatebias_core.checks.diagnostics import DiagnosticsResult

    assert DiagnosticsResult is types.DiagnosticsResult is fatebias_core.DiagnosticsResult
    assert DiagnosticsResult.__module__ == "fatebias_core.types"
