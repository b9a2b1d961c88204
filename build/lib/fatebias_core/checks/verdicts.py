"""The verdicts of the run's checks, read from the run folder: pass, fail or not run.

Each check belongs to the step that makes its evidence: the NTC calibration check to the
exports (``ntc_check.json``), the held-out fit, the permutation control and the sanity
checks to the diagnostics (``diagnostics.json``). :func:`step_verdicts` reads them the
same way for every engine; the platform shows them as asset checks, where a failed
blocking check stops the steps that follow in that run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fatebias_core.checks.ntc import read_ntc_check
from fatebias_core.config import FatebiasConfig
from fatebias_core.io import layout as names

#: Each step's checks: name -> what passing means.
CHECKS: dict[str, dict[str, str]] = {
    "export": {
        "ntc_calibration": "NTC pseudo-genes, fitted like genes, have 90% intervals that cover 0 as often as nominal "
        "(sum of squared z-scores against its null distribution). A failure blocks what follows when "
        "on_failed_calibration is stop.",
    },
    "diagnostics": {
        "heldout_fit": "On held-out clones, the full model predicts fates better than the nuisance-only model.",
        "permutation_control": "With guide sets permuted among units far coarser than clones, the chain calls no "
        "more hits than allowed.",
        "sanity_checks": "Every configured known regulator is detected with its expected sign.",
    },
}


#: Checks whose failure may stop what follows (the NTC check, with ``on_failed_calibration: stop``).
BLOCKING = frozenset({"ntc_calibration"})


@dataclass(frozen=True)
class Verdict:
    """One check's outcome.

    Attributes
    ----------
    name
        The check (a key of :data:`CHECKS`).
    passed
        True or False; None when it did not run (``description`` says why).
    blocking
        Whether a failure should stop the steps that follow.
    description
        One line: the evidence, or why it did not run.
    metadata
        The numbers behind it.
    """

    name: str
    passed: bool | None
    blocking: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def step_verdicts(step: str, out_dir: str | Path, config: FatebiasConfig) -> list[Verdict]:
    """The verdicts of ``step``'s checks (:data:`CHECKS`) in the run folder ``out_dir``."""
    if step == "export":
        return [_ntc(out_dir, config)]
    if step == "diagnostics":
        return _diagnostics(out_dir, config)
    return []


def _ntc(out_dir: str | Path, config: FatebiasConfig) -> Verdict:
    blocking = config.on_failed_calibration == "stop"
    check = read_ntc_check(out_dir)
    if check is None or check.get("calibrated") is None:
        why = "not run: " + ("ntc_check is off" if not config.ntc_check else "too few NTC guides to form pseudo-genes")
        return Verdict("ntc_calibration", None, blocking, why)
    md = {k: check[k] for k in ("n", "coverage_90", "p_value") if k in check}
    text = f"90% intervals of {check['n']} NTC pseudo-gene/days cover 0 in {check['coverage_90']:.1%}, p {check['p_value']:.2g}"
    return Verdict("ntc_calibration", bool(check["calibrated"]), blocking, text, md)


def _diagnostics(out_dir: str | Path, config: FatebiasConfig) -> list[Verdict]:
    names_ = list(CHECKS["diagnostics"])
    if not config.run_diagnostics:
        return [Verdict(n, None, False, "not run: run_diagnostics is false") for n in names_]
    try:
        found = json.loads((Path(out_dir) / names.DIAGNOSTICS).read_text())
    except (OSError, ValueError):
        return [Verdict(n, None, False, f"not run: no readable {names.DIAGNOSTICS}") for n in names_]
    out = [
        _section(found.get("heldout"), "heldout_fit", "the held-out check", "full_better",
                 lambda h: f"held-out cross-entropy: full {h.get('ce_full')}, nuisance-only {h.get('ce_nuisance')}",
                 ("ce_full", "ce_nuisance", "difference", "difference_se")),
        _section(found.get("permutation"), "permutation_control", "the permutation control", "passed",
                 lambda p: f"{p.get('n_hits')} hits on permuted data (at most {p.get('allowed_hits')} allowed)",
                 ("n_hits", "allowed_hits", "n_units", "n_strata")),
    ]
    san = found.get("sanity")
    if san is None:
        out.append(Verdict("sanity_checks", None, False, "not run: the sanity checks are off"))
    elif san.get("all_passed") is None:
        out.append(Verdict("sanity_checks", True, False, "nothing to check: no known regulators configured"))
    else:
        out.append(Verdict("sanity_checks", bool(san["all_passed"]), False,
                           f"{san.get('n_passed')} of {len(san.get('checks', []))} known regulators detected with their sign",
                           {"n_passed": san.get("n_passed"), "n_checks": len(san.get("checks", []))}))
    return out


def _section(part: dict | None, name: str, what: str, passed_key: str, text, keys: tuple[str, ...]) -> Verdict:
    """The verdict of one section of ``diagnostics.json`` (None: that check is off)."""
    if part is None:
        return Verdict(name, None, False, f"not run: {what} is off")
    return Verdict(name, bool(part.get(passed_key)), False, text(part), {k: part[k] for k in keys if k in part})
