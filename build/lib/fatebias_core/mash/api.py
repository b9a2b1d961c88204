"""Library entry points: mash and ash on tables and on CSV files.

``mash_table`` / ``ash_table`` take and return DataFrames (the pipeline calls these);
``mash_file`` / ``ash_file`` read and write CSVs atomically (the CLI calls these).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import InputDataError
from fatebias_core.io import PathLike, read_csv, write_csv

from .ash import AshFit, ash_with_settings
from .csv_out import write_output
from .modes import ModeFit, ModeSettings, NativeBackend, run_mode
from .table import assemble_output, parse_ash_input, parse_daywise


@dataclass(frozen=True)
class MashResult:
    """Output table and fit information of :func:`mash_table`.

    Attributes
    ----------
    table
        Input columns + ``postmean_<day>``, ``postsd_<day>``, ``lfsr_<day>``,
        ``lfsr_min``, ``best_day``, then ``plarge_<day>`` (P(|effect| >= eps) under the
        posterior mixture, eps = ``effect_size_eps``) and ``plarge_eps`` (that eps).
    fit
        The mode fit: settings, V used, covariances, mixture weights, log-likelihood,
        fallback and messages.
    """

    table: pd.DataFrame
    fit: ModeFit

    @property
    def V(self) -> np.ndarray:
        """The null correlation used."""
        return self.fit.V

    @property
    def covariance_names(self) -> tuple[str, ...]:
        """Covariances of the prior."""
        return self.fit.result.covariance_names

    @property
    def mixture_weights(self) -> dict[str, float]:
        """Mixture weight per covariance (summed over the grid)."""
        return self.fit.result.weights

    @property
    def loglik(self) -> float:
        """Log-likelihood of the fit."""
        return self.fit.result.loglik

    @property
    def fallback(self) -> str | None:
        """Why the fit fell back to identity V and canonical covariances, if it did."""
        return self.fit.fallback

    @property
    def messages(self) -> tuple[str, ...]:
        """Notes from the run (V fallback, strong-set gating, retry)."""
        return self.fit.messages

    def describe(self) -> str:
        """A short human summary."""
        f = self.fit
        n_hits = int((self.table["lfsr_min"] < 0.05).sum())
        n_dd = sum(n.startswith("ED_") for n in self.covariance_names)
        covs = f"{len(self.covariance_names)} covariances ({len(self.covariance_names) - n_dd} canonical"
        covs += f", {n_dd} data-driven)" if n_dd else ")"
        lines = [
            f"mash {f.settings.mode} ({f.backend}): {self.table.shape[0]} rows x {len(f.conditions)} days "
            f"({', '.join(f.conditions)})",
            f"  V: {f.V_source}{_offdiag(f.V)}; SE x {f.settings.se_inflate:g}, floor {f.settings.se_floor:g}",
            f"  prior: {f.settings.prior}" + (f" (nullweight {f.settings.nullweight:g})" if f.settings.prior == "nullbiased" else "")
            + f", point mass {'on' if f.settings.usepointmass else 'off'}; {covs}",
        ]
        if f.result.n_strong is not None:
            lines.append(f"  strong rows (1by1 lfsr < {f.settings.strong_lfsr:g}): {f.result.n_strong}")
        if f.fallback:
            lines.append(f"  FALLBACK: {f.fallback}")
        lines.append(f"  log-likelihood {self.loglik:.4f}; rows with lfsr_min < 0.05: {n_hits}")
        return "\n".join(lines)


@dataclass(frozen=True)
class AshResult:
    """Output table and fit of :func:`ash_table`.

    Attributes
    ----------
    table
        Input columns + ``postmean``, ``postsd``, ``lfsr``, ``qvalue``.
    fit
        The ash fit (also holds lfdr and the s-value).
    """

    table: pd.DataFrame
    fit: AshFit

    def describe(self) -> str:
        """A short human summary."""
        n = self.table.shape[0]
        n_lfsr = int((self.fit.lfsr < 0.05).sum())
        n_hit = int(((self.fit.lfsr < 0.05) & (self.fit.qvalue < 0.10)).sum())
        null = (self.fit.a == 0) & (self.fit.b == 0) if self.fit.mixcompdist != "normal" else self.fit.mixsd == 0
        prior = f"{self.fit.mixcompdist} mixture, " + (
            f"null weight {self.fit.pi[null].sum():.4f}" if null.any() else "no point mass (lfdr and q are 0)"
        )
        return (
            f"ash: {n} rows; {prior}, {self.fit.pi.size} components; "
            f"lfsr < 0.05: {n_lfsr}; lfsr < 0.05 and q < 0.10: {n_hit}"
        )


def _offdiag(V: np.ndarray) -> str:
    off = V[~np.eye(V.shape[0], dtype=bool)]
    if off.size == 0 or not np.any(off):
        return ""
    return f" (off-diagonal {off.min():.3f} to {off.max():.3f})"


def mash_table(df: pd.DataFrame, mode: str, config: FatebiasConfig) -> MashResult:
    """mash on a daywise table, in one of the two modes.

    Parameters
    ----------
    df
        ``betahat_<day>`` and ``se_<day>`` for two or more days; other columns are
        carried through.
    mode
        ``conservative`` or ``enriched``.
    config
        Settings (``mash_*``); ``mash_backend`` picks native or R; ``effect_size_eps``
        is the eps of the ``plarge_<day>`` columns.

    Returns
    -------
    MashResult
    """
    settings = ModeSettings.from_config(config, mode)
    table = parse_daywise(df)
    if config.mash_backend == "r":
        from .rbackend import RBackend

        backend = RBackend()
    else:
        backend = NativeBackend()
    fit = run_mode(table.Bhat, table.Shat, settings, conditions=table.days, backend=backend)
    post = fit.result.posterior
    out = assemble_output(df, table, post.mean, post.sd, post.lfsr, post.plarge, post.eps)
    return MashResult(out, fit)


def ash_table(df: pd.DataFrame, config: FatebiasConfig | None = None) -> AshResult:
    """Univariate ash on an across-day summary (``betahat``, ``sebetahat``; other columns kept).

    Adds ``postmean``, ``postsd``, ``lfsr`` and ``qvalue`` (ashr's q-value, computed
    from the local false discovery rates). ``config.ash_settings`` picks the prior:
    ``default`` (ashr's defaults: normal mixture with a point mass at zero) or ``seed``
    (the seed pipeline's ``mixcompdist = "halfuniform", pointmass = FALSE,
    prior = "uniform", grange = range(betahat)``; no point mass, so lfdr and the
    q-value are 0 for every row and "lfsr < 0.05 and q < 0.10" is lfsr < 0.05 alone).
    """
    config = config or FatebiasConfig()
    b, s = parse_ash_input(df)
    fit = ash_with_settings(b, s, config.ash_settings)
    out = df.reset_index(drop=True).copy()
    out["postmean"] = fit.postmean
    out["postsd"] = fit.postsd
    out["lfsr"] = fit.lfsr
    out["qvalue"] = fit.qvalue
    return AshResult(out, fit)


def mash_file(input: PathLike, output: PathLike, mode: str = "conservative", config: FatebiasConfig | None = None) -> MashResult:
    """Read a daywise CSV, run :func:`mash_table`, write the result atomically."""
    config = config or FatebiasConfig()
    df = read_csv(input, what="mash input")
    try:
        res = mash_table(df, mode, config)
    except InputDataError as exc:
        raise InputDataError(f"{input}: {exc}") from None
    write_output(res.table, df, input, output)
    return res


def ash_file(input: PathLike, output: PathLike, config: FatebiasConfig | None = None) -> AshResult:
    """Read an across-day summary CSV, run :func:`ash_table`, write the result atomically."""
    df = read_csv(input, what="ash input")
    try:
        res = ash_table(df, config)
    except InputDataError as exc:
        raise InputDataError(f"{input}: {exc}") from None
    write_csv(res.table, output)
    return res
