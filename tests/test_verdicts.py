"""The checks' verdicts read from a run folder: pass, fail, not run; blocking only where the configuration stops."""

from __future__ import annotations

import json
from pathlib import Path

from fatebias_core.checks.verdicts import CHECKS, step_verdicts
from fatebias_core.config import make_config
from fatebias_core.io import layout as names


def _write(folder: Path, name: str, data: dict) -> None:
    (folder / name).write_text(json.dumps(data))


def test_ntc_verdict_follows_the_check_and_blocks_only_when_told_to_stop(tmp_path: Path) -> None:
    assert [v.passed for v in step_verdicts("export", tmp_path, make_config())] == [None]  # no check file: not run
    _write(tmp_path, names.NTC_CHECK, {"n": 48, "coverage_90": 0.71, "p_value": 1e-4, "calibrated": False})
    warn, stop = (step_verdicts("export", tmp_path, make_config(on_failed_calibration=m))[0] for m in ("warn", "stop"))
    assert (warn.passed, warn.blocking, stop.passed, stop.blocking) == (False, False, False, True)
    assert "48 NTC pseudo-gene/days" in stop.description and "71.0%" in stop.description
    _write(tmp_path, names.NTC_CHECK, {"n": 48, "coverage_90": 0.9, "p_value": 0.4, "calibrated": True})
    assert step_verdicts("export", tmp_path, make_config())[0].passed is True


def test_diagnostics_verdicts(tmp_path: Path) -> None:
    cfg = make_config(run_diagnostics=True)
    off = step_verdicts("diagnostics", tmp_path, make_config(run_diagnostics=False))
    assert [v.passed for v in off] == [None, None, None] and "run_diagnostics is false" in off[0].description
    _write(tmp_path, names.DIAGNOSTICS, {
        "heldout": {"ce_full": 0.61, "ce_nuisance": 0.62, "full_better": True},
        "permutation": {"n_hits": 3, "allowed_hits": 1, "passed": False},
        "sanity": {"all_passed": None, "checks": []},
    })
    got = {v.name: v for v in step_verdicts("diagnostics", tmp_path, cfg)}
    assert list(got) == list(CHECKS["diagnostics"])
    assert got["heldout_fit"].passed is True
    assert got["permutation_control"].passed is False and "3 hits" in got["permutation_control"].description
    assert got["sanity_checks"].passed is True and "nothing to check" in got["sanity_checks"].description
    assert not any(v.blocking for v in got.values())
    assert step_verdicts("rank", tmp_path, cfg) == []
