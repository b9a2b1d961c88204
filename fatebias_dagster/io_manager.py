"""The IO manager: the values handed between chain assets are rebuilt from the run folder.

Every step writes its own files (the fit its ``fit/variational_params.npz`` and
``fit/fit.json``); nothing else is stored. A value a later step takes is rebuilt from
those files by the step table's :attr:`~fatebias_core.pipeline.graph.Step.reload`: the
fit with :func:`~fatebias_core.model.fit_io.load_fit`, the cells and guide embedding
by loading the experiment's files again (validated, as the loading step does). A run
folder is therefore self-contained: materializing ``daywise_exports`` alone works after
``fatebias run``, after a restart of ``dagster dev``, or on another machine that sees
the same folder (Dask, Kubernetes).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from fatebias_core.errors import InputDataError
from fatebias_core.pipeline.graph import STEPS

from .resources import ChainSource
from .runner import Deferred, asset_values
from .versions import ASSET_STEP, watched_input_version

#: The last experiment loaded, by (settings, files) version: the cells and the guide
#: embedding of one step are two inputs read from the same files.
_LOADED: dict[tuple[str, str], Any] = {}


class RunFolderIOManager(dg.ConfigurableIOManager):
    """Rebuilds the chain's in-memory values (cells, guide embedding, fit) from the run folder."""

    experiment: ChainSource
    defer: bool = False
    """Hand the assets :class:`~fatebias_dagster.runner.Deferred` values (steps that run as Slurm jobs
    rebuild them there)."""

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """Nothing to store: the step wrote its files into the run folder."""

    def load_input(self, context: dg.InputContext) -> Any:
        """The value of the upstream asset, rebuilt from the files its step wrote."""
        partition = context.asset_partition_key if context.has_asset_partitions else None
        name = context.asset_key.path[-1]
        step = STEPS[ASSET_STEP[name]]
        if step.reload is None:
            raise InputDataError(f"{context.asset_key.to_user_string()} has no value to load")
        if self.defer:
            return Deferred(step.name)
        folder = self.experiment.run_folder(partition)
        try:
            value = self._reload(step.name, folder.config, folder.out_dir)
        except FileNotFoundError as exc:
            raise InputDataError(f"{context.asset_key.to_user_string()}: {exc}: materialize it first") from exc
        return asset_values(step.name, value)[name]

    @staticmethod
    def _reload(step: str, config: Any, out_dir: Any) -> Any:
        if step != "load":
            return STEPS[step].reload(config, out_dir)
        key = (config.hash(list(STEPS["load"].settings)), watched_input_version(config))
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = STEPS["load"].reload(config, out_dir)
        return _LOADED[key]
