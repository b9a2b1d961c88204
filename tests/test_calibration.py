"""The calibration study: its metrics on hand-made cases, and one tiny end-to-end cell."""

from __future__ import annotations

import numpy as np
import pytest

from fatebias_core.config import make_config
from fatebias_core.errors import ConfigError
from fatebias_core.studies.calibration import (
    SCENARIOS,
    calibration_markdown,
    calibration_run,
    call_rows,
    coverage_rows,
    scenario_config,
    summarise_calibration,
    write_calibration,
)

from .conftest import TINY_FIT, TINY_SIM


def test_coverage_by_truth_group():
    truth = np.array([[0.0, 0.5], [-0.4, 0.0]])
    lower = {0.9: np.array([[-0.1, 0.6], [-0.5, -0.1]])}
    upper = {0.9: np.array([[0.1, 0.7], [-0.3, 0.1]])}
    rows = {r["group"]: r for r in coverage_rows(lower, upper, truth, 0.2)}
    assert rows["all"]["value"] == 0.75 and rows["all"]["n"] == 4
    assert rows["effects"]["value"] == 0.5 and rows["nulls"]["value"] == 1.0


def test_false_signs_count_zero_truths_and_wrong_signs():
    truth = np.array([0.0, 0.5, -0.5, 0.5, 0.0])
    postmean = np.array([0.3, 0.4, 0.3, 0.2, -0.1])
    lfsr = np.array([0.01, 0.01, 0.01, 0.5, 0.5])
    rows = {(r["metric"], r["level"]): r for r in call_rows(postmean, lfsr, truth, 0.2)}
    assert rows[("fsr", 0.05)]["value"] == pytest.approx(2 / 3) and rows[("fsr", 0.05)]["n"] == 3
    assert rows[("null_called", 0.05)]["value"] == 0.5
    assert rows[("power", 0.05)]["value"] == pytest.approx(1 / 3)


def test_unknown_scenario_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown calibration scenario"):
        scenario_config(make_config(), "nope", 0)
    assert "no_effects" in SCENARIOS


def test_one_tiny_cell_end_to_end(tmp_path):
    base = make_config(**{**TINY_SIM, "sim_n_cells": 2000}, **{**TINY_FIT, "num_steps": 200, "bootstrap_replicates": 20})
    df = calibration_run("baseline", 1, base, methods=("meanfield", "laplace", "bootstrap"))
    assert set(df["method"]) == {"meanfield", "laplace", "bootstrap"}
    assert {"model", "mash:plain_se:conservative", "mash:se_inflated:enriched"} <= set(df["source"])
    cov = df[(df["source"] == "model") & (df["metric"] == "coverage") & (df["group"] == "all")]
    # Nested intervals: for every method and group, coverage cannot fall as the level rises.
    for _, g in cov.groupby(["method", "group"]):
        by_level = g.sort_values("level")["value"].to_numpy()
        assert (np.diff(by_level) >= 0).all(), by_level
    assert (cov.groupby("level")["n"].nunique() == 1).all()  # every method scores the same gene/days
    lap90 = cov[(cov["method"] == "laplace") & (cov["level"] == 0.9)]["value"].item()
    assert lap90 >= 0.7
    res = write_calibration(df, tmp_path)
    assert {p.name for p in res.paths.values()} >= {"calibration_results.csv", "calibration_tables.md", "calibration_coverage.png"}
    assert "false sign rate" in calibration_markdown(summarise_calibration(df))
