"""Typed objects that flow through the chain (docs/method.md, "Inputs" and "Data").

Loading produces an :class:`Experiment` (cells + guide embedding + loading summary);
the fit consumes it. The diagnostics return a :class:`DiagnosticsResult`. All arrays are
numpy; the model moves them to torch itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fatebias_core.errors import FitError


@dataclass(frozen=True)
class FilteredCells:
    """Cells kept after validation and the Kmax filter.

    Attributes
    ----------
    fate_probs
        (N, F) float32 fate probabilities in ``fates`` order, rows summing to 1.
    fates
        Fate names in column order (the configured order).
    day
        (N,) int64 day index 0..D-1, ordered by the number in the day label.
    day_labels
        D day labels, index d -> label (e.g. ``("d0", "d1", "d2", "d3")``).
    rep
        (N,) int64 replicate index 0..R-1.
    rep_labels
        R replicate labels.
    burden
        (N,) int64 guides per cell k_i (NTCs count).
    burden_centered
        (N,) float32 burden minus the mean burden of the cell's day.
    cell_names
        (N,) obs names of the kept cells.
    cluster
        (N,) int64 clone of each cell (the model's clone random effect): from a clone
        column when the data have one (lineage barcodes), else inferred from overlapping
        detected guide sets within a replicate (:mod:`fatebias_core.data.clones`);
        ``None`` treats every cell as its own clone.
    cluster_source
        How the clones were found (for summaries).
    """

    fate_probs: np.ndarray
    fates: tuple[str, ...]
    day: np.ndarray
    day_labels: tuple[str, ...]
    rep: np.ndarray
    rep_labels: tuple[str, ...]
    burden: np.ndarray
    burden_centered: np.ndarray
    cell_names: np.ndarray
    cluster: np.ndarray | None = None
    cluster_source: str = "cells"

    @property
    def n_cells(self) -> int:
        return int(self.fate_probs.shape[0])

    @property
    def n_days(self) -> int:
        return len(self.day_labels)

    @property
    def n_reps(self) -> int:
        return len(self.rep_labels)

    @property
    def n_fates(self) -> int:
        return len(self.fates)

    def day_counts(self) -> np.ndarray:
        """Cells per day, (D,)."""
        return np.bincount(self.day, minlength=self.n_days)

    def subset(self, idx: np.ndarray) -> FilteredCells:
        """The cells at ``idx`` (burden re-centred within day on the subset)."""
        day = self.day[idx]
        burden = self.burden[idx]
        return FilteredCells(
            fate_probs=self.fate_probs[idx],
            fates=self.fates,
            day=day,
            day_labels=self.day_labels,
            rep=self.rep[idx],
            rep_labels=self.rep_labels,
            burden=burden,
            burden_centered=center_by_group(burden, day, self.n_days),
            cell_names=self.cell_names[idx],
            cluster=None if self.cluster is None else self.cluster[idx],
            cluster_source=self.cluster_source,
        )

    def clusters(self) -> np.ndarray:
        """(N,) clone ids 0..C-1 (every cell its own clone when none are known)."""
        if self.cluster is None:
            return np.arange(self.n_cells, dtype=np.int64)
        return np.unique(self.cluster, return_inverse=True)[1].astype(np.int64)


@dataclass(frozen=True)
class GuideEmbedding:
    """The padded embedding-sum representation of each cell's guides.

    Convention (docs/method.md, "Data"): non-NTC guides have ids 1..G; every NTC guide maps to id 0
    with mask 1 (a real entry that adds nothing); padding is id 0 with mask 0. Genes
    have ids 1..L and ``gene_of_guide[0] = 0``.

    Attributes
    ----------
    guide_ids
        (N, Kmax) int32 guide ids per cell.
    mask
        (N, Kmax) bool, True for a detected guide (NTCs included).
    gene_of_guide
        (G + 1,) int64 gene id of each guide id (0 for id 0).
    guide_names
        G names; guide id g is ``guide_names[g - 1]``.
    gene_names
        L names; gene id l is ``gene_names[l - 1]``.
    ntc_ids
        (N, W) int32 NTC guides per cell, 1-based into ``ntc_names``, 0 pads; the model
        treats every NTC alike (id 0), the calibration check tells them apart.
    ntc_names
        Names of the NTC guides.
    """

    guide_ids: np.ndarray
    mask: np.ndarray
    gene_of_guide: np.ndarray
    guide_names: tuple[str, ...]
    gene_names: tuple[str, ...]
    ntc_ids: np.ndarray | None = None
    ntc_names: tuple[str, ...] = ()

    @property
    def n_guides(self) -> int:
        return len(self.guide_names)

    @property
    def n_genes(self) -> int:
        return len(self.gene_names)

    @property
    def kmax(self) -> int:
        return int(self.guide_ids.shape[1])

    def guide_gene_names(self) -> np.ndarray:
        """(G,) gene name of each non-NTC guide, in guide-id order."""
        return np.asarray(self.gene_names, dtype=object)[self.gene_of_guide[1:] - 1]

    def subset(self, idx: np.ndarray) -> GuideEmbedding:
        """The cells at ``idx`` (guides and genes unchanged)."""
        return GuideEmbedding(
            guide_ids=self.guide_ids[idx],
            mask=self.mask[idx],
            gene_of_guide=self.gene_of_guide,
            guide_names=self.guide_names,
            gene_names=self.gene_names,
            ntc_ids=None if self.ntc_ids is None else self.ntc_ids[idx],
            ntc_names=self.ntc_names,
        )


@dataclass(frozen=True)
class LoadSummary:
    """What loading kept and dropped, and why (printed, stored with the run)."""

    source: str
    n_cells_in: int
    n_cells_kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    guides_per_cell: dict[str, float] = field(default_factory=dict)
    n_guides_matrix: int = 0
    n_guides_mapped: int = 0
    n_ntc_guides: int = 0
    unmapped_guides: tuple[str, ...] = ()
    map_guides_absent: tuple[str, ...] = ()
    guides_per_gene: dict[str, float] = field(default_factory=dict)
    fate_names_source: str = ""
    n_renormalised: int = 0
    cells_per_day: dict[str, int] = field(default_factory=dict)
    n_clusters: int = 0
    cluster_source: str = ""
    clones: dict = field(default_factory=dict)
    fate_mean_by_day: dict[str, dict[str, float]] = field(default_factory=dict)
    drop_invalid_cells: bool = False
    #: Where the guides came from, how the barcodes matched, the assignment and its QC
    #: (:mod:`fatebias_core.data.guide_sources`, :mod:`fatebias_core.data.guide_qc`).
    guide_input: dict = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        """Cells dropped at load, every reason together."""
        return int(sum(self.dropped.values()))

    def to_dict(self) -> dict:
        """A JSON-friendly view."""
        d = dict(self.__dict__)
        d["unmapped_guides"] = list(self.unmapped_guides)
        d["map_guides_absent"] = list(self.map_guides_absent)
        return d

    def _clone_lines(self) -> list[str]:
        c = self.clones
        if not c or not c.get("n_clusters"):
            return [f"  clones: {self.n_clusters} from {self.cluster_source}"]
        lines = [
            f"  clones: {c['n_clusters']} from {c['description']}, {c['cells_per_clone']:.2f} cells each "
            f"(median {c['size_median']:g}, 90% {c['size_p90']:g}, max {c['size_max']}); "
            f"{c['cells_in_multicell_clones']:.0%} of cells in clones of 2 or more"
        ]
        if c.get("guide_detection") is not None:
            lines.append(f"  guide detection (share of its clone's guides a cell shows): {c['guide_detection']:.2f}")
        if c.get("cells_given_clone_guides"):
            lines.append(f"  {c['cells_given_clone_guides']} cells given the detected guides of their sister cells (clone_guides: union)")
        return lines

    def format(self) -> str:
        """A human-readable multi-line summary."""
        lines = [
            f"loaded {self.source}",
            f"  cells: {self.n_cells_in} in, {self.n_cells_kept} kept"
            + (", dropped: " + ", ".join(f"{v} {k}" for k, v in self.dropped.items() if v) + " (each listed in dropped_cells.csv)"
               if any(self.dropped.values()) else ""),
            "  cells per day: " + ", ".join(f"{k} {v}" for k, v in self.cells_per_day.items()),
            "  guides per cell: " + ", ".join(f"{k} {v:g}" for k, v in self.guides_per_cell.items()),
            f"  guides: {self.n_guides_matrix} in matrix, {self.n_guides_mapped} targeting + {self.n_ntc_guides} NTC mapped",
            "  guides per gene: " + ", ".join(f"{k} {v:g}" for k, v in self.guides_per_gene.items()),
            *self._clone_lines(),
            f"  fate names from: {self.fate_names_source}"
            + (f"; {self.n_renormalised} rows renormalised" if self.n_renormalised else ""),
        ]
        if self.unmapped_guides:
            shown = ", ".join(self.unmapped_guides[:5]) + (" ..." if len(self.unmapped_guides) > 5 else "")
            lines.append(f"  {len(self.unmapped_guides)} guides in the matrix but not in the map (ignored): {shown}")
        if self.map_guides_absent:
            shown = ", ".join(self.map_guides_absent[:5]) + (" ..." if len(self.map_guides_absent) > 5 else "")
            lines.append(f"  {len(self.map_guides_absent)} map guides absent from the matrix: {shown}")
        lines.extend(guide_input_lines(self.guide_input))
        return "\n".join(lines)


@dataclass(frozen=True)
class Experiment:
    """A loaded, validated experiment: what the model is fitted to."""

    cells: FilteredCells
    guides: GuideEmbedding
    summary: LoadSummary
    #: Cells dropped at load (columns ``cell``, ``reason``); None when not known.
    dropped_cells: pd.DataFrame | None = None
    #: The guides as read from a guide file or assigned from counts, written beside the run
    #: (:class:`fatebias_core.data.assignment.GuideFiles`); None for the obsm matrix.
    guide_files: Any = None

    @property
    def n_cells(self) -> int:
        return self.cells.n_cells

    def subset(self, idx: np.ndarray) -> Experiment:
        """The cells at ``idx`` as a new experiment (summary unchanged)."""
        idx = np.asarray(idx)
        return Experiment(self.cells.subset(idx), self.guides.subset(idx), self.summary, self.dropped_cells)


def center_by_group(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """``values`` minus the mean of ``values`` within each group, as float32."""
    values = np.asarray(values, dtype=np.float64)
    counts = np.bincount(group, minlength=n_groups)
    sums = np.bincount(group, weights=values, minlength=n_groups)
    means = np.divide(sums, counts, out=np.zeros(n_groups), where=counts > 0)
    return (values - means[group]).astype(np.float32)


# --------------------------------------------------------------------------- guide input lines
def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:g}"


def _file_line(f: dict) -> str:
    how = ", ".join(f"{k} {v}" for k, v in f["how"].items()) or "none"
    text = f"{f['file']}: {f['matched']} of {f['barcodes']} barcodes matched ({how})"
    if f["unmatched"]:
        text += f"; {f['unmatched']} not in the AnnData (e.g. {', '.join(f['unmatched_examples'])})"
    return text


def guide_input_lines(info: dict) -> list[str]:
    """The load summary's lines on where the guides came from and their QC (``LoadSummary.guide_input``)."""
    if not info:
        return []
    lines = [f"  guides from: {info.get('source')} {info.get('where', '')}".rstrip()]
    lines += [f"    {_file_line(f)}" for f in info.get("files", [])]
    if info.get("cells_not_in_files"):
        lines.append(f"    {info['cells_not_in_files']} cells of the AnnData are in no guide file (kept, without guides)")
    if info.get("empty_guides_dropped"):
        dropped = info["empty_guides_dropped"]
        lines.append(f"    {len(dropped)} guides without UMIs dropped (drop_empty_guides): {', '.join(dropped[:5])}")
    a = info.get("assignment")
    if a:
        params = ", ".join(f"{k}={v}" for k, v in a["params"].items())
        when = "reused from guide_assignment.h5ad" if a["reused"] else f"in {a['runtime_s']:g} s"
        lines.append(f"  assignment: {a['library']} {a['method']} ({a['function']} {params}) {when}")
    qc = info.get("qc") or {}
    if not qc:
        return lines
    g = qc["guides_per_cell"]
    hist = ", ".join(f"{k}: {v:.1%}" for k, v in g["share_of_cells"].items())
    lines.append(f"  guides per cell (MOI): mean {g['mean']:g}, median {g['median']:g}, 90% {g['p90']:g}, max {g['max']}; cells with {hist}")
    c = qc["cells_per_guide"]
    lines.append(
        f"  cells per guide: min {c['min']}, median {c['median']:g}, max {c['max']} ({c['guides_under_10_cells']} guides in fewer than 10 cells); "
        f"{qc['cells_without_guides']} cells without a guide"
    )
    lines.append(f"  NTC: {qc['ntc']['share_of_detected']:.1%} of detected guides, in {qc['ntc']['share_of_cells']:.1%} of cells")
    if "umis" in qc:
        u, t, d = qc["umis"], qc["thresholds"], qc["detection"]
        lines.append(
            f"  UMIs of detected guides: median {_fmt(u['assigned_median'])} (10% {_fmt(u['assigned_q10'])}, 90% {_fmt(u['assigned_q90'])}); "
            f"non-zero but not detected: {u['unassigned_share_of_nonzero']:.1%} of entries, median {_fmt(u['unassigned_median'])}"
        )
        lib = f"; crispat's fitted thresholds median {_fmt(t['library_median'])}" if "library_median" in t else ""
        lines.append(f"  thresholds ({t['from']}, per guide and batch): median {_fmt(t['median'])}, range {_fmt(t['min'])}-{_fmt(t['max'])}{lib}")
        if d["n_estimated"]:
            lines.append(
                f"  detection (truncated Poisson on detected UMIs, {d['n_estimated']} guide x batch): median {d['median']:.3f}, 10% {d['q10']:.3f}"
            )
    return lines


@dataclass
class DiagnosticsResult:
    """Everything :func:`~fatebias_core.checks.diagnostics.run_diagnostics` found; ``diagnostics.json`` holds :meth:`to_dict`.

    Attributes
    ----------
    heldout
        The held-out comparison (``checks.heldout.HeldOutResult``), or None when not run.
    permutation
        The permutation control (``checks.permutation.PermutationResult``), or None.
    sanity
        The sanity checks of known regulators (``checks.sanity.SanityResult``), or None.
    path
        Where ``diagnostics.json`` was written.
    runtime_s
        Seconds the diagnostics took.
    ntc
        The NTC check's summary (``ntc_check.json``), or None.
    """

    # Typed Any: their classes live in the checks package, a layer above this module.
    heldout: Any
    permutation: Any
    sanity: Any
    path: Path
    runtime_s: float = 0.0
    ntc: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ntc_calibration": self.ntc,
            "heldout": None if self.heldout is None else self.heldout.to_dict(),
            "permutation": None if self.permutation is None else self.permutation.to_dict(),
            "sanity": None if self.sanity is None else self.sanity.to_dict(),
            "runtime_s": round(self.runtime_s, 3),
        }

    def describe(self) -> str:
        """A few human-readable lines per check."""
        lines = [f"diagnostics ({self.runtime_s:.0f} s): {self.path}"]
        if self.ntc is not None:
            n = self.ntc
            lines.append(
                f"  NTC check: 90% intervals of {n['n']} NTC pseudo-gene/days cover 0 in {n['coverage_90']:.1%}, "
                f"p {n['p_value']:.2g} - " + ("ok" if n["calibrated"] else "NOT CALIBRATED: the intervals are not trusted")
            )
        if self.heldout is not None:
            s = self.heldout.scores
            verdict = "full model better" if s.full_better else "full model NOT better"
            lines.append(
                f"  held-out cross-entropy ({s.n_cells} cells, {s.n_clones} clones): full {s.ce_full:.5f}, nuisance-only {s.ce_nuisance:.5f}, "
                f"difference {s.difference:.5f} +/- {s.difference_se:.5f} ({verdict}; floor {s.entropy:.5f})"
            )
            per_day = ", ".join(f"{r.day} {r.difference:+.4f}" for r in s.per_day.itertuples())
            lines.append(f"    per day (nuisance - full): {per_day}")
        if self.permutation is not None:
            p = self.permutation
            real = "" if p.n_hits_real is None else f" (real run: {p.n_hits_real})"
            modes = ", ".join(f"{m} {n}" for m, n in p.hits_by_mode.items())
            lines.append(
                f"  permutation control (guide sets of {p.n_units} units permuted within {p.n_strata} strata, "
                f"{p.n_cells_moved} cells moved): {p.n_hits} hits{real}, "
                f"{p.n_gene_days_called} gene-days called; by mode: {modes}; "
                + ("passed" if p.passed else f"FAILED (more than {p.allowed_hits} hits)")
            )
            if p.hit_genes:
                lines.append(f"    permuted hits: {', '.join(p.hit_genes[:20])}" + (" ..." if len(p.hit_genes) > 20 else ""))
        if self.sanity is not None:
            san = self.sanity
            if not san.checks or san.source is None:
                lines.append(f"  sanity checks: {san.note}")
            else:
                lines.append(
                    f"  sanity checks ({san.source}, lfsr from {san.lfsr_from}): {san.count('pass')} of "
                    f"{len(san.checks)} pass, {san.count('wrong_sign')} wrong sign, "
                    f"{san.count('not_detected')} not detected, {san.count('missing')} missing"
                )
                for c in san.checks:
                    if c.status != "missing":
                        lines.append(
                            f"    {c.gene:<14} expected {c.expected_sign:+d}: {c.status} "
                            f"(best day {c.best_day}, lfsr {c.min_lfsr:.2g}, mean {c.postmean[c.best_day]:+.3f})"
                        )
                if san.note:
                    lines.append(f"    note: {san.note}")
        return "\n".join(lines)


@dataclass
class EffectDraws:
    """Posterior draws of the effects: ``theta`` (S, L, K, D) and ``delta`` (S, G, K)."""

    theta: np.ndarray
    delta: np.ndarray
    gene_of_guide: np.ndarray  # (G,) 0-based

    @property
    def beta(self) -> np.ndarray:
        """Guide effects (S, G, K, D)."""
        return self.theta[:, self.gene_of_guide] + self.delta[..., None]


@dataclass
class FitResult:
    """A fitted posterior with everything needed to export without refitting.

    Attributes
    ----------
    posterior
        The fitted posterior (``model.guides.MeanFieldPosterior`` or
        ``model.laplace.LaplacePosterior``/``BootstrapPosterior``): its parameters.
    elbo
        Negative ELBO per step (the loss SVI minimised).
    fates, ref_fate, contrast_fates, day_labels, rep_labels, gene_names, guide_names
        Labels of the fitted dimensions.
    gene_of_guide
        (G,) 0-based gene index of each guide.
    day_counts
        Cells per day in the fitted data.
    info
        Run facts: steps, runtime, device, convergence, settings.

    ``model.fit_io.write_fit`` writes it and ``load_fit`` reads it back;
    ``model.inference.predict_fates`` gives its fate probabilities for cells.
    """

    # Typed Any: the posterior classes live in model/, a layer above this module.
    posterior: Any
    elbo: np.ndarray
    fates: list[str]
    ref_fate: str
    contrast_fates: list[str]
    day_labels: list[str]
    rep_labels: list[str]
    gene_names: list[str]
    guide_names: list[str]
    gene_of_guide: np.ndarray
    day_counts: np.ndarray
    guide_effects: bool = True
    info: dict = field(default_factory=dict)

    # ----------------------------------------------------------------- draws
    def sample_effects(self, n_draws: int, seed: int = 0, tail: float | None = None) -> EffectDraws:
        """Draw ``n_draws`` posterior samples of theta and delta (seeded, reproducible).

        ``tail``: with a cluster-robust Laplace posterior, the one-sided tail probability
        at which its intervals are widened to Student-t (the calls' strictest threshold).
        """
        if not self.guide_effects:
            raise FitError("this fit is the nuisance-only model: it has no gene or guide effects")
        rng = np.random.default_rng(seed)
        extra = {"tail": tail} if tail is not None and self.posterior.family == "laplace" else {}
        theta, delta = self.posterior.sample_effects(n_draws, rng, self.gene_of_guide, len(self.gene_names), **extra)
        return EffectDraws(theta=theta, delta=delta, gene_of_guide=self.gene_of_guide)

    def point(self) -> dict[str, np.ndarray]:
        """Point values (posterior median or mode) of a, b, c and, with guide effects, theta and delta."""
        return self.posterior.point(self.gene_of_guide, len(self.gene_names))

    def median_effects(self) -> tuple[np.ndarray, np.ndarray]:
        """theta (L, K, D) and beta (G, K, D) at the point values."""
        p = self.point()
        return p["theta"], p["theta"][self.gene_of_guide] + p["delta"][..., None]

    def warm_start(self) -> dict[str, np.ndarray]:
        """Values of every latent site (constrained space) at this fit's point, to start another fit from.

        The posterior median of a mean-field fit; for a Laplace/bootstrap fit its mode,
        with the non-centred z and eps recovered from theta and the variance
        hyperparameters the mode was computed with.
        """
        post = self.posterior
        if post.family == "meanfield":
            return post.median_sites()
        p = post.params
        out = {k: np.asarray(p[k]) for k in ("a", "b", "c")}
        if self.guide_effects:
            tau, st, theta = np.asarray(p["hyper_tau"]), np.asarray(p["hyper_sigma_time"]), np.asarray(p["theta"])
            out.update(
                tau=tau, sigma_time=st, sigma_guide=np.asarray(p["hyper_sigma_guide"]), u=np.asarray(p["u"]),
                z=theta[..., 0] / tau, eps=np.diff(theta, axis=-1) / st[None],
            )
        return out
