"""Read-only access to the parts of an AnnData that loading needs, in memory or element-wise from an ``.h5ad``.

An ``.h5ad`` (or the RNA modality of an ``.h5mu``) is read element by element: the fate
probabilities, the guide matrix, the obs labels and a few ``uns`` entries; never ``X``
or the layers.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.data.guide_sources import (
    rna_group,
    rna_of,
)
from fatebias_core.errors import ConfigError, InputDataError, listing

try:  # anndata >= 0.11
    from anndata.io import read_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem


class AnnDataSource(ABC):
    """Read-only access to the parts of an AnnData that loading needs."""

    source: str
    n_obs: int

    @abstractmethod
    def obs_names(self) -> np.ndarray: ...

    @abstractmethod
    def obs_keys(self) -> list[str]: ...

    @abstractmethod
    def obs(self, key: str) -> pd.Series: ...

    @abstractmethod
    def obsm_keys(self) -> list[str]: ...

    @abstractmethod
    def obsm(self, key: str) -> Any: ...

    @abstractmethod
    def obsm_column(self, key: str, column: str) -> pd.Series | None:
        """Column ``column`` of an obsm DataFrame, or None where there is none."""

    @abstractmethod
    def uns(self, key: str) -> Any | None: ...

    # shared helpers
    def require_obs(self, key: str, setting: str) -> pd.Series:
        if key not in self.obs_keys():
            raise InputDataError(
                f"{self.source}: obs column {key!r} ({setting}) not found; "
                f"available obs columns: {listing(self.obs_keys())}"
            )
        return self.obs(key)

    def require_obsm(self, key: str, setting: str) -> Any:
        if key not in self.obsm_keys():
            raise InputDataError(
                f"{self.source}: obsm key {key!r} ({setting}) not found; "
                f"available obsm keys: {listing(self.obsm_keys())}"
            )
        return self.obsm(key)


class MemorySource(AnnDataSource):
    def __init__(self, adata: Any):
        self.adata = adata
        self.source = "AnnData (in memory)"
        self.n_obs = int(adata.n_obs)

    def obs_names(self) -> np.ndarray:
        return np.asarray(self.adata.obs_names, dtype=object)

    def obs_keys(self) -> list[str]:
        return [str(c) for c in self.adata.obs.columns]

    def obs(self, key: str) -> pd.Series:
        return self.adata.obs[key]

    def obsm_keys(self) -> list[str]:
        return [str(k) for k in self.adata.obsm.keys()]

    def obsm(self, key: str) -> Any:
        return self.adata.obsm[key]

    def obsm_column(self, key: str, column: str) -> pd.Series | None:
        value = self.adata.obsm.get(key)
        if isinstance(value, pd.DataFrame) and column in value.columns:
            return value[column]
        return None

    def uns(self, key: str) -> Any | None:
        return self.adata.uns.get(key)


class H5adSource(AnnDataSource):
    """Element-wise reads from an open ``.h5ad``: X and layers are never touched."""

    def __init__(self, path: Path, h5: Any):
        self.source = str(path)
        self.h5 = h5
        obs = h5["obs"]
        self._obs = obs
        self._index_key = obs.attrs.get("_index", "_index")
        self.n_obs = int(obs[self._index_key].shape[0])

    def _read(self, elem: Any, what: str) -> Any:
        try:
            return read_elem(elem)
        except Exception as exc:  # any decoding failure means a bad file
            raise InputDataError(f"{self.source}: could not read {what}: {exc}") from None

    def obs_names(self) -> np.ndarray:
        return np.asarray(self._read(self._obs[self._index_key], "obs names"), dtype=object)

    def obs_keys(self) -> list[str]:
        order = self._obs.attrs.get("column-order")
        if order is None:
            return [k for k in self._obs.keys() if k != self._index_key and k != "__categories"]
        return [str(c) for c in np.atleast_1d(order)]

    def obs(self, key: str) -> pd.Series:
        values = self._read(self._obs[key], f"obs[{key!r}]")
        return pd.Series(values, name=key)

    def obsm_keys(self) -> list[str]:
        return list(self.h5["obsm"].keys()) if "obsm" in self.h5 else []

    def obsm(self, key: str) -> Any:
        return self._read(self.h5["obsm"][key], f"obsm[{key!r}]")

    def obsm_column(self, key: str, column: str) -> pd.Series | None:
        if key not in self.obsm_keys():
            return None
        group = self.h5["obsm"][key]
        if group.attrs.get("encoding-type") != "dataframe":
            return None
        columns = [str(c) for c in np.atleast_1d(group.attrs.get("column-order", []))]
        if column not in columns:
            return None
        return pd.Series(self._read(group[column], f"obsm[{key!r}][{column!r}]"), name=column)

    def uns(self, key: str) -> Any | None:
        if "uns" not in self.h5 or key not in self.h5["uns"]:
            return None
        return self._read(self.h5["uns"][key], f"uns[{key!r}]")


@contextlib.contextmanager
def open_source(config: FatebiasConfig, adata: Any | None) -> Iterator[AnnDataSource]:
    if adata is not None:
        yield MemorySource(rna_of(adata, config))
        return
    if config.adata_path is None:
        raise ConfigError("adata_path is not set: name the .h5ad file in the configuration")
    path = Path(config.adata_path)
    if not path.exists():
        raise InputDataError(f"adata_path: file not found: {path}")
    if path.is_dir():
        raise InputDataError(f"adata_path is a folder, not an .h5ad file: {path}")
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError:
        raise InputDataError(f"{path}: not an HDF5/.h5ad file (adata_path)") from None
    try:
        root, name = rna_group(h5, path, config)  # an .h5mu: its rna_modality
        if "obs" not in root:
            raise InputDataError(f"{path}: no obs group; is this an AnnData .h5ad file?")
        src = H5adSource(path, root)
        src.source = name
        yield src
    finally:
        h5.close()
