"""The notebook API: the same tables and files as ``fatebias run``, results in the AnnData, plots on Axes."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.axes import Axes

import fatebias_core.api as fb
from fatebias_core.api import FateBias, pl, stored_tables
from fatebias_core.config import make_config
from fatebias_core.data.load import load_experiment
from fatebias_core.data.simulate import simulate_experiment
from fatebias_core.errors import ConfigError, InputDataError
from fatebias_core.pipeline.chain import run_chain
from tests.conftest import TINY_CHAIN

#: Files of a run folder that differ by design between two writes of the same results.
NOT_COMPARED = {"fatebias_manifest.json", "fit/checkpoint.pt"}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A tiny simulation and the run folder ``fatebias run`` makes of it (up to ranking)."""
    out = tmp_path_factory.mktemp("api") / "cli"
    cfg = make_config(**TINY_CHAIN, run_diagnostics=False, out_dir=str(out))
    sim = simulate_experiment(cfg)
    experiment = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    run_chain(cfg, until="rank", experiment=experiment)
    return sim, out


def _registered(sim):
    """A copy of the simulated AnnData with its guide map registered by setup_anndata."""
    adata = sim.adata.copy()
    FateBias.setup_anndata(adata, guide_map=sim.guide_map)
    return adata


@pytest.fixture(scope="module")
def model(cli_run):
    sim, out = cli_run
    return FateBias.load(out, _registered(sim))


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - NOT_COMPARED


def _as_written(df: pd.DataFrame) -> pd.DataFrame:
    """A table as its CSV file reads back."""
    return pd.read_csv(io.StringIO(df.to_csv(index=False)), float_precision="round_trip")


def test_write_gives_the_run_folder_of_fatebias_run(cli_run, model, tmp_path):
    """model.write() writes the files `fatebias run` writes for the steps up to ranking, byte for byte.

    Only ``config_used.yaml`` differs (its ``out_dir``), and the ELBO trace by the last
    digit (``load_fit`` parses it with pandas' default float converter).
    """
    _, cli = cli_run
    api = model.write(tmp_path / "api")
    assert _files(api) == _files(cli)
    for name in sorted(_files(cli) - {"config_used.yaml", "fit/elbo_trace.csv"}):
        assert (cli / name).read_bytes() == (api / name).read_bytes(), name
    ya, yb = (yaml.safe_load((folder / "config_used.yaml").read_text()) for folder in (cli, api))
    assert {k: v for k, v in ya.items() if k != "out_dir"} == {k: v for k, v in yb.items() if k != "out_dir"}
    assert yb["out_dir"] == str(api)
    pd.testing.assert_frame_equal(pd.read_csv(cli / "fit/elbo_trace.csv"), pd.read_csv(api / "fit/elbo_trace.csv"))
    assert int(pd.read_csv(api / "hits_ranked.csv")["hit_anyday"].sum()) > 0


def test_tables_are_the_files(cli_run, model):
    """Each get_* table is the run folder's file of the same name, columns and values."""
    _, cli = cli_run
    pairs = {
        "gene_daywise_for_mash.csv": model.get_gene_effects(),
        "guide_daywise_for_mash.csv": model.get_guide_effects(),
        "gene_summary_for_ash.csv": model.get_across_day_summary(),
        "mash_gene_conservative.csv": model.get_mash("gene", "conservative"),
        "mash_guide_enriched_NEU.csv": model.get_mash("guide", "enriched", fate="NEU"),
        "ash_gene_summary.csv": model.get_ash(),
        "gene_from_guide_mash_conservative.csv": model.get_gene_from_guides("conservative"),
        "hits_ranked.csv": model.get_ranked(),
        "mash_mode_comparison.csv": model.get_mode_comparison(),
    }
    for name, table in pairs.items():
        pd.testing.assert_frame_equal(_as_written(table), pd.read_csv(cli / name, float_precision="round_trip"),
                                      check_exact=True, obj=name)
    hits = model.get_hits()
    assert hits["hit_anyday"].all() and len(hits) == int(model.get_ranked()["hit_anyday"].sum()) > 0
    best = model.get_answer().best()
    assert list(best["gene"]) == list(model.get_ranked()["gene"]) and {"direction", "dp"} <= set(best.columns)


def test_results_in_the_anndata_survive_h5ad(model, tmp_path):
    """to_adata() stores every table in adata.uns["fatebias"]; write_h5ad works and reads back the same tables."""
    adata = model.to_adata()
    path = tmp_path / "with_results.h5ad"
    adata.write_h5ad(path)
    back = stored_tables(ad.read_h5ad(path).uns)
    assert {"gene_daywise_for_mash", "hits_ranked", "mash_gene_conservative", "mash_mode_comparison"} <= set(back)
    in_memory = {
        "hits_ranked": model.get_ranked(),
        "gene_daywise_for_mash": model.get_gene_effects(),
        "mash_guide_conservative": model.get_mash("guide", "conservative"),
    }
    for name, mem in in_memory.items():
        assert list(back[name].columns) == [str(c) for c in mem.columns]
        assert list(back[name]["gene"]) == list(mem["gene"])
    np.testing.assert_allclose(back["hits_ranked"]["postmean_d1"], model.get_ranked()["postmean_d1"])
    assert ad.read_h5ad(path).uns["fatebias"]["reference"] == model.config.ref_fate


def test_setup_anndata_records_keys_and_checks_them(cli_run):
    sim, _ = cli_run
    adata = sim.adata.copy()
    FateBias.setup_anndata(adata, day_key="day", fate_prob_key="lineages_fwd")
    assert adata.uns["fatebias"]["setup"]["day_key"] == "day"
    with pytest.raises(ConfigError, match="unknown key"):
        FateBias.setup_anndata(adata, day="day")
    with pytest.raises(InputDataError, match="obsm\\['nope'\\]"):
        FateBias.setup_anndata(adata, guide_key="nope")
    renamed = adata.copy()
    renamed.obs["timepoint"] = renamed.obs.pop("day")
    FateBias.setup_anndata(renamed, guide_map=sim.guide_map, day_key="timepoint")
    assert FateBias(renamed).config.day_key == "timepoint"


def test_setup_anndata_registers_the_guide_map(cli_run, tmp_path):
    """The guide map lives in the AnnData (and its .h5ad); passing it to the constructor still works, with a warning."""
    sim, _ = cli_run
    adata = sim.adata.copy()
    with pytest.raises(ConfigError, match="no guide map"):
        FateBias(adata)
    with pytest.raises(InputDataError, match="is_ntc"):
        FateBias.setup_anndata(adata, guide_map=sim.guide_map.drop(columns="is_ntc"))
    FateBias.setup_anndata(adata, guide_map=sim.guide_map)
    stored = adata.uns["fatebias"]["guide_map"]
    assert list(stored["guide_name"]) == list(sim.guide_map["guide_name"])
    assert list(stored["is_ntc"]) == [bool(v) for v in sim.guide_map["is_ntc"]]
    adata.write_h5ad(tmp_path / "registered.h5ad")
    model = FateBias(ad.read_h5ad(tmp_path / "registered.h5ad"))
    with pytest.warns(DeprecationWarning, match="setup_anndata"):
        old = FateBias(sim.adata.copy(), sim.guide_map)
    for m in (model, old):
        assert list(m.experiment.guides.guide_names) == list(old.experiment.guides.guide_names)
        assert list(m.experiment.guides.gene_names) == sorted(set(sim.guide_map.loc[sim.guide_map["is_ntc"] == 0, "gene_name"]))
    np.testing.assert_array_equal(model.experiment.guides.guide_ids, old.experiment.guides.guide_ids)


def test_load_checks_the_fit_is_of_this_anndata(cli_run):
    """FateBias.load refuses an AnnData the saved fit was not made from, in one line naming what differs."""
    sim, out = cli_run
    adata = _registered(sim)
    fewer = adata[10:].copy()
    states = adata.obs["term_states_fwd"].cat.categories  # subsetting drops unused ones: they name the fates
    fewer.obs["term_states_fwd"] = fewer.obs["term_states_fwd"].cat.set_categories(states)
    with pytest.raises(InputDataError, match=r"is not of this AnnData: cells per day differ \(fit 1500: .*AnnData 1490"):
        FateBias.load(out, fewer)
    gmap = sim.guide_map.copy()
    first = gmap.index[gmap["is_ntc"] == 0][0]
    gmap.loc[first, "gene_name"] = "NEWGENE"
    other = sim.adata.copy()
    FateBias.setup_anndata(other, guide_map=gmap)
    with pytest.raises(InputDataError, match="genes differ .*'NEWGENE' only in the AnnData") as err:
        FateBias.load(out, other)
    assert "\n" not in str(err.value)
    with pytest.warns(DeprecationWarning, match="FateBias.load"):  # the old signature still loads
        assert FateBias.load(out, sim.adata.copy(), sim.guide_map).is_trained


def test_get_returns_copies(model, cli_run):
    """Editing a table a get_* method returned changes nothing the model returns later."""
    _, cli = cli_run
    getters = {
        "ranked": model.get_ranked, "hits": model.get_hits, "gene_effects": model.get_gene_effects,
        "mash": lambda: model.get_mash("gene"), "elbo": model.get_elbo, "comparison": model.get_mode_comparison,
        "gene_from_guides": lambda: model.get_gene_from_guides(), "ash": model.get_ash,
    }
    before = {name: get() for name, get in getters.items()}
    for table in before.values():
        table["edited"] = 1
        table.drop(table.index[:1], inplace=True)
    for name, get in getters.items():
        again = get()
        assert len(again) == len(before[name]) + 1 and "edited" not in again.columns, name
    pd.testing.assert_frame_equal(_as_written(model.get_ranked()), pd.read_csv(cli / "hits_ranked.csv", float_precision="round_trip"))
    info = model.fit_info
    info["steps"] = -1
    assert model.fit_info["steps"] != -1


def test_namespaces_show_only_the_public_api():
    import fatebias_core

    assert dir(pl) == ["effects", "elbo", "guides", "heatmap", "mode_comparison", "recovery", "volcano"]
    assert dir(fb) == ["FateBias", "SETUP_KEYS", "UNS_KEY", "pl", "stored_tables"]
    names = dir(fatebias_core)
    assert {"fit", "load_config", "run_chain", "FitResult", "__version__"} <= set(names)
    assert not {"Any", "import_module", "annotations", "_EXPORTS"} & set(names)
    assert all(hasattr(fatebias_core, n) for n in names)


def test_plots_read_the_model_through_its_public_api(model):
    """pl uses no private attribute of the model; the ELBO panel is the loss per cell of get_elbo()."""
    source = Path(pl.__file__).read_text()
    assert "model._" not in source
    ax = pl.elbo(model)
    per_step = ax.lines[0].get_ydata()
    np.testing.assert_allclose(per_step, model.get_elbo()["loss"].to_numpy() / model.n_cells)
    assert model.n_cells == 1500
    plt.close("all")


def test_plots_draw_on_the_given_axes(model):
    fig, axes = plt.subplots(2, 4)
    calls = [
        lambda ax: pl.elbo(model, ax=ax),
        lambda ax: pl.effects(model, ax=ax),
        lambda ax: pl.heatmap(model, top=8, ax=ax),
        lambda ax: pl.volcano(model, "d1", ax=ax),
        lambda ax: pl.volcano(model, 2, fate="NEU", ax=ax),
        lambda ax: pl.guides(model, model.get_hits()["gene"][0], ax=ax),
        lambda ax: pl.mode_comparison(model, ax=ax),
    ]
    for ax, draw in zip(axes.flat, calls, strict=False):
        assert draw(ax) is ax
        assert ax.has_data() or ax.images
    assert isinstance(pl.effects(model), Axes)  # ax=None: a new figure
    with pytest.raises(ConfigError, match="no day"):
        pl.volcano(model, "d9")
    plt.close("all")


def test_importing_changes_no_global_state():
    """Importing the API (and the plots) picks no matplotlib backend, opens no figure, sets up no logging."""
    code = (
        "import logging, matplotlib, fatebias_core.api, fatebias_core.report.plots, matplotlib.pyplot as plt; "
        "assert matplotlib.rcParams._get_backend_or_none() is None, matplotlib.rcParams._get_backend_or_none(); "
        "assert plt.get_fignums() == []; assert not logging.getLogger().handlers"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_readme_example_uses_the_api_that_exists():
    """Every fb.*, fb.pl.* and model.* name in the README's Python example exists (the notebook runs the same calls)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## In Python (notebooks)", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    for name in re.findall(r"\bfb\.pl\.(\w+)", block):
        assert hasattr(pl, name), name
    for name in re.findall(r"\bfb\.(?!pl\.)(\w+)", block):
        assert hasattr(fb, name), name
    for name in re.findall(r"\bmodel\.(\w+)", block):
        assert hasattr(FateBias, name), name
    compile(block, "README example", "exec")
