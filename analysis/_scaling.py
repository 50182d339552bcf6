"""Threshold-versus-learning-rate scaling: fit λ_th = c·η^α in log-log space.

The papers measure the Hessian threshold λ_th at which bifurcation cascades start for runs at
several learning rates η and find λ_th ∝ η^(−0.9…−1) (SCIENCE.md). `fit_threshold_scaling`
fits the power law by least squares of log λ_th on log η, with a bootstrap confidence interval
of the exponent that resamples whole runs (seeds) when `groups` labels them, and compares the
thresholds with the optimizer's own stability limit (`stability_limit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import xarray as xr

__all__ = [
    "OPTIMIZERS",
    "ScalingFit",
    "ThresholdPoints",
    "collect_thresholds",
    "fit_threshold_scaling",
    "fit_threshold_scaling_runs",
    "stability_limit",
]

OPTIMIZERS = ("gd", "momentum", "nesterov")


class ScalingFit(NamedTuple):
    """Power-law fit λ_th = prefactor · η^exponent (log-log least squares).

    Fields:
        exponent: fitted α.
        prefactor: fitted c (so λ_th = c at η = 1).
        ci_low, ci_high: bootstrap confidence interval of the exponent (percentile method).
        r2: coefficient of determination of the fit in log-log space.
        eos_ratio: median over the points of λ_th divided by the optimizer's stability limit at
            that point's η (1 means the thresholds sit exactly on the edge of stability).
    """

    exponent: float
    prefactor: float
    ci_low: float
    ci_high: float
    r2: float
    eos_ratio: float


class ThresholdPoints(NamedTuple):
    """Measured thresholds gathered from several runs, one entry per onset.

    Fields:
        learning_rates: η at each onset (the run's `learning_rate` at the onset step, else the
            config's `learning_rate`), shape (n,).
        thresholds: λ at each onset (see `analysis.threshold` for which steps count), shape (n,).
        groups: index of the run each point comes from (position in the list of runs), shape (n,).
        optimizer: the runs' optimizer name (`"gd"` when no run's config says otherwise).
        momentum: the runs' momentum β (ignored by `"gd"`).
    """

    learning_rates: np.ndarray
    thresholds: np.ndarray
    groups: np.ndarray
    optimizer: str
    momentum: float


def _check_optimizer(optimizer: str, momentum: float) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS} (got {optimizer!r}).")
    if optimizer != "gd" and not (0.0 <= float(momentum) < 1.0):
        raise ValueError(
            f"momentum must be in [0, 1) for optimizer {optimizer!r} (got {momentum})."
        )


def stability_limit(
    learning_rate: float | np.ndarray, optimizer: str = "gd", momentum: float = 0.9
) -> float | np.ndarray:
    """Largest stable curvature of the quadratic model for an optimizer (SCIENCE.md).

    Gradient descent: 2/η. Heavy-ball momentum β: (2 + 2β)/η. Nesterov momentum β:
    (2 + 2β)/((1 + 2β)η).

    Args:
        learning_rate: η > 0, a number or an array.
        optimizer: `"gd"`, `"momentum"` or `"nesterov"`.
        momentum: β in [0, 1); ignored by `"gd"`.

    Returns:
        The limit, with the shape of `learning_rate` (a float for a scalar η).
    """
    _check_optimizer(optimizer, momentum)
    eta = np.asarray(learning_rate, dtype=float)
    if np.any(~np.isfinite(eta)) or np.any(eta <= 0):
        raise ValueError(f"learning_rate must be finite and > 0 (got {learning_rate}).")
    beta = float(momentum)
    if optimizer == "gd":
        numerator = 2.0 * np.ones_like(eta)
    elif optimizer == "momentum":
        numerator = (2.0 + 2.0 * beta) * np.ones_like(eta)
    else:
        numerator = (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta) * np.ones_like(eta)
    limit = numerator / eta
    return float(limit) if limit.ndim == 0 else limit


MIN_BOOTSTRAP_UNITS = 3
"""Fewest points (or groups) for which :func:`fit_threshold_scaling` reports an interval."""


def _weighted_slopes(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares slopes and intercepts, one fit per row of `weights` (B, n)."""
    total = weights.sum(axis=1, keepdims=True)
    xm = (weights * x).sum(axis=1, keepdims=True) / total
    ym = (weights * y).sum(axis=1, keepdims=True) / total
    sxx = (weights * (x - xm) ** 2).sum(axis=1)
    sxy = (weights * (x - xm) * (y - ym)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(sxx > 1e-12 * np.maximum(1.0, np.abs(x).max() ** 2), sxy / sxx, np.nan)
    intercept = ym[:, 0] - slope * xm[:, 0]
    return slope, intercept


def fit_threshold_scaling(
    learning_rates: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    *,
    groups: Sequence[object] | np.ndarray | None = None,
    optimizer: str = "gd",
    momentum: float = 0.9,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ScalingFit:
    """Fit λ_th = c·η^α by least squares of log λ_th on log η, with a bootstrap CI of α.

    One entry per measured threshold: a run contributes one point per onset (or one per run, if
    the caller averaged first). Points are weighted equally.

    Args:
        learning_rates: η of each point, > 0.
        thresholds: λ_th of each point, > 0 (same length as `learning_rates`).
        groups: optional label of each point's run (seed). When given, each bootstrap replicate
            resamples whole groups with replacement (points of one run are correlated), else it
            resamples points. Same length as `learning_rates`.
        optimizer: `"gd"`, `"momentum"` or `"nesterov"`: which stability limit `eos_ratio` uses.
        momentum: β for the momentum optimizers (ignored by `"gd"`).
        num_bootstrap: number of bootstrap replicates (≥ 1). Replicates that happen to contain a
            single distinct η carry no slope and are dropped. The interval is NaN (unknown)
            with fewer than 3 resampled units (points, or groups when given) or when more
            than half the replicates are dropped: the rest would be copies of the data.
        confidence: width of the percentile interval, in (0, 1).
        seed: seed of the bootstrap's random generator (the fit itself is deterministic).

    Returns:
        `ScalingFit(exponent, prefactor, ci_low, ci_high, r2, eos_ratio)`.

    Raises:
        ValueError: on a length mismatch, non-finite or non-positive values, fewer than two
            distinct learning rates, or a bad option.
    """
    eta = np.asarray(learning_rates, dtype=float).ravel()
    lam = np.asarray(thresholds, dtype=float).ravel()
    if eta.shape != lam.shape:
        raise ValueError(
            f"learning_rates and thresholds must have the same length (got {eta.size} "
            f"learning_rates and {lam.size} thresholds)."
        )
    if np.any(~np.isfinite(eta)) or np.any(eta <= 0):
        raise ValueError(
            f"learning_rates must be finite and > 0 (got {eta[~(np.isfinite(eta) & (eta > 0))]})."
        )
    if np.any(~np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError(
            f"thresholds must be finite and > 0 (got {lam[~(np.isfinite(lam) & (lam > 0))]}); "
            "drop onsets without λ values before fitting."
        )
    if np.unique(eta).size < 2:
        raise ValueError(
            f"fit_threshold_scaling needs at least 2 distinct learning_rates "
            f"(got {np.unique(eta).size}: {np.unique(eta)})."
        )
    if int(num_bootstrap) < 1:
        raise ValueError(f"num_bootstrap must be >= 1 (got {num_bootstrap}).")
    if not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0, 1) (got {confidence}).")
    _check_optimizer(optimizer, momentum)

    x, y = np.log(eta), np.log(lam)
    slope, intercept = _weighted_slopes(x, y, np.ones((1, x.size)))
    exponent, log_prefactor = float(slope[0]), float(intercept[0])
    if not np.isfinite(exponent):
        raise ValueError(
            "fit_threshold_scaling needs at least 2 distinct learning_rates; the given ones "
            f"differ by rounding only ({np.unique(eta)}: a float32 and a float64 run of one η?)."
        )
    residual = y - (log_prefactor + exponent * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0

    rng = np.random.default_rng(seed)
    if groups is None:
        weights = rng.multinomial(x.size, np.full(x.size, 1.0 / x.size), size=int(num_bootstrap))
    else:
        group_array = np.asarray(groups).ravel()
        if group_array.shape != eta.shape:
            raise ValueError(
                f"groups must have one label per point (got {group_array.size} labels for "
                f"{eta.size} points)."
            )
        _, member = np.unique(group_array, return_inverse=True)
        num_groups = int(member.max()) + 1
        counts = rng.multinomial(
            num_groups, np.full(num_groups, 1.0 / num_groups), size=int(num_bootstrap)
        )
        weights = counts[:, member]
    units = x.size if groups is None else num_groups
    boot_slopes, _ = _weighted_slopes(x, y, weights.astype(float))
    boot_slopes = boot_slopes[np.isfinite(boot_slopes)]
    # With fewer than 3 resampled units, or most replicates holding a single η, the kept
    # replicates are (nearly) the data itself: their spread is not an uncertainty.
    if units >= MIN_BOOTSTRAP_UNITS and boot_slopes.size >= 0.5 * int(num_bootstrap):
        tail = 50.0 * (1.0 - float(confidence))
        ci_low, ci_high = (float(v) for v in np.percentile(boot_slopes, [tail, 100.0 - tail]))
    else:
        ci_low = ci_high = float("nan")

    eos_ratio = float(np.median(lam / stability_limit(eta, optimizer, momentum)))
    return ScalingFit(exponent, float(np.exp(log_prefactor)), ci_low, ci_high, r2, eos_ratio)


def collect_thresholds(
    runs: Sequence[xr.Dataset],
    *,
    method: str = "alternation",
    eigen_index: int = 1,
    at: str | None = None,
    **detect_options: object,
) -> ThresholdPoints:
    """Detect onsets in each run and gather (η, λ) pairs, one per onset with a finite λ.

    Args:
        runs: run Datasets (run-file conventions), each with `loss` and `hessian_eigenvalues`.
        method: onset detector (see `analysis.detect_onsets`).
        eigen_index: which eigenvalue is the threshold's λ (1 = λ_max).
        at: which steps' λ count (see `analysis.threshold`); None picks the method's default.
        **detect_options: passed on to `detect_onsets`.

    Returns:
        `ThresholdPoints(learning_rates, thresholds, groups, optimizer, momentum)`; optimizer and
        momentum come from the runs' configs (they must agree across runs).
    """
    from analysis._onsets import detect_onsets, run_config
    from analysis._threshold import threshold_samples

    if len(runs) == 0:
        raise ValueError("runs must contain at least one run Dataset (got an empty sequence).")
    etas: list[np.ndarray] = []
    lams: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    optimizers: set[tuple[str, float]] = set()
    for position, run in enumerate(runs):
        onsets = detect_onsets(run, method=method, **detect_options)
        values, _, eta = threshold_samples(onsets, eigen_index=eigen_index, at=at)
        config = run_config(run)
        optimizer = str(config.get("optimizer") or "gd")
        beta = config.get("momentum")
        momentum = float(0.9 if beta is None else beta) if optimizer != "gd" else 0.0
        optimizers.add((optimizer, momentum))
        keep = np.isfinite(values) & np.isfinite(eta)
        etas.append(eta[keep])
        lams.append(values[keep])
        groups.append(np.full(int(keep.sum()), position))
    if len(optimizers) > 1:
        raise ValueError(
            f"runs must share one optimizer and momentum to be fitted together (got "
            f"{sorted(optimizers)}); fit each optimizer separately."
        )
    optimizer, momentum = optimizers.pop()
    return ThresholdPoints(
        np.concatenate(etas), np.concatenate(lams), np.concatenate(groups), optimizer, momentum
    )


def fit_threshold_scaling_runs(
    runs: Sequence[xr.Dataset],
    *,
    method: str = "alternation",
    eigen_index: int = 1,
    at: str | None = None,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    **detect_options: object,
) -> ScalingFit:
    """Detect onsets in every run, take their thresholds and fit λ_th = c·η^α across runs.

    Each onset with a finite λ gives one point (η read from the run's `learning_rate` at the
    onset step, else from its config); the bootstrap resamples runs. The optimizer and momentum
    for `eos_ratio` come from the runs' configs.

    Returns:
        The `ScalingFit` of `fit_threshold_scaling` on the collected points.
    """
    points = collect_thresholds(
        runs, method=method, eigen_index=eigen_index, at=at, **detect_options
    )
    return fit_threshold_scaling(
        points.learning_rates,
        points.thresholds,
        groups=points.groups,
        optimizer=points.optimizer,
        momentum=points.momentum if points.optimizer != "gd" else 0.9,
        num_bootstrap=num_bootstrap,
        confidence=confidence,
        seed=seed,
    )
