"""Data versions: the same step versions as ``fatebias run``; a threshold edit reaches only ranking."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fatebias_core.config import load_config
from fatebias_core.pipeline.graph import input_version, step_versions
from fatebias_dagster.assets.sources import source_versions
from fatebias_dagster.resources import ComputeResource, ExperimentConfig, MashBackend
from fatebias_dagster.versions import settings_version
from fatebias_dagster.versions import step_versions as platform_step_versions


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
def test_device_changes_nothing_and_versions_match_core(tiny_experiment: Path) -> None:
    assert versions(tiny_experiment) == versions(tiny_experiment, device="cpu")
    cfg = load_config(tiny_experiment)
    assert platform_step_versions(cfg) == step_versions(cfg, input_version(cfg))
    assert versions(tiny_experiment)["experiment"] == input_version(cfg)
    assert versions(tiny_experiment)["settings/rank"] == settings_version(cfg, "rank")
