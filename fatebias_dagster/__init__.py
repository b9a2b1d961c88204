"""fatebias_dagster: the fatebias chain as Dagster software-defined assets.

``dagster dev`` (workspace.yaml) and ``dagster asset materialize -m fatebias_dagster``
load :data:`defs`, built from the environment on first access (see
:mod:`fatebias_dagster.definitions`); ``fatebias run``/``demo`` materialize the same
assets in-process through :func:`fatebias_dagster.engine.run_chain`. Importing a
submodule (the lineage store, the engine) does not build the definitions.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["defs"]


@functools.cache
def _definitions() -> Any:
    from .definitions import build_definitions

    return build_definitions()


def __getattr__(name: str) -> Any:
    if name == "defs":
        return _definitions()
    raise AttributeError(f"module 'fatebias_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    # Dagster finds Definitions with inspect.getmembers, which lists dir(module).
    return sorted({*globals(), "defs"})
