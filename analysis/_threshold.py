"""The curvature threshold λ_th of a run: mean Hessian eigenvalue at the instability onsets."""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import xarray as xr

from analysis._onsets import EIGEN_INDEX, detect_onsets

__all__ = ["AT_CHOICES", "Threshold", "threshold", "threshold_samples"]

PERIOD = "period"
AT_CHOICES = ("onset", "end", "both")


class Threshold(NamedTuple):
    """λ_th of one run with its spread, overall and per oscillation period.

    Fields:
        mean: λ_th, the mean of `values` (NaN when there are none).
        std: sample standard deviation of `values` (ddof = 1; NaN with fewer than two).
        count: number of λ samples averaged.
        values: the λ samples (finite only), shape (count,).
        steps: the step of each sample, shape (count,).
        per_period: Dataset on dim `period` (the onsets' `period_index`, −1 = unknown) with
            variables `mean`, `std` and `count` of the samples of each period.
    """

    mean: float
    std: float
    count: int
    values: np.ndarray
    steps: np.ndarray
    per_period: xr.Dataset


def _default_at(onsets: xr.Dataset) -> str:
    return "both" if onsets.attrs.get("method") == "lambda_jump" else "onset"


def threshold_samples(
    onsets: xr.Dataset, *, eigen_index: int = 1, at: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The λ samples behind a threshold, with their steps and learning rates.

    Args:
        onsets: a `detect_onsets` result with λ values (`lambda_at_onset(onset, eigen_index)`).
        eigen_index: which eigenvalue (1 = λ_max).
        at: `"onset"` (λ at each onset step), `"end"` (at each end step) or `"both"` (the 2021
            paper's average over start and finish marks). None: `"both"` for onsets found by
            `"lambda_jump"`, `"onset"` otherwise.

    Returns:
        `(values, steps, learning_rates)`, one entry per sample, NaN values included (with
        `at="both"` the onset samples come first, then the end samples).
    """
    if not isinstance(onsets, xr.Dataset) or "lambda_at_onset" not in onsets:
        raise ValueError(
            "onsets must be the Dataset returned by detect_onsets (it has no 'lambda_at_onset')."
        )
    at = _default_at(onsets) if at is None else at
    if at not in AT_CHOICES:
        raise ValueError(f"at must be one of {AT_CHOICES} or None (got {at!r}).")
    if EIGEN_INDEX not in onsets["lambda_at_onset"].dims:
        raise ValueError(
            "the onsets carry no Hessian eigenvalues (the run had no 'hessian_eigenvalues'); "
            "a threshold needs λ values: track the Hessian or add "
            "analysis.hessian_trajectory(run) before detecting onsets."
        )
    available = np.asarray(onsets[EIGEN_INDEX].values)
    if eigen_index not in available:
        raise ValueError(
            f"eigen_index must be one of the onsets' eigen_index values {available.tolist()} "
            f"(got {eigen_index!r})."
        )
    names = ["onset", "end"] if at == "both" else [at]
    values = [
        np.asarray(onsets[f"lambda_at_{n}"].sel({EIGEN_INDEX: eigen_index}).values, float)
        for n in names
    ]
    steps = [np.asarray(onsets[f"{n}_step"].values) for n in names]
    # Onsets detected before learning_rate_at_end existed carry only the onset's η.
    etas = [
        np.asarray(onsets.get(f"learning_rate_at_{n}", onsets["learning_rate_at_onset"]), float)
        for n in names
    ]
    return np.concatenate(values), np.concatenate(steps), np.concatenate(etas)


def threshold(
    run_or_onsets: xr.Dataset,
    *,
    eigen_index: int = 1,
    at: str | None = None,
    **detect_options: object,
) -> Threshold:
    """λ_th of a run: the mean λ at its instability onsets, with std and count, per period too.

    Args:
        run_or_onsets: a `detect_onsets` result, or a run Dataset (then `detect_onsets(run,
            **detect_options)` runs first; the run needs `hessian_eigenvalues`).
        eigen_index: which eigenvalue (1 = λ_max, the papers' threshold).
        at: which steps' λ values are averaged: `"onset"`, `"end"` or `"both"` (start and finish,
            as the 2021 paper does). None: `"both"` for `"lambda_jump"` onsets, else `"onset"`.
        **detect_options: options of `detect_onsets` (only with a run).

    Returns:
        `Threshold(mean, std, count, values, steps, per_period)`; onsets whose λ is NaN (no
        tracked value at or before the step) are left out; no onsets give count 0, mean NaN.

    Raises:
        ValueError: when there are no λ values at all, for an unknown `at` or `eigen_index`, or
            when detection options come with onsets instead of a run.
    """
    if not isinstance(run_or_onsets, xr.Dataset):
        raise TypeError(
            f"run_or_onsets must be an xarray.Dataset (got {type(run_or_onsets).__name__})."
        )
    if "onset_step" in run_or_onsets:
        if detect_options:
            raise ValueError(
                f"detection options {sorted(detect_options)} apply only when a run is given; "
                "these onsets are already detected."
            )
        onsets = run_or_onsets
    else:
        onsets = detect_onsets(run_or_onsets, **detect_options)
    values, steps, _ = threshold_samples(onsets, eigen_index=eigen_index, at=at)
    at = _default_at(onsets) if at is None else at
    repeats = 2 if at == "both" else 1
    periods = np.tile(np.asarray(onsets["period_index"].values, dtype=np.int64), repeats)
    keep = np.isfinite(values)
    values, steps, periods = values[keep], steps[keep], periods[keep]

    def stats(sample: np.ndarray) -> tuple[float, float, int]:
        mean = float(sample.mean()) if sample.size else float("nan")
        std = float(sample.std(ddof=1)) if sample.size > 1 else float("nan")
        return mean, std, int(sample.size)

    labels = np.unique(periods)
    table = np.array([stats(values[periods == p]) for p in labels]).reshape(-1, 3)
    per_period = xr.Dataset(
        {
            "mean": ((PERIOD,), table[:, 0]),
            "std": ((PERIOD,), table[:, 1]),
            "count": ((PERIOD,), table[:, 2].astype(np.int64)),
        },
        coords={PERIOD: labels},
        attrs={
            "eigen_index": int(eigen_index),
            "at": at,
            "method": str(onsets.attrs.get("method", "")),
            "parameters": str(onsets.attrs.get("parameters", json.dumps({}))),
        },
    )
    mean, std, count = stats(values)
    return Threshold(mean, std, count, values, steps, per_period)
