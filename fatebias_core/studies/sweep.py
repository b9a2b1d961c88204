"""Sweeps over simulation and prior settings, scored against the simulated truth.

A sweep runs the whole chain on many simulations: for each combination of settings
and each seed it simulates an experiment (docs/method.md, "Simulation"), runs fit, export, mash,
aggregation and ranking on it, and scores the calls against the truth. The result is a
tidy table ``sweep_results.csv`` (one row per run: the varied settings, the seed, the
recovery scores and the runtime) and a figure ``sweep_results.png`` (scores against
each varied setting).

A spec is a YAML mapping::

    name: prior              # optional, for titles
    seeds: [0, 1]            # simulation seeds (sim_seed); default [0]
    s_tau: [0.3, 1.0, 3.0]   # a setting -> a list of values: one axis of the grid
    s_guide: [0.1, 0.5]
    num_steps: 2000          # a setting -> one value: fixed for every run
    scenarios:               # optional named groups of settings, crossed with the grid
      baseline: {}
      low_concentration: {sim_concentration: 10}

Every key other than ``name``, ``seeds`` and ``scenarios`` is a setting of the
configuration schema (:class:`~fatebias_core.config.FatebiasConfig`); every run's
settings are validated before the first run starts. A list-valued setting (``fates``)
is swept as a list of lists. Runs go to ``<out>/runs/run_<i>/`` (the simulated data and
its ``config.yaml``; the chain's outputs in ``results/``); rerunning a sweep into the
same folder reuses every step whose inputs and settings are unchanged.

Presets (:data:`PRESETS`) reproduce the seed pipeline's studies: ``prior`` (an s_tau x
s_guide grid), ``tau`` (s_tau alone) and ``stress`` (harder simulations: noisy fate
probabilities, high MOI, small effects, no effects at all).
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fatebias_core.config import FatebiasConfig, load_config, make_config, read_yaml
from fatebias_core.data.simulate import simulate
from fatebias_core.discovery.evaluate import evaluate_files
from fatebias_core.errors import ConfigError, FatebiasError
from fatebias_core.io import layout as names
from fatebias_core.io import write_csv, write_text
from fatebias_core.pipeline.chain import run_chain

log = logging.getLogger("fatebias.sweep")

RESERVED = ("name", "seeds", "scenarios")
NOT_SWEPT = {
    "adata_path": "a sweep simulates its own data",
    "guide_map_csv": "a sweep simulates its own data",
    "out_dir": "each run's outputs go to <out>/runs/run_<i>/results",
    "sim_seed": "list simulation seeds under 'seeds'",
}
RUNS_DIR = "runs"
SCORE_COLUMNS = (
    "daywise_precision",
    "daywise_recall",
    "daywise_f1",
    "daywise_fpr",
    "anyday_precision",
    "anyday_recall",
    "anyday_f1",
    "anyday_fpr",
    "n_hits",
    "n_called_gene_days",
    "n_true_active_genes",
    "n_true_active_gene_days",
)
PLOTTED = (  # column, label, colour, line style, marker
    ("daywise_recall", "daywise recall", "C0", "-", "o"),
    ("daywise_precision", "daywise precision", "C1", "-", "s"),
    ("anyday_recall", "any-day recall", "C0", "--", "^"),
    ("anyday_precision", "any-day precision", "C1", "--", "v"),
    ("anyday_fpr", "any-day FPR", "C3", ":", "D"),
)

PRESETS: dict[str, dict[str, Any]] = {
    "prior": {"name": "prior", "seeds": [0], "s_tau": [0.3, 1.0, 3.0], "s_guide": [0.1, 0.5, 1.0]},
    "tau": {"name": "tau", "seeds": [0, 1], "s_tau": [0.1, 0.3, 1.0, 3.0, 10.0]},
    "stress": {
        "name": "stress",
        "seeds": [0, 1],
        "scenarios": {
            "baseline": {},
            "low_concentration": {"sim_concentration": 10.0},
            "high_kmax": {"sim_kmax": 18},
            "small_effects": {"sim_effect_min": 0.25, "sim_effect_max": 0.4},
            "no_effects": {"sim_active_frac": 0.0},
        },
    },
}
"""Named sweeps; each varies the settings named, every other setting comes from the base config."""


# --------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its id, scenario, grid values and simulation seed."""

    run_id: str
    scenario: str | None
    values: dict[str, Any]
    seed: int

    def settings(self, spec: SweepSpec) -> dict[str, Any]:
        """Every setting this run overrides (fixed, scenario, grid values and ``sim_seed``)."""
        scenario = spec.scenarios.get(self.scenario, {}) if self.scenario else {}
        return {**spec.fixed, **scenario, **self.values, "sim_seed": self.seed}


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: grid axes, fixed settings, named scenarios and seeds.

    Attributes
    ----------
    name
        Name of the sweep (titles, the summary).
    grid
        Setting -> values; the runs cover every combination.
    fixed
        Settings applied to every run.
    scenarios
        Name -> settings; the grid is crossed with every scenario (none: the grid alone).
    seeds
        Simulation seeds; every combination runs once per seed.
    """

    name: str
    grid: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "sweep spec") -> SweepSpec:
        """Validate a spec mapping (see the module docstring).

        Raises
        ------
        ConfigError
            One line naming the first unknown or unsweepable setting, an empty list,
            bad seeds or a malformed scenario.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping of setting: [values], got {type(data).__name__}")
        name = str(data.get("name", "sweep"))
        seeds = data.get("seeds", [0])
        seeds = seeds if isinstance(seeds, list) else [seeds]
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ConfigError(f"{source}: 'seeds' must be a non-empty list of integers, got {data.get('seeds')!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{source}: 'seeds' lists a seed twice: {seeds}")
        scenarios_raw = data.get("scenarios") or {}
        if not isinstance(scenarios_raw, Mapping):
            raise ConfigError(f"{source}: 'scenarios' must map a scenario name to its settings")
        scenarios: dict[str, dict[str, Any]] = {}
        for scen, settings in scenarios_raw.items():
            settings = settings or {}
            if not isinstance(settings, Mapping):
                raise ConfigError(f"{source}: scenario {scen!r} must map settings to single values")
            for key in settings:
                _check_key(key, f"{source}: scenario {scen!r}")
            scenarios[str(scen)] = dict(settings)
        grid: dict[str, list[Any]] = {}
        fixed: dict[str, Any] = {}
        for key, value in data.items():
            if key in RESERVED:
                continue
            _check_key(key, source)
            if isinstance(value, list):
                if not value:
                    raise ConfigError(f"{source}: setting {key!r} has an empty list of values")
                grid[key] = list(value)
            else:
                fixed[key] = value
        clash = sorted(set(grid) & {k for s in scenarios.values() for k in s})
        if clash:
            raise ConfigError(f"{source}: setting {clash[0]!r} is both a grid axis and set by a scenario")
        return cls(name=name, grid=grid, fixed=fixed, scenarios=scenarios, seeds=tuple(seeds))

    @property
    def varied(self) -> list[str]:
        """Dimensions that take more than one value: grid settings, then ``scenario``."""
        dims = [k for k, v in self.grid.items() if len(v) > 1]
        return dims + (["scenario"] if len(self.scenarios) > 1 else [])

    def runs(self) -> list[SweepRun]:
        """Every run in order: scenario, then the grid (last setting fastest), then seed."""
        scenarios: list[str | None] = list(self.scenarios) or [None]
        keys = list(self.grid)
        combos = itertools.product(scenarios, itertools.product(*(self.grid[k] for k in keys)), self.seeds)
        return [
            SweepRun(f"run_{i:03d}", scen, dict(zip(keys, values, strict=True)), int(seed))
            for i, (scen, values, seed) in enumerate(combos)
        ]

    def configs(self, base: FatebiasConfig) -> list[tuple[SweepRun, FatebiasConfig]]:
        """Each run with its validated configuration (base settings, then the run's).

        Diagnostics are off unless the spec turns them on.
        """
        base_values = base.model_dump() | {"run_diagnostics": False}
        out = []
        for run in self.runs():
            label = f"sweep {self.name!r}, {run.run_id}" + (f" (scenario {run.scenario})" if run.scenario else "")
            out.append((run, make_config({**base_values, **run.settings(self)}, source=label)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The spec as a mapping that :meth:`from_dict` reads back."""
        d: dict[str, Any] = {"name": self.name, "seeds": list(self.seeds), **self.fixed, **self.grid}
        if self.scenarios:
            d["scenarios"] = self.scenarios
        return d


def _check_key(key: Any, where: str) -> None:
    fields = FatebiasConfig.model_fields
    if key in NOT_SWEPT:
        raise ConfigError(f"{where}: setting {key!r} cannot be swept ({NOT_SWEPT[key]})")
    if key not in fields:
        close = difflib.get_close_matches(str(key), [*fields, *RESERVED], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown setting {key!r}{hint}")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec YAML file."""
    raw = read_yaml(path, what="sweep spec")
    return SweepSpec.from_dict(raw or {}, source=str(path))


def preset(name: str) -> SweepSpec:
    """A named sweep of :data:`PRESETS` (``prior``, ``tau``, ``stress``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown sweep preset {name!r}; choose from {', '.join(PRESETS)}")
    return SweepSpec.from_dict(PRESETS[name], source=f"preset {name}")


# --------------------------------------------------------------------------- runs
def run_one(run: SweepRun, config: FatebiasConfig, run_dir: str | Path) -> dict[str, Any]:
    """Simulate, run the chain and score one run; returns its row of the results table.

    The chain stops after ranking (``fatebias report --out <run>/results`` makes a
    run's report). The row holds the scores of :func:`~fatebias_core.discovery.evaluate.score_calls` (pooled
    daywise and any-day precision, recall, F1, FPR; counts), the fit's steps,
    convergence and runtime, and this call's wall time ``runtime_s`` (short when the
    steps were reused).
    """
    t0 = time.perf_counter()
    sim = simulate(config, run_dir)
    run_cfg = load_config(sim.paths["config"])
    chain = run_chain(run_cfg, until="rank")
    ev = evaluate_files(
        chain.out_dir / names.HITS, sim.paths["truth_daywise"], chain.out_dir,
        truth_thresh=run_cfg.sim_truth_thresh, config=run_cfg,
    )
    row = score_row(ev.summary)
    row.update(
        fit_steps=chain.fit_info.get("steps"),
        converged=chain.fit_info.get("converged"),
        fit_runtime_s=chain.fit_info.get("runtime_s"),
        reused_fit="fit" in chain.reused,
        runtime_s=round(time.perf_counter() - t0, 3),
    )
    return row


def score_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The recovery scores of one run (a ``pred_call_summary.json``) as a results-table row.

    Columns: daywise (pooled) and any-day precision, recall, F1 and FPR; hits; called
    gene/days; truly active genes and gene/days.
    """
    row: dict[str, Any] = {}
    for level, prefix in (("overall", "daywise"), ("anyday", "anyday")):
        for metric in ("precision", "recall", "f1", "fpr"):
            row[f"{prefix}_{metric}"] = _nan(summary["scores"].get(level, {}).get(metric))
    counts = summary["counts"]
    row.update(
        n_hits=summary["n_hits"],
        n_called_gene_days=counts["n_called_gene_days"],
        n_true_active_genes=counts["n_true_active_genes"],
        n_true_active_gene_days=counts["n_true_active_gene_days"],
    )
    return row


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


@dataclass
class SweepResult:
    """The outcome of :func:`run_sweep`."""

    spec: SweepSpec
    table: pd.DataFrame
    out_dir: Path
    paths: dict[str, Path]
    runtime_s: float

    @property
    def n_failed(self) -> int:
        return int(self.table["error"].notna().sum()) if "error" in self.table else 0

    def describe(self) -> str:
        """The number of runs, failures and the mean scores per varied setting."""
        t = self.table
        lines = [f"sweep {self.spec.name!r}: {len(t)} runs in {self.runtime_s:.0f} s ({self.n_failed} failed)"]
        metrics = ["daywise_precision", "daywise_recall", "anyday_precision", "anyday_recall", "anyday_fpr"]
        for dim in self.spec.varied or ["seed"]:
            means = t.groupby(dim, sort=False)[metrics].mean()
            lines.append(f"  by {dim} (mean over runs): " + ", ".join(m.replace("_", " ") for m in metrics))
            for value, r in means.iterrows():
                lines.append(f"    {value!s:<20} " + "  ".join(_fmt(v) for v in r.to_numpy()))
        lines.extend(f"  wrote {p}" for p in self.paths.values())
        if self.n_failed:
            for r in t[t["error"].notna()].itertuples():
                lines.append(f"  {r.run_id} failed: {r.error}")
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return "  n/a" if pd.isna(x) else f"{x:.3f}"


def run_sweep(
    spec: SweepSpec | Mapping[str, Any],
    out_dir: str | Path,
    base_config: FatebiasConfig | None = None,
) -> SweepResult:
    """Run every run of a sweep and write ``sweep_results.csv`` and ``sweep_results.png``.

    Parameters
    ----------
    spec
        A :class:`SweepSpec` or a spec mapping (see the module docstring).
    out_dir
        Folder of the sweep: ``sweep_spec.yaml``, the results table and figure, and
        ``runs/run_<i>/`` per run.
    base_config
        Settings of every run before the spec's (default: the defaults).

    Returns
    -------
    SweepResult
        The table has one row per run: ``run_id``, ``scenario`` (with scenarios), the
        grid settings, ``seed``, the scores, fit facts, ``runtime_s`` and ``error``
        (the one-line message of a run that failed on bad input; other runs go on).
        The table is rewritten after every run, so a long sweep shows its progress.
    """
    t0 = time.perf_counter()
    if not isinstance(spec, SweepSpec):
        spec = SweepSpec.from_dict(spec)
    base = base_config or make_config()
    runs = spec.configs(base)  # validates every run before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"spec": write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False), out / names.SWEEP_SPEC)}
    rows: list[dict[str, Any]] = []
    table = pd.DataFrame()
    for i, (run, cfg) in enumerate(runs):
        log.info("sweep %s: %s (%d of %d): %s", spec.name, run.run_id, i + 1, len(runs), run.settings(spec))
        row: dict[str, Any] = {"run_id": run.run_id}
        if spec.scenarios:
            row["scenario"] = run.scenario
        # List- or dict-valued settings go into the table as JSON text (hashable, one cell).
        row.update({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in run.values.items()})
        row["seed"] = run.seed
        t_run = time.perf_counter()
        try:
            row.update(run_one(run, cfg, out / RUNS_DIR / run.run_id))
            row["error"] = None
        except FatebiasError as exc:
            log.warning("sweep %s: %s failed: %s", spec.name, run.run_id, exc)
            row.update({c: float("nan") for c in SCORE_COLUMNS})
            row.update(runtime_s=round(time.perf_counter() - t_run, 3), error=str(exc))
        rows.append(row)
        table = pd.DataFrame(rows)
        paths["table"] = write_csv(table, out / names.SWEEP_RESULTS)
    paths["figure"] = plot_sweep(table, spec, out / names.SWEEP_FIGURE)
    return SweepResult(spec, table, out, paths, time.perf_counter() - t0)


# --------------------------------------------------------------------------- figure
def plot_sweep(table: pd.DataFrame, spec: SweepSpec, path: str | Path) -> Path:
    """Recovery scores against each varied setting (means over the other runs; dots: single runs).

    One panel per varied dimension (a seeds-only sweep: one panel against the seed).
    Numeric settings spanning a factor of 10 or more use a log axis.
    """
    from fatebias_core.report.plots import _save, file_figure

    dims = spec.varied or ["seed"]
    fig = file_figure((4.2 * len(dims) + 1.2, 3.6))  # its own Agg canvas: never shown, no pyplot
    axes = fig.subplots(1, len(dims), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        col = table[dim]
        values = list(dict.fromkeys(col.tolist()))  # first-seen order (the spec's)
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric:
            values = sorted(values)
            pos = {v: float(v) for v in values}
            positive = min(values) > 0
            if positive and max(values) / min(values) >= 10:
                ax.set_xscale("log")
        else:
            pos = {v: float(i) for i, v in enumerate(values)}
            ax.set_xticks(list(pos.values()), [str(v) for v in values], rotation=30, ha="right")
        x = col.map(pos).to_numpy(dtype=float)
        for metric, label, color, style, marker in PLOTTED:
            if metric not in table:
                continue
            y = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
            mean = pd.Series(y).groupby(x).mean()
            # Lines only join numeric settings; categories (scenarios) get markers alone.
            ax.plot(mean.index, mean.to_numpy(), color=color, ls=style if numeric else "none", marker=marker, ms=5, label=label)
            ax.scatter(x, y, color=color, s=9, alpha=0.35, lw=0)
        ax.set_xlabel(dim)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3, lw=0.5)
    axes[0][0].set_ylabel("score")
    axes[0][-1].legend(frameon=False, fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    n_seeds = len(spec.seeds)
    fig.suptitle(f"sweep {spec.name!r}: {len(table)} runs, {n_seeds} seed{'s' if n_seeds > 1 else ''} each", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


__all__ = [
    "PRESETS",
    "SweepRun",
    "SweepSpec",
    "SweepResult",
    "load_spec",
    "preset",
    "run_one",
    "run_sweep",
    "plot_sweep",
]
