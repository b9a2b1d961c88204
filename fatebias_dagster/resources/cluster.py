"""The cluster resource: where the steps' computations run.

Unset, every step computes in its asset's own process (the executor's). With a
``slurm:`` block (``FATEBIAS_EXECUTOR=slurm`` and ``FATEBIAS_SLURM``), each step's
computation is a Slurm job submitted through Dagster Pipes
(:class:`~fatebias_dagster.slurm.PipesSlurmClient`): the fit in the ``gpu`` pool when
``FATEBIAS_GPU_REQUEST=1``, everything else in the ``cpu`` pool. What the asset does
around the computation (its metadata, the manifest, the lineage, its checks) stays in the
asset's process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from pydantic import Field

from fatebias_core.errors import ConfigError

from ..executors import GPU_REQUEST_ENV, gpu_requested, slurm_file
from ..slurm import PipesSlurmClient, SlurmSettings, parse_slurm_block

#: The step that runs in the gpu pool when a GPU is requested.
GPU_STEP = "fit"


@functools.lru_cache(maxsize=8)
def _settings(path: str, mtime_ns: int) -> SlurmSettings:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"slurm cluster file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"slurm cluster file {path}: not valid YAML ({exc})") from None
    raw = raw.get("cluster", raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict) or set(raw) != {"slurm"}:
        raise ConfigError(f"slurm cluster file {path}: expected one mapping 'slurm: {{queue: ..., cores: ...}}'")
    try:
        return parse_slurm_block(raw["slurm"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_slurm_settings(path: str | Path) -> SlurmSettings:
    """The parsed ``slurm:`` block of a file (read again when the file changes)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"slurm cluster file not found: {p}")
    return _settings(str(p.resolve()), p.stat().st_mtime_ns)


class ClusterResource(dg.ConfigurableResource):
    """Where the steps compute: in the asset's process, or as Slurm jobs of a cpu and a gpu pool."""

    slurm: str | None = Field(
        default=None,
        description="YAML file with a slurm: block (FATEBIAS_SLURM with FATEBIAS_EXECUTOR=slurm): each step's "
        "computation is a Slurm job. Unset: steps compute in the executor's processes.",
    )
    gpu_request: bool = Field(
        default=False,
        description=f"The fit asks for a GPU ({GPU_REQUEST_ENV}=1): on Slurm it runs in the block's gpu pool.",
    )

    @classmethod
    def from_env(cls) -> ClusterResource:
        """The resource of this deployment; a bad block, or a GPU request without a gpu pool, fails here."""
        path = slurm_file()
        resource = cls(slurm=str(path) if path else None, gpu_request=gpu_requested())
        resource.check()
        return resource

    @property
    def remote(self) -> bool:
        """Whether steps run as Slurm jobs."""
        return self.slurm is not None

    def settings(self) -> SlurmSettings | None:
        """The parsed ``slurm:`` block (None: steps run here)."""
        return load_slurm_settings(self.slurm) if self.slurm else None

    def check(self) -> None:
        """Fail before any job when the fit asks for a GPU and the block has no gpu pool."""
        settings = self.settings()
        if settings is not None and self.gpu_request and "gpu" not in settings.pools:
            raise ConfigError(
                f"{GPU_REQUEST_ENV}=1 asks for the fit to run on a GPU, but the slurm cluster in {self.slurm} has no "
                "gpu: pool; add one (e.g. gpu: {queue: gpu, job_extra_directives: ['--gres=gpu:1']}) or unset "
                f"{GPU_REQUEST_ENV}"
            )

    def sends(self, step: str) -> bool:
        """Whether ``step`` computes in a Slurm job (the block's ``steps``), rather than here."""
        settings = self.settings()
        return settings is not None and settings.sends(step)

    def pool(self, step: str) -> str:
        """The pool of ``step``: ``gpu`` for the fit when a GPU is requested, else ``cpu``."""
        return "gpu" if self.gpu_request and step == GPU_STEP else "cpu"

    def call(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        *,
        step: str,
        workdir: Path,
        fn: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """``fn(*args, **kwargs)``: here, or in a Slurm job of ``step``'s pool (see the module).

        Parameters
        ----------
        context
            The asset's context.
        step
            The fatebias step the call computes (it chooses the pool).
        workdir
            The run folder (shared with the nodes): the job's task folder and logs go there.
        fn, args, kwargs
            The call: a module-level function and picklable arguments.
        """
        settings = self.settings()
        if settings is None or not settings.sends(step):
            return fn(*args, **(kwargs or {}))
        if settings.ignored:
            context.log.debug(f"slurm cluster: ignored keys of the Dask route: {', '.join(settings.ignored)}")
        return PipesSlurmClient(settings).call(
            context, pool=self.pool(step), label=context.op_def.name, workdir=workdir, fn=fn, args=args, kwargs=kwargs
        )
