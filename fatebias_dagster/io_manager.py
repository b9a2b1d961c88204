"""The IO manager: the chain's in-memory values live in the run folder, beside its files.

The values handed between chain assets (``FilteredCells`` + ``LoadSummary``,
``GuideEmbedding``, ``FitResult``) are pickled to ``<run folder>/.dagster/<asset>.pkl``
(atomically), not into the Dagster instance's storage. A run folder is therefore
self-contained: materializing ``fitted_posterior`` alone works after ``fatebias run``,
after a restart of ``dagster dev`` with a temporary instance, or on another machine that
sees the same folder (Dask, Kubernetes).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import dagster as dg

from fatebias_core.errors import InputDataError
from fatebias_core.io import atomic_path

VALUES_DIR = ".dagster"


class RunFolderIOManager(dg.IOManager):
    """Pickles asset values into the run folder of the asset's partition."""

    def __init__(self, experiment: Any):
        self.experiment = experiment

    def _path(self, key: dg.AssetKey, partition: str | None) -> Path:
        out = self.experiment.run_folder(partition).out_dir
        return out / VALUES_DIR / ("__".join(key.path) + ".pkl")

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self._path(context.asset_key, partition)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
        context.add_output_metadata({"value": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Any:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        key = context.asset_key
        path = self._path(key, partition)
        if not path.exists():
            raise InputDataError(f"{key.to_user_string()} has no value in {path.parent}: materialize it first")
        with open(path, "rb") as fh:
            return pickle.load(fh)


@dg.io_manager(
    required_resource_keys={"experiment"},
    description="Keeps the chain's in-memory values (cells, guide embedding, fit) in the run folder.",
)
def run_folder_io_manager(init_context: dg.InitResourceContext) -> RunFolderIOManager:
    """The run-folder IO manager for the code location's experiment resource."""
    return RunFolderIOManager(init_context.resources.experiment)
