"""The mash backend resource: native (numpy/scipy) or R mashr through rpy2."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
from pydantic import Field

from fatebias_core.errors import ConfigError

BACKEND_ENV = "FATEBIAS_MASH_BACKEND"
BACKENDS = ("native", "r")


class MashBackend(dg.ConfigurableResource):
    """Which mash implementation the mash step uses.

    Unset, the configuration's ``mash_backend`` applies. The backend is part of the mash
    step's settings, so switching it makes mash and everything after it stale.
    """

    backend: str | None = Field(
        default=None,
        description="mash implementation: native | r (FATEBIAS_MASH_BACKEND). Unset: the configuration's mash_backend.",
    )

    @classmethod
    def from_env(cls) -> MashBackend:
        """The resource as the environment configures it."""
        return cls(backend=os.environ.get(BACKEND_ENV) or None)

    def overrides(self) -> dict[str, Any]:
        """Settings this resource imposes on the configuration."""
        if self.backend is None:
            return {}
        if self.backend not in BACKENDS:
            raise ConfigError(f"mash resource: backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        return {"mash_backend": self.backend}
