"""fatebias_dagster: the fatebias chain as Dagster software-defined assets.

``dagster dev`` (workspace.yaml) and ``dagster asset materialize -m fatebias_dagster``
load :data:`defs`, a ``@dg.definitions`` function that Dagster calls when it loads the
code location (built from the environment: see :mod:`fatebias_dagster.definitions`);
``fatebias run``/``demo`` materialize the same assets in-process through
:func:`fatebias_dagster.engine.run_chain`.
"""

from .definitions import defs

__all__ = ["defs"]
