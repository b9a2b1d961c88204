"""Sweeps: spec validation, run expansion, the results table and figure, one tiny real sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from fatebias_core import cli
from fatebias_core.config import make_config
from fatebias_core.errors import ConfigError, InputDataError
from fatebias_core.studies import sweep
from fatebias_core.studies.sweep import PRESETS, SweepSpec, load_spec, preset, run_sweep

from .conftest import TINY_CHAIN as TINY


def test_spec_grid_scenarios_and_runs() -> None:
    spec = SweepSpec.from_dict(
        {
            "name": "t",
            "seeds": [3, 7],
            "s_tau": [0.5, 2.0],
            "sim_concentration": [10.0],
            "num_steps": 99,
            "scenarios": {"easy": {}, "hard": {"sim_effect_min": 0.2, "sim_effect_max": 0.3}},
        }
    )
    assert spec.grid == {"s_tau": [0.5, 2.0], "sim_concentration": [10.0]}
    assert spec.fixed == {"num_steps": 99} and spec.seeds == (3, 7)
    assert spec.varied == ["s_tau", "scenario"]  # one-value axes do not vary
    runs = spec.runs()
    assert len(runs) == 2 * 2 * 2 and [r.run_id for r in runs[:2]] == ["run_000", "run_001"]
    assert [(r.scenario, r.values["s_tau"], r.seed) for r in runs[:4]] == [
        ("easy", 0.5, 3), ("easy", 0.5, 7), ("easy", 2.0, 3), ("easy", 2.0, 7)
    ]
    assert runs[-1].settings(spec) == {
        "num_steps": 99, "sim_effect_min": 0.2, "sim_effect_max": 0.3, "s_tau": 2.0, "sim_concentration": 10.0, "sim_seed": 7
    }
    configs = spec.configs(make_config(lr=0.01))
    run, cfg = configs[-1]
    assert (cfg.s_tau, cfg.sim_seed, cfg.sim_effect_min, cfg.num_steps, cfg.lr) == (2.0, 7, 0.2, 99, 0.01)
    assert cfg.run_diagnostics is False
    assert SweepSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"s_tua": [1.0]}, "unknown setting 's_tua' (did you mean 's_tau'?)"),
        ({"seed": [0], "scenarios": {"x": {"sim_concentraton": 5}}}, "scenario 'x': unknown setting 'sim_concentraton'"),
        ({"sim_seed": [0, 1]}, "'sim_seed' cannot be swept (list simulation seeds under 'seeds')"),
        ({"out_dir": ["a"]}, "'out_dir' cannot be swept"),
        ({"s_tau": []}, "setting 's_tau' has an empty list of values"),
        ({"seeds": [0, "one"]}, "'seeds' must be a non-empty list of integers"),
        ({"seeds": [1, 1]}, "'seeds' lists a seed twice"),
        ({"s_tau": [1.0], "scenarios": {"a": {"s_tau": 2.0}}}, "'s_tau' is both a grid axis and set by a scenario"),
        ({"scenarios": ["a"]}, "'scenarios' must map a scenario name"),
        (["s_tau"], "expected a mapping"),
    ],
)
def test_spec_errors(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        SweepSpec.from_dict(data, source="spec.yaml")
    assert message in str(exc.value) and str(exc.value).startswith("spec.yaml")
    assert "\n" not in str(exc.value)


def test_invalid_value_names_run_and_key() -> None:
    spec = SweepSpec.from_dict({"name": "v", "s_tau": [1.0, -1.0]})
    with pytest.raises(ConfigError, match=r"sweep 'v', run_001: key 's_tau'"):
        spec.configs(make_config())


def test_presets_and_cli_choices() -> None:
    for name in PRESETS:
        spec = preset(name)
        assert spec.name == name and spec.configs(make_config())
    assert preset("prior").varied == ["s_tau", "s_guide"] and len(preset("prior").runs()) == 9
    no_effects = dict(preset("stress").runs()[-1].settings(preset("stress")))
    assert no_effects["sim_active_frac"] == 0.0
    with pytest.raises(ConfigError, match="unknown sweep preset 'big'"):
        preset("big")
    sub = next(a for a in cli.build_parser()._subparsers._group_actions if a.dest == "command")
    choices = next(a.choices for a in sub.choices["sweep"]._actions if a.dest == "preset")
    assert list(choices) == list(PRESETS)


def test_load_spec(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("seeds: [0, 1]\ns_guide: [0.1, 0.5]\n")
    assert load_spec(path).grid == {"s_guide": [0.1, 0.5]}
    path.write_text("s_guide: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_spec(path)
    with pytest.raises(ConfigError, match="sweep spec not found"):
        load_spec(tmp_path / "missing.yaml")


def test_run_sweep_table_errors_and_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run_one(run, config, run_dir):  # scores that depend on the run's settings
        calls.append((run.run_id, config.s_tau, config.sim_seed, Path(run_dir).name))
        if config.s_tau == 3.0 and config.sim_seed == 1:
            raise InputDataError("simulated failure")
        return {"daywise_precision": 1 / config.s_tau, "daywise_recall": 0.5, "anyday_recall": 0.25 * config.sim_seed, "runtime_s": 0.1}

    monkeypatch.setattr(sweep, "run_one", fake_run_one)
    result = run_sweep({"name": "fake", "seeds": [0, 1], "s_tau": [1.0, 3.0]}, tmp_path)
    assert calls[0] == ("run_000", 1.0, 0, "run_000") and len(calls) == 4
    t = pd.read_csv(tmp_path / "sweep_results.csv")
    assert t["run_id"].tolist() == ["run_000", "run_001", "run_002", "run_003"]
    assert t["s_tau"].tolist() == [1.0, 1.0, 3.0, 3.0] and t["seed"].tolist() == [0, 1, 0, 1]
    assert t["daywise_precision"].iloc[:3].tolist() == pytest.approx([1.0, 1.0, 1 / 3])
    assert t["error"].iloc[3] == "simulated failure" and pd.isna(t["daywise_precision"].iloc[3])
    assert result.n_failed == 1 and "run_003 failed: simulated failure" in result.describe()
    assert (tmp_path / "sweep_results.png").stat().st_size > 5000
    assert yaml.safe_load((tmp_path / "sweep_spec.yaml").read_text())["s_tau"] == [1.0, 3.0]


def test_invalid_sweep_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        run_sweep({"s_tau": [1.0, 0.0]}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path: Path) -> None:
    spec = {"name": "tiny", "seeds": [0], "s_tau": [2.0]}  # one run: the grid logic is tested above
    result = run_sweep(spec, tmp_path, make_config(**TINY))
    t = result.table
    assert len(t) == 1 and t["error"].isna().all() and t["s_tau"].tolist() == [2.0]
    # The scores, recounted here from the run's own hit list and simulated truth.
    run = tmp_path / "runs" / "run_000"
    hits = pd.read_csv(run / "results" / "hits_ranked.csv", dtype={"gene": str, "active_days": str})
    truth = pd.read_csv(run / "truth_daywise.csv", dtype={"gene": str}).set_index("gene")
    true = truth.abs() > 0.2
    called = pd.DataFrame(False, index=truth.index, columns=truth.columns)
    for gene, days in zip(hits["gene"], hits["active_days"].fillna(""), strict=True):
        for d in filter(None, days.split(",")):
            called.loc[gene, f"true_d{int(float(d))}"] = True
    tp = int((called & true).to_numpy().sum())
    assert t["daywise_recall"].item() == pytest.approx(tp / true.to_numpy().sum())
    if called.to_numpy().any():
        assert t["daywise_precision"].item() == pytest.approx(tp / called.to_numpy().sum())
    any_true = set(truth.index[true.any(axis=1)])
    any_hit = set(hits.loc[hits["hit_anyday"].astype(str).str.lower() == "true", "gene"])
    assert t["anyday_recall"].item() == pytest.approx(len(any_true & any_hit) / len(any_true))
    assert (t["n_true_active_genes"] == 3).all() and (t["fit_steps"] == 0).all()  # the default Laplace fit takes no SVI steps
    assert (t["runtime_s"] > 0).all() and not t["reused_fit"].any()
    assert (tmp_path / "runs" / "run_000" / "results" / "hits_ranked.csv").exists()
    again = run_sweep(spec, tmp_path, make_config(**TINY))  # same settings: every step reused
    assert again.table["reused_fit"].all()
    assert again.table["daywise_recall"].tolist() == t["daywise_recall"].tolist()
