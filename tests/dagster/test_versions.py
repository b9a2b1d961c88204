"""Data and code versions: a threshold edit reaches only calling; an edited module reaches its steps' assets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from fatebias_core.pipeline import graph
from fatebias_dagster.assets.sources import source_versions
from fatebias_dagster.definitions import build_definitions
from fatebias_dagster.resources import ComputeResource, ExperimentConfig, MashBackend


def versions(path: Path, **compute) -> dict[str, str]:
    exp = ExperimentConfig(config_path=str(path))
    return {k.to_user_string(): v.version for k, v in source_versions(exp, ComputeResource(**compute), MashBackend()).items()}


def edit(path: Path, **settings) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(settings)
    path.write_text(yaml.safe_dump(data))


@pytest.mark.usefixtures("clean_env")
def test_threshold_edit_changes_only_calling_settings(tiny_experiment: Path, tmp_path: Path) -> None:
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(tiny_experiment.read_text().replace("adata.h5ad", str(tiny_experiment.parent / "adata.h5ad"))
                        .replace("guide_map.csv", str(tiny_experiment.parent / "guide_map.csv")))
    before = versions(cfg_path)
    assert set(before) == {"experiment", *(f"settings/{s}" for s in
                           ("load", "fit", "export", "mash", "aggregate", "rank", "diagnostics"))}
    edit(cfg_path, mash_lfsr_thresh_day=0.01)
    after = versions(cfg_path)
    changed = {k for k in before if before[k] != after[k]}
    # aggregation calls the days of the aggregated genes with the same thresholds
    assert changed == {"settings/aggregate", "settings/rank", "settings/diagnostics"}
    edit(cfg_path, num_steps=151)
    assert {k for k in after if after[k] != versions(cfg_path)[k]} == {"settings/fit", "settings/diagnostics"}


@pytest.mark.usefixtures("clean_env")
def test_device_changes_nothing_and_experiment_version_is_the_files_content(tiny_experiment: Path) -> None:
    assert versions(tiny_experiment) == versions(tiny_experiment, device="cpu")
    parts = [hashlib.sha256((tiny_experiment.parent / n).read_bytes()).hexdigest()[:16] for n in ("adata.h5ad", "guide_map.csv")]
    assert versions(tiny_experiment)["experiment"] == hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@pytest.mark.usefixtures("clean_env")
def test_edited_module_changes_the_code_version_of_its_assets(tiny_experiment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster sees a new code version on the assets of the steps that run an edited module, and
    only there (the data versions downstream follow, as the step table's test shows)."""

    def code(defs) -> dict[str, str]:
        return {n.key.to_user_string(): n.code_version for n in defs.resolve_asset_graph().asset_nodes if n.is_materializable}

    exp = ExperimentConfig(config_path=str(tiny_experiment))
    graph.code_versions.cache_clear()
    before = code(build_definitions(exp))
    original = graph.read_source
    monkeypatch.setattr(graph, "read_source", lambda m: original(m) + ("\n# edited" if m == "fatebias_core.mash.fit" else ""))
    graph.code_versions.cache_clear()
    try:
        after = code(build_definitions(exp))
    finally:
        graph.code_versions.cache_clear()
    assert {k for k in before if before[k] != after[k]} == {"mash_outputs"}
