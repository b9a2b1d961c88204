"""The steps of the chain, what settings each depends on, and a run manifest.

Both ``fatebias run`` and the Dagster assets decide what is stale the same way: a
step's *version* is the hash of the settings it reads plus the versions of the steps it
reads from (and, for loading, the content hash of the input files). A step whose
version matches the manifest and whose outputs exist is not rerun; so changing only a
ranking threshold reruns ranking, not the fit.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from fatebias_core.config import GROUPS, FatebiasConfig
from fatebias_core.io import write_json

# The steps of ``fatebias run``, in order (loading is part of fitting there).
CHAIN = ("fit", "export", "mash", "aggregate", "rank", "diagnostics", "report")

# Bump a step's code version when its computation changes meaning.
CODE_VERSIONS = {
    "load": "2",
    "fit": "2",
    "export": "1",
    "mash": "2",
    "aggregate": "1",
    "rank": "1",
    "diagnostics": "2",
    "report": "2",
}

UPSTREAM = {
    "load": (),
    "fit": ("load",),
    "export": ("fit",),
    "mash": ("export",),
    "aggregate": ("mash",),
    "rank": ("mash", "aggregate", "export"),
    "diagnostics": ("load", "rank"),  # sanity checks and the permutation verdict read the ranked results
    "report": ("rank", "diagnostics"),
}

# Settings that never change results.
_COSMETIC = {"progress", "out_dir", "device", "checkpoint_every"}


def _group(name: str) -> list[str]:
    return [
        f for f, info in FatebiasConfig.model_fields.items()
        if (info.json_schema_extra or {}).get("group") == name and f not in _COSMETIC
    ]


def step_settings(step: str) -> list[str]:
    """Names of the configuration fields that ``step`` reads."""
    g = {name: _group(name) for name in GROUPS}
    table = {
        "load": g["inputs"],
        "fit": g["model"] + [f for f in g["inference"] if f != "num_posterior_draws"],
        "export": ["num_posterior_draws", "seed", *g["exports"]],
        "mash": [f for f in g["mash"]],
        "aggregate": g["calls"],
        "rank": g["calls"] + ["ash_lfsr_thresh", "ash_qvalue_thresh"],
        "diagnostics": g["model"] + g["inference"] + g["mash"] + g["calls"] + g["diagnostics"],
        "report": [],
    }
    return table[step]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content (first 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def input_version(config: FatebiasConfig) -> str:
    """Content hash of the experiment's input files (AnnData and guide map)."""
    parts = [file_hash(p) for p in (config.adata_path, config.guide_map_csv) if p]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def step_versions(config: FatebiasConfig, inputs: str) -> dict[str, str]:
    """The version of every step given the settings and the input files' version."""
    out: dict[str, str] = {}
    for step in UPSTREAM:  # insertion order is topological
        payload = {
            "code": CODE_VERSIONS[step],
            "settings": config.hash(step_settings(step)),
            "upstream": [out[u] for u in UPSTREAM[step]],
            "inputs": inputs if step == "load" else None,
        }
        out[step] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return out


@dataclass
class Manifest:
    """What each step of a run folder was made from (``fatebias_manifest.json``)."""

    path: Path
    steps: dict[str, dict]

    @classmethod
    def open(cls, out_dir: str | Path) -> Manifest:
        path = Path(out_dir) / "fatebias_manifest.json"
        steps = {}
        if path.exists():
            try:
                steps = json.loads(path.read_text()).get("steps", {})
            except (json.JSONDecodeError, AttributeError):
                steps = {}
        return cls(path, steps)

    def is_current(self, step: str, version: str) -> bool:
        """True when ``step`` was last made at ``version`` and all its outputs still exist."""
        rec = self.steps.get(step)
        return bool(rec and rec.get("version") == version and all(Path(p).exists() for p in rec.get("outputs", [])))

    def forget(self, steps: list[str] | tuple[str, ...]) -> list[str]:
        """Drop the records of ``steps`` (so they are remade on the next run); return those dropped."""
        dropped = [s for s in steps if self.steps.pop(s, None) is not None]
        if dropped:
            write_json({"steps": self.steps}, self.path)
        return dropped

    def record(self, step: str, version: str, outputs: list[str | Path], metrics: dict | None = None) -> None:
        """Record that ``step`` was made at ``version`` with ``outputs``, and save."""
        self.steps[step] = {
            "version": version,
            "outputs": [str(p) for p in outputs],
            "metrics": metrics or {},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json({"steps": self.steps}, self.path)
