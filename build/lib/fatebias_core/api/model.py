"""The notebook API: one model object from an AnnData in memory to tidy tables, plots and files.

:class:`FateBias` follows scvi-tools' model classes (``setup_anndata``, the constructor,
``train``, ``get_*``, ``save``/``load``); the figures are functions in
:mod:`fatebias_core.api.pl` that take the model and a matplotlib ``Axes``, as scanpy's
and pertpy's ``pl`` functions do. Every number comes from the functions the command line
runs (:func:`~fatebias_core.data.load.load_experiment`, :func:`~fatebias_core.model.inference.fit`,
:func:`~fatebias_core.model.posterior.summarise_posterior`, :func:`~fatebias_core.mash.mash_table`,
:func:`~fatebias_core.mash.ash_table`, :func:`~fatebias_core.discovery.aggregate.aggregate_guides`,
:func:`~fatebias_core.discovery.calls.rank_hits`, :func:`~fatebias_core.discovery.calls.compare_modes`);
this module only assembles their tables, under the run folder's file names and columns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fatebias_core.api.uns import UNS_KEY, h5ad_frame, store_tables
from fatebias_core.config import MASH_MODES, FatebiasConfig, make_config, read_yaml
from fatebias_core.data.guide_map import GUIDE_MAP_COLUMNS, validate_guide_map
from fatebias_core.data.load import load_experiment
from fatebias_core.discovery.aggregate import aggregate_guides
from fatebias_core.discovery.answer import ContrastAnswer, contrast_answer
from fatebias_core.discovery.calls import compare_modes, rank_hits
from fatebias_core.errors import ConfigError, FitError, InputDataError
from fatebias_core.io import layout as names
from fatebias_core.io import write_csv, write_text
from fatebias_core.io.layout import RunLayout
from fatebias_core.mash import ash_table, mash_table
from fatebias_core.model.inference import fit, load_fit, write_fit
from fatebias_core.model.posterior import (
    PosteriorSummary,
    day_suffixes,
    summarise_posterior,
)
from fatebias_core.pipeline.steps import export_step, report_step, save_fit, write_load_files
from fatebias_core.types import FitResult

#: The keys :meth:`FateBias.setup_anndata` records: where the inputs live in the AnnData.
SETUP_KEYS = ("fate_prob_key", "guide_key", "day_key", "covar_key", "rep_key", "clone_key")


class FateBias:
    """Fate-bias analysis of one experiment held in memory.

    Parameters
    ----------
    adata
        The experiment: fate probabilities, guide matrix, day and replicate labels (the
        keys of :meth:`setup_anndata`, else of ``config``); or a MuData whose
        ``rna_modality`` holds them, with ``guide_source="mudata"`` for guide UMI counts in
        its guide modality. Its guide map is the one :meth:`setup_anndata` registered
        (else the file ``guide_map_csv`` of the settings).
    guide_map
        Deprecated: register the guide map with ``setup_anndata(adata, guide_map=...)``.
        Given here it is still used, with a ``DeprecationWarning``.
    config
        Settings; defaults otherwise. Keys recorded by :meth:`setup_anndata` replace its
        key settings.
    **settings
        Settings by name (``num_steps=2000``, ``fates=[...]``), applied last.

    Examples
    --------
    >>> FateBias.setup_anndata(adata, guide_map=guide_map, day_key="day")   # doctest: +SKIP
    >>> model = FateBias(adata, num_steps=2000)                             # doctest: +SKIP
    >>> model.train()                                                       # doctest: +SKIP
    >>> model.get_hits()                                                    # doctest: +SKIP
    """

    def __init__(self, adata: Any, guide_map: pd.DataFrame | None = None, config: FatebiasConfig | None = None,
                 **settings: Any) -> None:
        values = config.model_dump() if config is not None else {}
        values.update(setup_keys(adata))
        values.update(settings)
        self.adata = adata
        self.config: FatebiasConfig = make_config(values, source="FateBias settings")
        if guide_map is not None:
            _deprecated_guide_map("FateBias(adata, guide_map)")
        else:
            guide_map = registered_guide_map(adata)
            if guide_map is None and self.config.guide_map_csv is None:
                raise ConfigError("no guide map: register it with FateBias.setup_anndata(adata, guide_map=...) "
                                  "(or set guide_map_csv)")
        self.guide_map = guide_map
        self.experiment = load_experiment(self.config, verbose=False, adata=adata, guide_map=guide_map)
        self.fit_result: FitResult | None = None
        self._cache: dict[tuple, Any] = {}

    # ----------------------------------------------------------------- setup and training
    @classmethod
    def setup_anndata(cls, adata: Any, guide_map: pd.DataFrame | None = None, **keys: str) -> None:
        """Register the guide map and where the inputs live in ``adata``.

        Parameters
        ----------
        adata
            The AnnData (or MuData) the model will be built on.
        guide_map
            ``guide_name, gene_name, is_ntc`` (0/1), one row per guide; validated and
            stored in ``adata.uns["fatebias"]["guide_map"]`` (it survives ``write_h5ad``).
            None keeps a guide map registered before.
        **keys
            Any of :data:`SETUP_KEYS` (``fate_prob_key="lineages_fwd"``, ``day_key="day"``,
            ...), recorded in ``adata.uns["fatebias"]["setup"]``; the ones not given keep
            the defaults. On an AnnData the fate and guide keys must name ``obsm`` entries
            and ``day_key`` an ``obs`` column (on a MuData the constructor checks them in
            its RNA modality).
        """
        unknown = sorted(set(keys) - set(SETUP_KEYS))
        if unknown:
            raise ConfigError(f"setup_anndata: unknown key(s) {', '.join(unknown)} (known: {', '.join(SETUP_KEYS)})")
        cfg = make_config(keys, source="setup_anndata")
        if not hasattr(adata, "mod"):  # a MuData keeps them in a modality the settings name
            missing = [f"obsm[{k!r}]" for k in (cfg.fate_prob_key, cfg.guide_key) if k not in adata.obsm]
            missing += [f"obs[{cfg.day_key!r}]"] if cfg.day_key not in adata.obs else []
            if missing:
                raise InputDataError(f"setup_anndata: the AnnData has no {', '.join(missing)}")
        entry = dict(adata.uns.get(UNS_KEY) or {})
        entry["setup"] = {k: str(getattr(cfg, k)) for k in SETUP_KEYS}
        if guide_map is not None:
            clean = validate_guide_map(guide_map, source="setup_anndata(guide_map=...)")
            entry["guide_map"] = h5ad_frame(clean[list(GUIDE_MAP_COLUMNS)])
        adata.uns[UNS_KEY] = entry

    def train(self, num_steps: int | None = None, seed: int | None = None) -> FateBias:
        """Fit the model (SVI, then the configured posterior); returns the model.

        ``num_steps`` and ``seed`` override the settings for this fit only.
        """
        self.fit_result = fit(self.experiment, self.config, num_steps=num_steps, seed=seed)
        self._cache.clear()
        return self

    @property
    def is_trained(self) -> bool:
        """Whether :meth:`train` (or :meth:`load`) gave the model a posterior."""
        return self.fit_result is not None

    def __repr__(self) -> str:
        s = self.experiment.summary
        state = "trained" if self.is_trained else "not trained"
        return (f"FateBias: {s.n_cells_kept} cells, {self.experiment.guides.n_genes} genes, "
                f"{self.experiment.guides.n_guides} guides; {self.config.contrast_fate} vs {self.config.ref_fate}; {state}")

    def _fitted(self) -> FitResult:
        if self.fit_result is None:
            raise FitError("the model is not trained: call model.train() (or FateBias.load) first")
        return self.fit_result

    def _cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        """The value of ``key``, made once; a DataFrame is returned as a copy, so callers cannot edit the cache."""
        if key not in self._cache:
            self._cache[key] = make()
        value = self._cache[key]
        return value.copy() if isinstance(value, pd.DataFrame) else value

    def resolve_fate(self, fate: str | None = None) -> str:
        """The contrast fate ``fate`` names: the primary one (``contrast_fate``) when None.

        Raises ``ConfigError`` for a fate that is not a contrast of this model.
        """
        fate = fate or self.config.contrast_fate
        if fate not in self.config.contrast_fates:
            raise ConfigError(f"{fate!r} is not a contrast fate (one of: {', '.join(self.config.contrast_fates)})")
        return fate

    @property
    def fit_info(self) -> dict[str, Any]:
        """The fit's run facts (steps, runtime, convergence, likelihood-weight updates, ...), a copy."""
        return dict(self._fitted().info)

    @property
    def n_cells(self) -> int:
        """Cells of the loaded experiment (after its filters): the ones the model is fitted to."""
        return self.experiment.n_cells

    def _mode(self, mode: str | None) -> str:
        mode = mode or self.config.mash_default_mode
        if mode not in MASH_MODES:
            raise ConfigError(f"mash mode must be one of {', '.join(MASH_MODES)}, got {mode!r}")
        return mode

    # ----------------------------------------------------------------- posterior summaries
    @property
    def posterior(self) -> PosteriorSummary:
        """Posterior summaries of every contrast (drawn once, seeded)."""
        return self._cached(("posterior",), lambda: summarise_posterior(self._fitted(), self.config))

    def get_elbo(self) -> pd.DataFrame:
        """``step, loss``: the loss (negative ELBO) per SVI step (``fit/elbo_trace.csv``)."""
        loss = np.array(self._fitted().elbo, dtype=float)
        return pd.DataFrame({"step": np.arange(1, len(loss) + 1), "loss": loss})

    def get_gene_effects(self, fate: str | None = None) -> pd.DataFrame:
        """``gene, betahat_<day>..., se_<day>...``: posterior mean and SD of theta (``gene_daywise_for_mash.csv``)."""
        fate = self.resolve_fate(fate)
        return self._cached(("gene_effects", fate), lambda: self.posterior.gene_daywise(fate))

    def get_guide_effects(self, fate: str | None = None) -> pd.DataFrame:
        """``guide, gene, betahat_<day>..., se_<day>...``: posterior mean and SD of beta (``guide_daywise_for_mash.csv``)."""
        fate = self.resolve_fate(fate)
        return self._cached(("guide_effects", fate), lambda: self.posterior.guide_daywise(fate))

    def get_across_day_summary(self, fate: str | None = None) -> pd.DataFrame:
        """``gene, betahat, sebetahat, w_<day>...``: the weighted across-day effect (``gene_summary_for_ash.csv``)."""
        fate = self.resolve_fate(fate)
        return self._cached(("across_day", fate), lambda: self.posterior.ash_summary(fate))

    # ----------------------------------------------------------------- shrinkage and calls
    def get_mash(self, level: str = "gene", mode: str | None = None, fate: str | None = None) -> pd.DataFrame:
        """mash of the gene or guide effects (``mash_<level>_<mode>.csv``).

        The effects' columns, then ``postmean_<day>``, ``postsd_<day>``, ``lfsr_<day>``,
        ``lfsr_min`` and ``best_day``.
        """
        fate, mode = self.resolve_fate(fate), self._mode(mode)
        if level not in ("gene", "guide"):
            raise ConfigError(f"level must be gene or guide, got {level!r}")
        effects = self.get_gene_effects if level == "gene" else self.get_guide_effects
        return self._cached(("mash", level, mode, fate), lambda: mash_table(effects(fate), mode, self.config).table)

    def get_ash(self, fate: str | None = None) -> pd.DataFrame:
        """ash of the across-day summary: its columns then ``postmean, postsd, lfsr, qvalue`` (``ash_gene_summary.csv``)."""
        fate = self.resolve_fate(fate)
        return self._cached(("ash", fate), lambda: ash_table(self.get_across_day_summary(fate), self.config).table)

    def get_gene_from_guides(self, mode: str | None = None, fate: str | None = None) -> pd.DataFrame:
        """Gene posteriors combined from the guides' mash (``gene_from_guide_mash_<mode>.csv``)."""
        mode, fate = self._mode(mode), self.resolve_fate(fate)
        return self._cached(("agg", mode, fate), lambda: aggregate_guides(self.get_mash("guide", mode, fate), self.config))

    def get_discovery_table(self, mode: str | None = None, fate: str | None = None) -> pd.DataFrame:
        """The table hits are called from (``discovery_source``: gene mash, guide aggregate or ash)."""
        source = self.config.discovery_source
        if source == "gene":
            return self.get_mash("gene", mode, fate)
        if source == "guide_agg":
            return self.get_gene_from_guides(mode, fate)
        return self.get_ash(fate)

    def get_ranked(self, mode: str | None = None, fate: str | None = None) -> pd.DataFrame:
        """Every gene called and ranked, hits first (``hits_ranked.csv`` for the default mode)."""
        mode, fate = self._mode(mode), self.resolve_fate(fate)
        if fate != self.config.contrast_fate:  # other contrasts: their gene mash table, as the rank step does
            return self._cached(("rank", mode, fate), lambda: rank_hits(self.get_mash("gene", mode, fate), self.config, source="gene"))
        return self._cached(("rank", mode, fate), lambda: rank_hits(self.get_discovery_table(mode, fate), self.config))

    def get_hits(self, mode: str | None = None, fate: str | None = None) -> pd.DataFrame:
        """The rows of :meth:`get_ranked` that are any-day hits."""
        ranked = self.get_ranked(mode, fate)
        return ranked[ranked["hit_anyday"].to_numpy(dtype=bool)].reset_index(drop=True)

    def _ranked_modes(self) -> tuple[str, ...]:
        """The modes ``fatebias run`` ranks: both, or only the default for the ash source."""
        return (self.config.mash_default_mode,) if self.config.discovery_source == "ash" else MASH_MODES

    def get_mode_comparison(self) -> pd.DataFrame:
        """Hits of the mash modes compared (``mash_mode_comparison.csv``)."""
        return self._cached(("compare",), lambda: compare_modes({m: self.get_ranked(m) for m in self._ranked_modes()}))

    def get_answer(self, fate: str | None = None) -> ContrastAnswer:
        """One contrast's ranked genes with their daywise effects and called days, as the report shows them.

        ``get_answer().best()`` is one row per gene at its best day: the effect, its 90%
        interval, the direction in words and the change in the fate's probability.
        """
        fate = self.resolve_fate(fate)
        makers = self._table_makers([fate])
        # The folder only feeds the day baselines, which come from the loaded experiment instead.
        answer = contrast_answer(Path(), self.config, fate, read=lambda name: makers[name]() if name in makers else None)
        if answer is None:  # cannot happen: every table is made in memory
            raise InputDataError(f"no ranked table for {fate}")
        return replace(answer, baseline=self._baseline(fate, answer.axis.labels))

    def _baseline(self, fate: str, day_suffixes_: tuple[str, ...]) -> np.ndarray | None:
        """(D,) mean probability of ``fate`` among each day's cells (as ``load_summary.json`` has it)."""
        means = self.experiment.summary.fate_mean_by_day or {}
        by_suffix = dict(zip(day_suffixes(list(means)), means.values(), strict=True))
        values = [by_suffix.get(label, {}).get(fate) for label in day_suffixes_]
        return None if not means or any(v is None for v in values) else np.asarray(values, dtype=float)

    # ----------------------------------------------------------------- the run folder's tables
    def run_tables(self, fates: list[str] | None = None) -> dict[str, pd.DataFrame]:
        """The mash, aggregation and ranking tables of ``fatebias run``, by file name.

        ``fates`` limits the per-contrast tables (default: every contrast); aggregation
        and ranking are of the primary contrast, as in the run folder.
        """
        return {name: make() for name, make in self._table_makers(fates).items()}

    def _table_makers(self, fates: list[str] | None = None) -> dict[str, Callable[[], pd.DataFrame]]:
        """File name -> the call that makes that table (nothing is computed here)."""
        cfg = self.config
        layout = RunLayout(Path(), cfg)
        fates = fates or cfg.contrast_fates
        makers: dict[str, Callable[[], pd.DataFrame]] = {
            path.name: partial(self.get_mash, level, mode, fate)
            for (level, mode, fate), path in layout.mash_tables().items() if fate in fates
        }
        makers |= {path.name: partial(self.get_ash, fate) for fate, path in layout.ash_tables().items() if fate in fates}
        if cfg.contrast_fate in fates:
            makers |= {path.name: partial(self.get_gene_from_guides, mode) for mode, path in layout.guide_aggs().items()}
            makers[names.HITS] = self.get_ranked
            makers[names.MODE_COMPARISON] = self.get_mode_comparison
        makers |= {path.name: partial(self.get_ranked, None, fate) for fate, path in layout.contrast_hits().items() if fate in fates}
        return makers

    def write(self, out_dir: str | Path, report: bool = False) -> Path:
        """Write the run folder ``fatebias run`` writes, for the steps up to ranking.

        ``load_summary.json``, ``dropped_cells.csv``, ``config_used.yaml``, ``fit/``,
        the posterior exports and the NTC check, every mash, ash, aggregation and ranking table, and the
        ELBO and effects figures; with ``report``, ``report.html`` too. Diagnostics (which
        refit the model) are not run. Returns the folder.
        """
        out = Path(out_dir)
        cfg = self.config.model_copy(update={"out_dir": str(out)})
        fitted = self._fitted()
        write_load_files(self.experiment, out)
        write_text(cfg.to_yaml(), out / names.CONFIG_USED)
        save_fit(fitted, self.experiment, RunLayout(out, cfg))
        export_step(fitted, self.experiment, cfg, out, summary=self.posterior)
        for name, table in self.run_tables().items():
            write_csv(table, out / name)
        if report:
            report_step(cfg, out)
        return out

    # ----------------------------------------------------------------- AnnData and persistence
    def to_adata(self, key: str = UNS_KEY) -> Any:
        """Store the results in ``adata.uns[key]``, ready for ``adata.write_h5ad``; returns the AnnData.

        ``uns[key]["tables"]`` holds the effect tables and every table of
        :meth:`run_tables`, by file name without ``.csv``; ``uns[key]`` also holds the
        settings (``config``, YAML), the fates and the ELBO trace.
        """
        tables = {"gene_daywise_for_mash": self.get_gene_effects(), "guide_daywise_for_mash": self.get_guide_effects()}
        tables |= {name.removesuffix(".csv"): df for name, df in self.run_tables().items()}
        meta = {"config": self.config.to_yaml(), "reference": self.config.ref_fate,
                "contrasts": np.asarray(self.config.contrast_fates, dtype=object), "elbo": np.asarray(self._fitted().elbo)}
        store_tables(self.adata.uns, tables, meta, key=key)
        return self.adata

    def save(self, folder: str | Path) -> Path:
        """Save the fit and the settings (``fit/`` and ``config_used.yaml``, as in a run folder)."""
        folder = Path(folder)
        write_fit(self._fitted(), folder / names.FIT_DIR)
        write_text(self.config.to_yaml(), folder / names.CONFIG_USED)
        return folder

    @classmethod
    def load(cls, folder: str | Path, adata: Any, guide_map: pd.DataFrame | None = None, **settings: Any) -> FateBias:
        """A trained model from :meth:`save`'s folder or a ``fatebias run`` folder, on the same experiment.

        The AnnData's guide map is the one :meth:`setup_anndata` registered (``guide_map``
        here is deprecated). The saved fit must be of this experiment: the same fates,
        genes, guides, days, replicates and cells per day, else ``InputDataError`` names
        what differs. ``settings`` change the later steps (mash, calls); the fit is used
        as saved.
        """
        folder = Path(folder)
        config = make_config(read_yaml(folder / names.CONFIG_USED, what=names.CONFIG_USED), source=str(folder / names.CONFIG_USED))
        if guide_map is not None:
            _deprecated_guide_map("FateBias.load(folder, adata, guide_map)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # warned once above
            model = cls(adata, guide_map, config=config, **settings)
        fitted = load_fit(folder / names.FIT_DIR)
        differs = fit_mismatch(fitted, model.experiment)
        if differs:
            raise InputDataError(f"the fit in {folder / names.FIT_DIR} is not of this AnnData: {'; '.join(differs)}")
        model.fit_result = fitted
        return model


def _deprecated_guide_map(call: str) -> None:
    warnings.warn(
        f"{call}: passing the guide map here is deprecated; register it with "
        "FateBias.setup_anndata(adata, guide_map=guide_map)", DeprecationWarning, stacklevel=3,
    )


def registered_guide_map(adata: Any) -> pd.DataFrame | None:
    """The guide map :meth:`FateBias.setup_anndata` registered in ``adata`` (None when none)."""
    table = (getattr(adata, "uns", {}).get(UNS_KEY) or {}).get("guide_map")
    return None if table is None else pd.DataFrame(table).reset_index(drop=True)


def _differ(what: str, fitted: list, here: list) -> str | None:
    """``what`` differs: counts, and the first name only in one of them."""
    fitted, here = [str(x) for x in fitted], [str(x) for x in here]
    if fitted == here:
        return None
    only_fit = [x for x in fitted if x not in set(here)]
    only_here = [x for x in here if x not in set(fitted)]
    example = (f", e.g. {only_fit[0]!r} only in the fit" if only_fit
               else f", e.g. {only_here[0]!r} only in the AnnData" if only_here else ", in another order")
    return f"{what} differ (fit {len(fitted)}, AnnData {len(here)}{example})"


def fit_mismatch(fitted: FitResult, experiment: Any) -> list[str]:
    """What differs between a saved fit and a loaded experiment; empty when the fit is of it.

    Compared: fates, genes, guides, day labels, replicate labels and cells per day.
    """
    cells, guides = experiment.cells, experiment.guides
    found = [
        _differ("fates", fitted.fates, list(cells.fates)),
        _differ("genes", fitted.gene_names, list(guides.gene_names)),
        _differ("guides", fitted.guide_names, list(guides.guide_names)),
        _differ("days", fitted.day_labels, list(cells.day_labels)),
        _differ("replicates", fitted.rep_labels, list(cells.rep_labels)),
    ]
    fit_counts, counts = np.asarray(fitted.day_counts).tolist(), np.asarray(cells.day_counts()).tolist()
    if fit_counts != counts:
        found.append(f"cells per day differ (fit {sum(fit_counts)}: {fit_counts}, AnnData {sum(counts)}: {counts})")
    return [f for f in found if f]


def setup_keys(adata: Any) -> dict[str, str]:
    """The keys :meth:`FateBias.setup_anndata` recorded in ``adata`` (empty when none)."""
    setup = (getattr(adata, "uns", {}).get(UNS_KEY) or {}).get("setup") or {}
    return {k: str(v) for k, v in setup.items() if k in SETUP_KEYS}
