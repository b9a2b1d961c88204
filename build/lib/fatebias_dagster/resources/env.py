"""Resource fields set from the environment through ``dg.EnvVar``."""

from __future__ import annotations

import os
from typing import TypeVar

import dagster as dg

T = TypeVar("T")


def env_or(name: str, default: T) -> dg.EnvVar | T:
    """``dg.EnvVar(name)`` when the variable is set, else ``default``.

    Dagster resolves an ``EnvVar`` when the resource is initialised and shows the
    variable's name (not its value) in the UI; an unset one fails there, so a variable
    the user did not set leaves the field at its default.
    """
    return dg.EnvVar(name) if os.environ.get(name) else default


R = TypeVar("R", bound=dg.ConfigurableResource)


def resolved(resource: R) -> R:
    """A copy of ``resource`` with every ``EnvVar`` field (nested resources included) replaced by its value.

    For what is fixed when the definitions load (the demo's graph shape, a study's
    partitions): Dagster resolves ``EnvVar`` fields only when a run initialises the resource.
    """
    fields = {}
    for name in type(resource).model_fields:
        value = resource.__dict__[name]
        if isinstance(value, dg.EnvVar):
            value = value.get_value()
        elif isinstance(value, dg.ConfigurableResource):
            value = resolved(value)
        fields[name] = value
    return type(resource)(**fields)
