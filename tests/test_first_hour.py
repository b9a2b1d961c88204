"""What a new user meets first: the data check, dropping invalid cells, day order, the console answer."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fatebias_core import cli
from fatebias_core.discovery.answer import lfsr_text, shifted_probability

from .conftest import make_inputs


def _nan_rows(inputs, rows=(1, 4, 7)) -> None:
    p = inputs.adata.obsm["lineages_fwd"].to_numpy().copy()
    p[list(rows), 0] = np.nan
    inputs.adata.obsm["lineages_fwd"] = pd.DataFrame(p, columns=inputs.adata.obsm["lineages_fwd"].columns, index=inputs.adata.obs_names)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- fatebias check
def test_check_prints_the_load_summary_and_writes_nothing(tmp_path: Path, capsys) -> None:
    cfg = make_inputs(guide_layout="dense").write(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = _run(["check", "--config", str(cfg)], capsys)
    assert code == 0, err
    assert "cells: 48 in, " in out and "cells per day: d0 16, d1 16, d2 16" in out
    assert "data ok:" in out and "nothing was written" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out/ folder


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d, c: (d / "adata.h5ad").unlink(), "fatebias check: error: adata_path: file not found: "),
        (lambda d, c: (d / "guide_map.csv").unlink(), "fatebias check: error: guide_map_csv: file not found: "),
        (lambda d, c: pd.read_csv(d / "guide_map.csv").drop(columns="is_ntc").to_csv(d / "guide_map.csv", index=False),
         "missing column 'is_ntc'"),
        (lambda d, c: c.update(fates=["EC", "MES", "HEP"], ref_fate="EC", contrast_fate="MES"), "configured fates HEP not in"),
    ],
    ids=["no-adata", "no-guide-map", "map-without-is_ntc", "fates-mismatch"],
)
def test_check_fails_where_config_check_says_ok(tmp_path: Path, capsys, edit, message: str) -> None:
    cfg_path = make_inputs(guide_layout="dense").write(tmp_path)
    cfg = yaml.safe_load(cfg_path.read_text())
    edit(tmp_path, cfg)
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert _run(["config", "check", str(cfg_path)], capsys)[0] == 0  # the config alone is fine
    code, out, err = _run(["check", "--config", str(cfg_path)], capsys)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- dropping invalid cells
def test_invalid_cells_fail_naming_the_setting(tmp_path: Path, capsys) -> None:
    inputs = make_inputs(guide_layout="dense")
    _nan_rows(inputs)
    cfg = inputs.write(tmp_path)
    code, _, err = _run(["check", "--config", str(cfg)], capsys)
    assert code == 2
    assert "3 of 48 rows contain NaN or infinite values" in err and "drop_invalid_cells: true" in err


def test_drop_invalid_cells_counts_and_names_them(tmp_path: Path, capsys) -> None:
    from fatebias_core.config import load_config
    from fatebias_core.pipeline.steps import load_step

    inputs = make_inputs(guide_layout="dense")
    _nan_rows(inputs, rows=(1, 4))
    p = inputs.adata.obsm["lineages_fwd"].to_numpy().copy()
    p[10] = [0.9, 0.9, 0.9]  # off the simplex
    p[11] = [-0.5, 0.75, 0.75]  # negative
    inputs.adata.obsm["lineages_fwd"] = pd.DataFrame(p, columns=inputs.adata.obsm["lineages_fwd"].columns, index=inputs.adata.obs_names)
    inputs.adata.obs["day"] = inputs.adata.obs["day"].astype(object)
    inputs.adata.obs.iloc[20, inputs.adata.obs.columns.get_loc("day")] = np.nan
    cfg_path = inputs.write(tmp_path, drop_invalid_cells=True)
    code, out, err = _run(["check", "--config", str(cfg_path)], capsys)
    assert code == 0, err
    assert "48 in, 43 kept" in out
    assert "2 cells with fate probabilities NaN or infinite" in out
    assert "1 cells with fate probabilities do not sum to 1" in out
    assert "1 cells with fate probabilities negative" in out and "1 cells with no day label" in out

    cfg = load_config(cfg_path)
    exp = load_step(cfg, tmp_path / "out", verbose=False)
    dropped = pd.read_csv(tmp_path / "out" / "dropped_cells.csv")
    assert dict(zip(dropped["cell"], dropped["reason"], strict=True)) == {
        "c1": "fate probabilities NaN or infinite",
        "c4": "fate probabilities NaN or infinite",
        "c10": "fate probabilities do not sum to 1",
        "c11": "fate probabilities negative",
        "c20": "no day label",
    }
    assert exp.n_cells == 43 and not set(dropped["cell"]) & set(exp.cells.cell_names)
    assert np.isfinite(exp.cells.fate_probs).all()
    summary = exp.summary.to_dict()
    assert summary["dropped"]["cells with fate probabilities NaN or infinite"] == 2


def test_valid_data_gives_an_empty_dropped_cells_file(tmp_path: Path) -> None:
    from fatebias_core.config import load_config
    from fatebias_core.pipeline.steps import load_step

    cfg = load_config(make_inputs(guide_layout="dense").write(tmp_path, drop_invalid_cells=True))
    load_step(cfg, tmp_path / "out", verbose=False)
    dropped = pd.read_csv(tmp_path / "out" / "dropped_cells.csv")
    assert list(dropped.columns) == ["cell", "reason"] and dropped.empty


# --------------------------------------------------------------------------- day order
def _worded_days(inputs) -> None:
    inputs.adata.obs["day"] = inputs.adata.obs["day"].cat.rename_categories({"d0": "baseline", "d1": "day two", "d2": "late"})


def test_day_labels_without_numbers_need_day_order(tmp_path: Path, capsys) -> None:
    inputs = make_inputs(guide_layout="dense")
    _worded_days(inputs)
    cfg = inputs.write(tmp_path)
    code, _, err = _run(["check", "--config", str(cfg)], capsys)
    assert code == 2 and "has no number to order the days by; give the order with day_order: [" in err

    cfg = inputs.write(tmp_path, day_order=["baseline", "day two", "late"])
    code, out, err = _run(["check", "--config", str(cfg)], capsys)
    assert code == 0, err
    assert "cells per day: baseline 16, day two 16, late 16" in out

    cfg = inputs.write(tmp_path, day_order=["baseline", "late"])
    code, _, err = _run(["check", "--config", str(cfg)], capsys)
    assert code == 2 and "labels day two are not in day_order (baseline, late)" in err


def test_day_order_overrides_the_numbers_and_names_columns_by_position() -> None:
    from fatebias_core.config import make_config
    from fatebias_core.data.load import load_experiment
    from fatebias_core.model.posterior import day_suffixes

    inputs = make_inputs(guide_layout="dense")
    exp = load_experiment(make_config(day_order=["d2", "d0", "d1"]), verbose=False, adata=inputs.adata, guide_map=inputs.guide_map)
    assert exp.cells.day_labels == ("d2", "d0", "d1")
    assert day_suffixes(["d2", "d0", "d1"]) == ["d0", "d1", "d2"]
    assert day_suffixes(["d0", "d3", "d10"]) == ["d0", "d3", "d10"]
    assert day_suffixes(["baseline", "day 2"]) == ["d0", "d1"]


# --------------------------------------------------------------------------- plain terms
def test_lfsr_is_a_bound_where_it_underflows() -> None:
    assert lfsr_text(0.0) == "< 1e-300"
    assert lfsr_text(1e-320) == "< 1e-300"
    assert lfsr_text(2e-12) == "2.0e-12"
    assert lfsr_text(0.0312) == "0.031"


def test_probability_change_at_the_baseline() -> None:
    assert shifted_probability(0.5, 0.0) == pytest.approx(0.5)
    # p0 e^b / (1 - p0 + p0 e^b)
    assert shifted_probability(0.2, np.log(4.0)) == pytest.approx(0.2 * 4 / (0.8 + 0.2 * 4))
    assert shifted_probability(0.3, -1.0) < 0.3


@pytest.mark.slow
def test_check_is_fast_at_200k_cells(tmp_path: Path, capsys) -> None:
    """``fatebias check`` on a 200,000-cell, 2,000-guide file with lineage barcodes takes well under 10 s.

    (Clones inferred from guide sets instead cost more at this size: docs/method.md, "Clones".)
    """
    import anndata as ad
    import scipy.sparse as sp

    n, n_guides, k = 200_000, 2000, 20
    rng = np.random.default_rng(0)
    cols = rng.integers(0, n_guides, size=(n, k))
    rows = np.repeat(np.arange(n), k)
    guides = sp.csr_matrix((np.ones(n * k, dtype=np.float32), (rows, cols.ravel())), shape=(n, n_guides))
    names = np.asarray([f"g{j}" for j in range(n_guides)], dtype=object)
    probs = rng.dirichlet(np.ones(3), size=n)
    obs = pd.DataFrame({"day": pd.Categorical(np.asarray(["d0", "d1", "d2", "d3"])[rng.integers(0, 4, n)]),
                        "replicate": pd.Categorical(np.asarray(["r1", "r2"])[rng.integers(0, 2, n)]),
                        "clone": rng.integers(0, 25_000, n).astype(str)},
                       index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(obs=obs, obsm={"lineages_fwd": probs, "guide_assignment": guides},
                   uns={"lineages_fwd_names": np.asarray(["EC", "MES", "NEU"], dtype=object), "guide_assignment_names": names})
    a.write_h5ad(tmp_path / "adata.h5ad")
    pd.DataFrame({"guide_name": names, "gene_name": [f"G{j // 7}" for j in range(n_guides)], "is_ntc": 0}).to_csv(
        tmp_path / "guide_map.csv", index=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "adata_path": "adata.h5ad", "guide_map_csv": "guide_map.csv", "posterior_method": "meanfield"}))
    t0, c0 = time.perf_counter(), time.process_time()
    code, out, err = _run(["check", "--config", str(tmp_path / "config.yaml")], capsys)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert code == 0, err
    assert "200000 in" in out
    # The CPU time is what the check costs (about 3 s on one core); the wall clock also counts
    # whatever else shares the machine, so it only gets a generous bound.
    assert cpu < 10, cpu
    assert wall < 60, wall


def test_no_library_chatter_on_the_console(tmp_path: Path) -> None:
    """A first ``fatebias report`` (matplotlib builds its font cache) prints our lines only: no
    ``generated new fontManager``, no DEBUG lines."""
    import os
    import subprocess
    import sys

    from .test_report import make_run_folder

    out = tmp_path / "results"
    make_run_folder(out)
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}  # an empty cache: matplotlib rebuilds it
    proc = subprocess.run([sys.executable, "-m", "fatebias_core.cli", "report", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mpl").exists()  # the cache was built in this run
    assert "fontManager" not in proc.stderr + proc.stdout and "DEBUG" not in proc.stderr
    assert proc.stdout.startswith("wrote ") and proc.stderr == ""
