"""fatebias_dagster: the fatebias chain as Dagster software-defined assets.

``dagster dev`` (workspace.yaml) and ``dagster asset materialize -m fatebias_dagster``
load :data:`defs`, a ``@dg.definitions`` function that Dagster calls when it loads the
code location (built from the environment: see :mod:`fatebias_dagster.definitions`);
``fatebias run``/``demo`` materialize the same assets in-process through
:func:`fatebias_dagster.engine.run_chain`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["defs"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that a step's Slurm job (fatebias_dagster.slurm.remote) starts
    # without Dagster and the chain's assets; Dagster finds ``defs`` through dir() and getattr.
    if name == "defs":
        from .definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])
