"""The notebook API: fit, tidy tables, plots on your own Axes, the run folder, all from memory.

>>> import fatebias_core.api as fb                                   # doctest: +SKIP
>>> fb.FateBias.setup_anndata(adata, guide_map=guide_map, day_key="day")   # doctest: +SKIP
>>> model = fb.FateBias(adata, num_steps=2000).train()                    # doctest: +SKIP
>>> model.get_hits()                                                 # doctest: +SKIP
>>> fb.pl.volcano(model, day="d1", ax=ax)                            # doctest: +SKIP
>>> model.write("results")                                           # doctest: +SKIP

See ``docs/api.md`` for the whole API and why it has this shape.
"""

from fatebias_core.api import pl
from fatebias_core.api.model import SETUP_KEYS, FateBias
from fatebias_core.api.uns import UNS_KEY, stored_tables

__all__ = ["SETUP_KEYS", "UNS_KEY", "FateBias", "pl", "stored_tables"]


def __dir__() -> list[str]:
    """Only the public API (not the submodules ``model`` and ``uns``)."""
    return sorted(__all__)
