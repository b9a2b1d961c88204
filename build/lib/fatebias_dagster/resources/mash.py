"""The mash backend resource: native (numpy/scipy) or R mashr through rpy2."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field

from fatebias_core.config import MASH_BACKENDS
from fatebias_core.errors import ConfigError

from .env import env_or

BACKEND_ENV = "FATEBIAS_MASH_BACKEND"


class MashBackend(dg.ConfigurableResource):
    """Which mash implementation the mash step uses.

    Unset, the configuration's ``mash_backend`` applies. The backend is part of the mash
    step's settings, so switching it makes mash and everything after it stale.
    """

    backend: str | None = Field(
        default=None,
        description=f"mash implementation: {' | '.join(MASH_BACKENDS)} ({BACKEND_ENV}). "
        "Unset: the configuration's mash_backend.",
    )

    @classmethod
    def from_env(cls) -> MashBackend:
        """The resource with its backend from ``FATEBIAS_MASH_BACKEND`` (a ``dg.EnvVar``) when set."""
        return cls(backend=env_or(BACKEND_ENV, None))

    def overrides(self) -> dict[str, Any]:
        """Settings this resource imposes on the configuration."""
        if self.backend is None:
            return {}
        if self.backend not in MASH_BACKENDS:
            raise ConfigError(f"mash resource: backend must be one of {', '.join(MASH_BACKENDS)}, got {self.backend!r}")
        return {"mash_backend": self.backend}
