"""The configuration schema: defaults, validation messages, YAML files, README reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fatebias_core.cli import main
from fatebias_core.config import FatebiasConfig, load_config, make_config
from fatebias_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_every_field_has_a_default_doc_and_group():
    for name, info in FatebiasConfig.model_fields.items():
        assert info.description, name
        assert (info.json_schema_extra or {}).get("group"), name
    cfg = FatebiasConfig()
    assert cfg.Kmax == 20 and cfg.ref_fate == "EC" and cfg.contrast_fate == "MES"
    assert cfg.mash_se_inflate == 1.2 and cfg.mash_se_floor == 0.0


def test_unknown_key_names_it_and_suggests_the_near_miss(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("kmax: 12\n")
    with pytest.raises(ConfigError, match=r"unknown key 'kmax' \(did you mean 'Kmax'\?\)"):
        load_config(p)


def test_wrong_type_names_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("num_steps: lots\n")
    with pytest.raises(ConfigError, match="num_steps"):
        load_config(p)


def test_contrast_equal_to_reference_is_rejected():
    with pytest.raises(ConfigError, match="contrast_fate equals ref_fate"):
        make_config(contrast_fate="EC")


def test_fixed_hyperparameters_need_one_value_per_contrast():
    ok = make_config(fixed_sigma_guide=[0.1, 0.2], fixed_clone_cov=[[0.3, 0.1], [0.1, 0.2]])
    assert ok.fixed_sigma_guide == [0.1, 0.2] and ok.fixed_clone_cov == [[0.3, 0.1], [0.1, 0.2]]
    with pytest.raises(ConfigError, match="fixed_sigma_guide needs 2 positive values"):
        make_config(fixed_sigma_guide=[0.1])
    with pytest.raises(ConfigError, match="fixed_sigma_guide needs 2 positive values"):
        make_config(fixed_sigma_guide=[0.1, 0.0])
    for bad in ([[0.3]], [[0.3, 0.5], [0.1, 0.2]], [[1.0, 2.0], [2.0, 1.0]]):  # wrong size, not symmetric, not PD
        with pytest.raises(ConfigError, match="fixed_clone_cov needs a symmetric positive definite 2 x 2"):
            make_config(fixed_clone_cov=bad)


def test_removed_settings_are_named_with_what_replaced_them():
    with pytest.warns(DeprecationWarning, match="perm_burden_bins.*no longer used"):
        cfg = make_config({"perm_burden_bins": 4, "ntc_partitions": 10})
    assert cfg.perm_seed == 2


def test_time_scale_is_a_deprecated_alias_of_s_time():
    with pytest.warns(DeprecationWarning, match="time_scale"):
        cfg = make_config({"time_scale": 0.3})
    assert cfg.s_time == 0.3


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    p = tmp_path / "sub" / "c.yaml"
    p.parent.mkdir()
    p.write_text("adata_path: a.h5ad\nguide_map_csv: m.csv\nout_dir: out\n")
    cfg = load_config(p)
    assert Path(cfg.adata_path) == p.parent / "a.h5ad"
    assert Path(cfg.out_dir) == p.parent / "out"


def test_contrasts_primary_first_and_suffixes():
    cfg = make_config(fates=["EC", "MES", "NEU", "HEP"], ref_fate="NEU", contrast_fate="HEP")
    assert cfg.contrast_fates == ["HEP", "EC", "MES"]
    assert cfg.file_suffix("HEP") == "" and cfg.file_suffix("EC") == "_EC"


def test_cli_config_check_reports_one_line(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("s_tauu: 1\n")
    assert main(["config", "check", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "s_tauu" in err[0] and "s_tau" in err[0]


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_readme_configuration_reference_is_current():
    spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "scripts" / "sync_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (ROOT / "README.md").read_text()
    assert mod.synced(text) == text, "README configuration reference is stale: run python scripts/sync_readme.py"
