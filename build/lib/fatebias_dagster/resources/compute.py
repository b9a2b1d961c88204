"""The compute resource: the torch device of the fit, the pipeline's one GPU-resourced step."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field

from fatebias_core.config import DEVICES
from fatebias_core.errors import ConfigError

from .env import env_or

DEVICE_ENV = "FATEBIAS_DEVICE"


class ComputeResource(dg.ConfigurableResource):
    """Where the fit runs: ``auto`` (cuda when torch sees a GPU), ``cpu`` or ``cuda``.

    Unset, the configuration's own ``device`` setting applies. The device never changes
    a step's version: moving a fit from CPU to GPU does not make anything stale.
    """

    device: str | None = Field(
        default=None,
        description=f"Torch device of the fit: {' | '.join(DEVICES)} ({DEVICE_ENV}). Unset: the configuration's device.",
    )

    @classmethod
    def from_env(cls) -> ComputeResource:
        """The resource with its device from ``FATEBIAS_DEVICE`` (a ``dg.EnvVar``) when set."""
        return cls(device=env_or(DEVICE_ENV, None))

    def overrides(self) -> dict[str, Any]:
        """Settings this resource imposes on the configuration."""
        if self.device is None:
            return {}
        if self.device not in DEVICES:
            raise ConfigError(f"compute resource: device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        return {"device": self.device}
