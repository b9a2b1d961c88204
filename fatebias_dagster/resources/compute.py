"""The compute resource: the torch device of the fit, the pipeline's one GPU-resourced step."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
from pydantic import Field

from fatebias_core.errors import ConfigError

DEVICE_ENV = "FATEBIAS_DEVICE"
DEVICES = ("auto", "cpu", "cuda")


class ComputeResource(dg.ConfigurableResource):
    """Where the fit runs: ``auto`` (cuda when torch sees a GPU), ``cpu`` or ``cuda``.

    Unset, the configuration's own ``device`` setting applies. The device never changes
    a step's version: moving a fit from CPU to GPU does not make anything stale.
    """

    device: str | None = Field(
        default=None,
        description="Torch device of the fit: auto | cpu | cuda (FATEBIAS_DEVICE). Unset: the configuration's device.",
    )

    @classmethod
    def from_env(cls) -> ComputeResource:
        """The resource as the environment configures it."""
        return cls(device=os.environ.get(DEVICE_ENV) or None)

    def overrides(self) -> dict[str, Any]:
        """Settings this resource imposes on the configuration."""
        if self.device is None:
            return {}
        if self.device not in DEVICES:
            raise ConfigError(f"compute resource: device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        return {"device": self.device}
