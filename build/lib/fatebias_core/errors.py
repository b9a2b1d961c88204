"""User-facing errors.

Every problem with a user's input (a file, a key, a column, a setting) is raised as a
:class:`FatebiasError` whose message is one line that names what is at fault. The
command line prints that line and exits non-zero, without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class FatebiasError(Exception):
    """A problem with the user's input or settings, stated in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(FatebiasError):
    """An invalid configuration file or setting."""


class InputDataError(FatebiasError):
    """An invalid input data file (AnnData, guide map, effect table)."""


class FitError(FatebiasError):
    """The fit failed (diverged, NaN ELBO, corrupt checkpoint)."""


def listing(items: Iterable[Any], limit: int = 12) -> str:
    """``a, b, c ... (+n more)``: a few of ``items`` for a one-line error message."""
    items = [str(i) for i in items]
    if not items:
        return "(none)"
    shown = ", ".join(items[:limit])
    return shown + (f" ... (+{len(items) - limit} more)" if len(items) > limit else "")
