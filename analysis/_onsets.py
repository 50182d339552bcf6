"""Bifurcation-onset detection on run Datasets (the project's own definitions, SCIENCE.md).

An instability shows as F(t) − F(t−1) splitting into two branches that the system visits
alternately, then four, eight, … (a period-doubling cascade). Three detectors find the steps at
which such episodes start and end; all need only a per-step `loss` (or another variable) and use
`hessian_eigenvalues`, `gamma`, `learning_rate` and the config attribute when present.

Sampling: every detector assumes one record per training step (the `step` coordinate runs
0, 1, 2, … without gaps). `hessian_eigenvalues` may be NaN on untracked steps; λ values at a
step are then the last tracked value at or before it. Loss values are the mean-form losses of
SCIENCE.md; only `lambda_jump` depends on their units.

The kernels work on plain numpy arrays (vectorised: a 70,000-step run takes milliseconds); the
public `detect_onsets` reads the Dataset once and wraps the result in a Dataset once.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from curvature._checks import integer_at_least

__all__ = ["METHODS", "branch_labels", "detect_onsets", "run_config"]

STEP = "step"
CLASS = "class"
EIGEN_INDEX = "eigen_index"
ONSET = "onset"
DOUBLING = "doubling"
METHODS = ("alternation", "lambda_jump", "branches")

# Branch labels of `branch_labels`: 1 = no oscillation, 0 = oscillation without a period
# among the tested ones (aperiodic/chaotic), p ≥ 2 = period p.
SMOOTH = 1
APERIODIC = 0


class _Episodes(NamedTuple):
    start: np.ndarray  # int positions (inclusive)
    end: np.ndarray  # int positions (inclusive)


def run_config(run: xr.Dataset) -> dict[str, Any]:
    """The run's configuration dict parsed from the `config` attribute (empty when absent)."""
    raw = run.attrs.get("config")
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return dict(raw)
    try:
        config = json.loads(raw)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"run.attrs['config'] must be a JSON object string (could not parse it: {error})."
        ) from error
    if not isinstance(config, dict):
        raise ValueError(
            f"run.attrs['config'] must be a JSON object (got a {type(config).__name__})."
        )
    return config


# --------------------------------------------------------------------------- array kernels


def _window_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the finite entries in the centred window [t − window//2, t − window//2 + window).

    NaN where the window holds fewer than half its length of finite entries (edges, gaps).
    Summed window by window (not by differences of a cumulative sum), so values spanning many
    orders of magnitude, as in a diverging cascade, keep their precision.
    """
    n = values.size
    if n == 0:
        return np.full(0, np.nan)
    half = window // 2
    padded = np.full(n + window - 1, np.nan)
    padded[half : half + n] = values
    view = np.lib.stride_tricks.sliding_window_view(padded, window)
    valid = np.isfinite(view)
    counts = valid.sum(axis=1)
    sums = np.where(valid, view, 0.0).sum(axis=1)
    out = np.full(n, np.nan)
    enough = counts >= max(1, (window + 1) // 2)
    out[enough] = sums[enough] / counts[enough]
    return out


def _runs(mask: np.ndarray) -> _Episodes:
    """Start and end positions (inclusive) of the maximal runs of True in a boolean array."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.diff(padded)
    return _Episodes(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1)


def _merge(episodes: _Episodes, merge_gap: int, min_length: int) -> _Episodes:
    """Merge episodes separated by at most `merge_gap` positions, then drop short ones."""
    start, end = episodes
    if start.size == 0:
        return episodes
    gaps = start[1:] - end[:-1] - 1
    new = np.concatenate(([True], gaps > merge_gap))
    merged_start = start[new]
    merged_end = np.maximum.reduceat(end, np.flatnonzero(new))
    keep = merged_end - merged_start + 1 >= min_length
    return _Episodes(merged_start[keep], merged_end[keep])


def _run_bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position, the first and last position of the run of True containing it."""
    n = mask.size
    index = np.arange(n)
    previous = np.concatenate(([False], mask[:-1]))
    following = np.concatenate((mask[1:], [False]))
    first = np.maximum.accumulate(np.where(mask & ~previous, index, 0))
    last = np.minimum.accumulate(np.where(mask & ~following, index, n - 1)[::-1])[::-1]
    return first, last


def _turning_points(x: np.ndarray, min_amplitude: float) -> np.ndarray:
    """True at t when F(t) is a strict local extremum: ΔF(t) and ΔF(t+1) have opposite signs.

    Both |ΔF| must be at least `min_amplitude` × |F| at their steps (rounding noise of a flat
    loss is ~1e-7 |F| in float32, so it never counts).
    """
    delta = np.diff(x)
    floor = min_amplitude * np.maximum(np.abs(x[1:]), np.abs(x[:-1]))
    with np.errstate(invalid="ignore"):
        big = np.isfinite(delta) & (np.abs(delta) >= floor) & (delta != 0)
    turn = np.zeros(x.size, dtype=bool)
    turn[1:-1] = big[:-1] & big[1:] & (np.sign(delta[:-1]) != np.sign(delta[1:]))
    return turn


def _drop_decaying(x: np.ndarray, episodes: _Episodes, window: int) -> _Episodes:
    """Drop decaying transients: oscillation that starts at its largest and fades, unannounced.

    Three conditions, all needed: (1) the centred-window mean A of |ΔF| over the first window
    inside the episode is ≥ 0.9 × its largest A inside the episode (episodes shorter than two
    windows compare the mean |ΔF| of their halves instead), (2) A of the last window is at most
    half that of the first, and (3) the alternating component |ΔF(t) − ΔF(t−1)| did not grow
    into the onset: its mean over the 4 steps before the onset is less than twice its mean over
    the half window before those (no data before the onset counts as no growth). A decaying
    transient (sign-flipping convergence of a mode with factor 1 − ηλ in (−1, 0) after a kick,
    e.g. right after initialisation) meets all three; an instability, even one that flares up
    within a few steps and then dies out as Γ returns to 1, grows visibly before its first
    turning point (its alternation is first hidden by the loss's drift).
    """
    if episodes.start.size == 0:
        return episodes
    delta = np.zeros(x.size)
    delta[1:] = np.nan_to_num(np.abs(np.diff(x)), nan=0.0, posinf=0.0)
    alternating = np.zeros(x.size)
    alternating[2:] = np.nan_to_num(np.abs(np.diff(x, n=2)), nan=0.0, posinf=0.0)
    amplitude = _window_mean(delta, window)
    half = window // 2
    keep = np.ones(episodes.start.size, dtype=bool)
    for i, (s, e) in enumerate(zip(episodes.start, episodes.end, strict=True)):
        if e - s + 1 >= 2 * window:
            inside = amplitude[s + half : e + 1 - (window - half)]
            starts_largest = inside[0] >= 0.9 * inside.max()
            fades = inside[-1] <= 0.5 * inside[0]
        else:
            middle = (s + e + 1) // 2
            first, second = delta[s + 1 : middle + 1], delta[middle + 1 : e + 1]
            starts_largest = first.size > 0 and second.size > 0 and first.mean() >= second.mean()
            fades = starts_largest and second.mean() <= 0.5 * first.mean()
        recent = alternating[max(s - 4, 0) : s]
        earlier = alternating[max(s - 4 - half, 0) : max(s - 4, 0)]
        grew = recent.size > 0 and earlier.size > 0 and recent.mean() >= 2.0 * earlier.mean()
        keep[i] = not (starts_largest and fades and not grew)
    return _Episodes(episodes.start[keep], episodes.end[keep])


def _alternation_episodes(
    x: np.ndarray,
    *,
    window: int,
    min_fraction: float,
    min_amplitude: float,
    merge_gap: int,
    min_length: int,
) -> _Episodes:
    """Episodes of sustained step-to-step sign alternation of ΔF (see `detect_onsets`)."""
    turn = _turning_points(x, min_amplitude)
    fraction = _window_mean(np.where(np.isfinite(x), turn.astype(float), np.nan), window)
    mask = fraction >= min_fraction
    episodes = _merge(_runs(mask), merge_gap, 1)
    if episodes.start.size == 0 or not turn.any():
        return _Episodes(np.array([], dtype=int), np.array([], dtype=int))
    # Extend each episode to the unbroken alternation that leads into and out of it, and trim it
    # to its first and last turning point.
    first, last = _run_bounds(turn)
    turn_index = np.flatnonzero(turn)
    starts, ends = [], []
    for s, e in zip(episodes.start, episodes.end, strict=True):
        inside = turn_index[(turn_index >= s) & (turn_index <= e)]
        if inside.size == 0:
            continue
        starts.append(first[inside[0]])
        ends.append(last[inside[-1]])
    return _merge(_Episodes(np.array(starts), np.array(ends)), merge_gap, min_length)


def branch_labels(
    x: np.ndarray,
    *,
    window: int = 32,
    tolerance: float = 0.05,
    max_period: int = 16,
    min_amplitude: float = 1e-5,
    detrend: bool = True,
) -> np.ndarray:
    """Per-step branch count of a sequence: 1, 2, 4, … or 0 for aperiodic oscillation.

    With `detrend` (default) the test runs on y(t) = x(t) − x(t−1), which removes a linear trend
    exactly (a period-p orbit riding on a drifting loss is period p in y), else on x itself.
    For p in 1, 2, 4, …, `max_period` let S_p(t) be the centred-window mean of |y(s) − y(s−p)|.
    The label at t is
    - 1 (no oscillation) when S_1 ≤ `min_amplitude` × the window mean of |x| (flat, or rounding
      noise);
    - else the smallest p ≥ 2 with S_p ≤ `tolerance` · S_1 (the sequence cycles through p values);
    - else 1 when S_2 ≥ S_1 (y moves steadily: a smooth, curved x);
    - else 0: oscillation without a period up to `max_period` (chaos, or a longer period).
    A period-p orbit whose branches are split by less than `tolerance` of its step-to-step
    change counts as period p/2: doublings are recognised once the new branches separate by
    that fraction.

    Args:
        x: the sequence, one entry per step (NaN entries count as missing).
        window: centred-window length in steps (≥ 2; at least 2·`max_period` is sensible).
        tolerance: relative tolerance of the period test, in (0, 1).
        max_period: largest period tested, a power of two ≥ 2.
        min_amplitude: oscillation smaller than this fraction of |x| counts as flat.
        detrend: test the first difference of x (default) rather than x.

    Returns:
        int64 labels of shape x.shape.
    """
    x = np.asarray(x, dtype=float)
    y = np.full(x.size, np.nan)
    if detrend:
        y[1:] = np.diff(x)
    else:
        y[:] = x
    periods = [1 << k for k in range(1, int(np.log2(max_period)) + 1)]

    def lagged_mean(p: int) -> np.ndarray:
        d = np.full(x.size, np.nan)
        d[p:] = np.abs(y[p:] - y[:-p])
        return _window_mean(d, window)

    s1 = lagged_mean(1)
    level = _window_mean(np.abs(x), window)
    labels = np.full(x.size, -1, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        labels[~(s1 > min_amplitude * level)] = SMOOTH
        s2 = lagged_mean(2)
        for p in periods:
            sp = s2 if p == 2 else lagged_mean(p)
            labels[(labels < 0) & (sp <= tolerance * s1)] = p
        labels[(labels < 0) & (s2 >= s1)] = SMOOTH
    labels[labels < 0] = APERIODIC
    return labels


def _branch_episodes(
    labels: np.ndarray, *, window: int, merge_gap: int, min_length: int
) -> _Episodes:
    """Episodes of oscillation (label ≠ 1) holding at least `window // 2` periodic steps."""
    episodes = _merge(_runs(labels != SMOOTH), merge_gap, min_length)
    periodic = np.concatenate(([0], np.cumsum(labels >= 2)))
    count = periodic[episodes.end + 1] - periodic[episodes.start]
    keep = count >= max(1, window // 2)
    start, end = episodes.start[keep], episodes.end[keep]
    # Trim each episode to its first and last periodic step.
    periodic_index = np.flatnonzero(labels >= 2)
    starts = periodic_index[np.searchsorted(periodic_index, start)]
    ends = periodic_index[np.searchsorted(periodic_index, end, side="right") - 1]
    return _Episodes(starts, ends)


def _lambda_jump_episodes(
    lam: np.ndarray, *, tolerance: float, merge_gap: int, min_length: int
) -> _Episodes:
    """Episodes where |λ(t) − λ(t_prev)| ≥ tolerance between consecutive tracked samples."""
    tracked = np.flatnonzero(np.isfinite(lam))
    if tracked.size < 2:
        return _Episodes(np.array([], dtype=int), np.array([], dtype=int))
    jumps = np.abs(np.diff(lam[tracked])) >= tolerance
    jump_steps = tracked[1:][jumps]
    if jump_steps.size == 0:
        return _Episodes(np.array([], dtype=int), np.array([], dtype=int))
    new = np.concatenate(([True], np.diff(jump_steps) > merge_gap + 1))
    starts = jump_steps[new]
    ends = jump_steps[np.concatenate((np.flatnonzero(new)[1:] - 1, [jump_steps.size - 1]))]
    keep = ends - starts + 1 >= min_length
    return _Episodes(starts[keep], ends[keep])


def _forward_fill(values: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Last finite value at or before each row (per column); NaN before the first.

    With ``limit``, a value is carried at most ``limit`` rows forward (NaN beyond).
    """
    values = np.asarray(values, dtype=float)
    squeeze = values.ndim == 1
    if squeeze:
        values = values[:, None]
    index = np.arange(values.shape[0])[:, None]
    last = np.maximum.accumulate(np.where(np.isfinite(values), index, -1), axis=0)
    filled = np.take_along_axis(values, np.maximum(last, 0), axis=0)
    filled[last < 0] = np.nan
    if limit is not None:
        filled[index - last > limit] = np.nan
    return filled[:, 0] if squeeze else filled


def _tracking_interval(values: np.ndarray) -> int:
    """Median spacing of the rows where λ was tracked (1 when tracked at most once)."""
    tracked = np.flatnonzero(np.isfinite(np.asarray(values, dtype=float)).any(axis=-1))
    return int(np.median(np.diff(tracked))) if tracked.size > 1 else 1


def _gamma_periods(gamma: np.ndarray) -> np.ndarray:
    """Period index per step from Γ(step, class): one period per stretch of one class in focus.

    The class in focus is argmax Γ wherever the classes differ. A stretch of steps with Γ ≡ 1
    (all equal) between two focused stretches is split at its middle, the first half going to
    the period before and the rest to the period after: exact for the triangle and sine
    schedules (Γ ≡ 1 at the one step where a period begins, which goes to the period after) and
    for the square one (Γ ≡ 1 over the last quarter of a period and the first quarter of the
    next). Steps before the first focused one belong to the first period; steps after the last
    one get −1 (oscillation stopped).
    """
    n = gamma.shape[0]
    finite = np.all(np.isfinite(gamma), axis=1)
    spread = np.where(finite, np.nanmax(gamma, axis=1) - np.nanmin(gamma, axis=1), 0.0)
    scale = max(1.0, float(np.nanmax(np.abs(gamma))) if finite.any() else 1.0)
    neutral = ~finite | (spread <= 1e-6 * scale)
    focus = np.where(neutral, -1, np.argmax(np.where(finite[:, None], gamma, -np.inf), axis=1))
    previous = np.concatenate(([-1], focus[:-1]))
    new_segment = ~neutral & (focus != previous)
    segment = np.cumsum(new_segment) - 1
    index = np.arange(n)
    next_focused = np.minimum.accumulate(np.where(~neutral, index, n)[::-1])[::-1]
    last_focused = np.maximum.accumulate(np.where(~neutral, index, -1))
    periods = np.full(n, -1, dtype=np.int64)
    periods[~neutral] = segment[~neutral]
    ahead = neutral & (next_focused < n)
    periods[ahead] = segment[next_focused[ahead]]
    # Between two focused stretches: the first half of the neutral stretch to the period before.
    between = ahead & (last_focused >= 0)
    length = next_focused - last_focused - 1
    behind = between & (index - last_focused <= length // 2)
    periods[behind] = segment[last_focused[behind]]
    return periods


def _period_indices(run: xr.Dataset, steps: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Period index of each step: config `period`, else from `gamma`, else −1 (see module)."""
    period = config.get("period")
    oscillating = config.get("schedule", "triangle") != "constant" and (
        config.get("amplitude") is None or float(config["amplitude"]) != 1.0
    )
    if period is not None and oscillating and float(period) > 0:
        # floor(t / T) as the schedule computes it: T may be fractional (T = T0 / η).
        periods = np.floor(steps / float(period)).astype(np.int64)
        stop_after = config.get("stop_after")
        if stop_after is not None:
            periods[steps >= int(stop_after)] = -1
        return periods
    if "gamma" in run and CLASS in run["gamma"].dims:
        gamma = np.asarray(run["gamma"].transpose(STEP, CLASS).values, dtype=float)
        return _gamma_periods(gamma)
    return np.full(steps.size, -1, dtype=np.int64)


# --------------------------------------------------------------------------- validation


def _check_fraction(name: str, value: float, *, closed_low: bool, closed_high: bool) -> float:
    value = float(value)
    low_ok = value >= 0 if closed_low else value > 0
    high_ok = value <= 1 if closed_high else value < 1
    if not (low_ok and high_ok):
        interval = ("[" if closed_low else "(") + "0, 1" + ("]" if closed_high else ")")
        raise ValueError(f"{name} must be in {interval} (got {value}).")
    return value


def _read_series(run: xr.Dataset, variable: str) -> np.ndarray:
    if variable not in run.data_vars:
        raise ValueError(
            f"run has no {variable!r} variable (its variables are {sorted(run.data_vars)}); "
            f"detect_onsets needs a per-step {variable!r}(step) series."
        )
    array = run[variable]
    if array.dims != (STEP,):
        raise ValueError(
            f"{variable!r} must have exactly the dimension ('step',) (got {array.dims})."
        )
    return np.asarray(array.values, dtype=float)


# --------------------------------------------------------------------------- public API


def detect_onsets(
    run: xr.Dataset,
    *,
    method: str = "alternation",
    variable: str = "loss",
    window: int = 32,
    min_fraction: float = 0.9,
    min_amplitude: float = 1e-5,
    tolerance: float = 0.1,
    branch_tolerance: float = 0.05,
    max_period: int = 16,
    merge_gap: int | None = None,
    min_length: int | None = None,
    drop_decaying: bool = True,
) -> xr.Dataset:
    """Find the bifurcation episodes of a run: onset and end steps, λ there, branch counts.

    Methods (the project's own definitions; the 2021 paper defines only `"lambda_jump"`):

    - `"alternation"` (default): F(t) is a turning point when ΔF(t) = F(t) − F(t−1) and
      ΔF(t+1) have opposite signs and both |ΔF| are at least `min_amplitude` × |F| (rounding
      noise of a flat loss never counts). An episode is where the fraction of turning points in
      a centred window of `window` steps is ≥ `min_fraction`; it is extended to the unbroken run
      of turning points leading into and out of it, so `onset_step` is the first step of
      sustained alternation and `end_step` its last. Independent of the loss units and of η.
      Failure modes: alternation weaker than the loss's own drift is invisible (sign alternation
      needs the oscillation of ΔF to exceed the trend), so the onset lags the instability while
      the oscillation grows; cascades closer than `merge_gap` merge; a loss with a large
      constant offset makes the |F|-relative amplitude floor too strict.
    - `"lambda_jump"`: the 2021 paper's criterion on λ_max = `hessian_eigenvalues` at
      `eigen_index` 1: steps t with |λ_max(t) − λ_max(t−1)| ≥ `tolerance` (0.1 as in the paper)
      mark instabilities; jumps at most `merge_gap` steps apart form one episode from its first
      to its last jump, and episodes spanning fewer than `min_length` steps are dropped. The
      threshold is then the mean λ_max at those start and end steps (`analysis.threshold`). It
      depends on the loss units (mean vs sum over samples) and on η (λ scales like 1/η, so one
      tolerance is relatively smaller at small η); an early transient or a class switch that
      moves λ_max by more than the tolerance in one step counts as an instability. With sparse
      tracking the difference is between consecutive tracked samples, and a single isolated
      jump (an episode of one sample) is dropped by the default `min_length` of 2 steps.
    - `"branches"`: per-step branch counts of `variable` from `branch_labels` (period p is the
      smallest p in 2, 4, …, `max_period` with windowed |y(t) − y(t−p)| ≤ `branch_tolerance` ×
      windowed |y(t) − y(t−1)|, y = ΔF); an episode is a stretch of oscillating steps
      (label ≠ 1, gaps ≤ `merge_gap` merged) of at least `min_length` steps holding at least
      `window // 2` periodic steps, trimmed to its first and last periodic step. Onsets lag
      while the orbit's amplitude still changes by more than `branch_tolerance` per period
      (about a window for an orbit growing linearly from zero); periods above `max_period`
      and chaos count as aperiodic; a drifting orbit whose step-to-step change of ΔF varies
      by more than `branch_tolerance` within a window is not recognised as periodic (a
      cascade that dies out within a few dozen steps may then be missed: use `"alternation"`).

    With `drop_decaying` (alternation and branches), episodes whose oscillation is largest at
    their start, has halved by their end and did not grow into their onset are dropped: that
    is sign-flipping convergence (a mode with factor 1 − ηλ in (−1, 0) decaying after a kick,
    e.g. the first steps of training), not an instability (details in `_drop_decaying`).
    Cascades that flare up within a few steps and die out as Γ returns to 1 are kept: their
    alternation grows, hidden by the loss's drift, before the first turning point.

    For every episode, whatever the method, the cascade is measured with `branch_labels` on
    `variable`: `branches` is the largest period reached (0 if none was recognised) and
    `doubling_step(onset, doubling)` the first step where period p (coordinate `doubling`) held
    for `window // 4` consecutive steps. Which eigenvalue triggered each doubling (when
    `hessian_eigenvalues` exist): with the episode's threshold λ_th = λ_1 at onset, the trigger
    of the doubling at step s is the number of eigenvalues whose larger value over steps s−1, s
    (both branches) is ≥ λ_th, i.e. the index of the smallest eigenvalue above threshold (the
    2021 supplement's observation: λ_2 crossing triggers the second doubling, λ_3 the third).
    It is −1 without λ data or when no eigenvalue is above λ_th.

    Period indices: `step // period` from the config attribute's `period` (−1 from `stop_after`
    on, and everywhere for a constant schedule or amplitude 1), else one period per stretch of
    one class in focus in `gamma`, else −1.

    λ at a step s (`lambda_at_onset`, `lambda_at_end`) is the mean of λ over steps s − 1 and s
    for `"alternation"` and `"branches"`: once the system alternates, λ evaluated on the two
    branches differs (by several percent at the onset of a cascade), and their mean is the
    curvature of the orbit's centre. For `"lambda_jump"` it is λ at step s itself, as in the
    paper (its marks are the steps where λ_max jumped; the two-step mean would move each mark
    by half its jump).

    Sampling: one record per step is assumed (`step` 0, 1, 2, … without gaps; NaN losses break
    alternation). λ values at a step are the last tracked value at or before it, carried at
    most one tracking interval (the median spacing of the tracked steps, i.e. `track_every`)
    forward; an onset farther than that from any λ sample (λ computed post hoc at a few chosen
    checkpoints) gets NaN λ rather than a stale one. λ computed post hoc at every checkpoint
    is carried over the checkpoint spacing: track online for λ at the onset itself.

    Args:
        run: a run Dataset (run-file conventions) or any Dataset with `variable(step)`.
        method: `"alternation"`, `"lambda_jump"` or `"branches"`.
        variable: per-step series to analyse (`"loss"`; `"train_accuracy"` also works).
        window: window length in steps (≥ 2) for alternation fractions and branch statistics.
        min_fraction: fraction of turning points in a window that counts as alternation, (0, 1].
        min_amplitude: smallest oscillation that counts, relative to |F|, in [0, 1).
        tolerance: `lambda_jump` tolerance on |Δλ_max| in the loss's λ units, > 0.
        branch_tolerance: relative tolerance of the period test, in (0, 1).
        max_period: largest period tested, a power of two ≥ 2.
        merge_gap: episodes separated by at most this many steps are merged (default
            `window`; for `lambda_jump` the larger of `window` and twice the tracking
            interval, so that jumps at consecutive tracked samples form one episode).
        min_length: shortest episode kept, in steps (default `window // 2`; 2 for
            `lambda_jump`). Cascades at the end of short periods can last only a few dozen
            steps.
        drop_decaying: drop decaying transients (see above; not applied to `lambda_jump`).

    Returns:
        A Dataset with dim `onset` (and `eigen_index`, `doubling`) holding `onset_step`,
        `end_step`, `period_index` (int64, −1 if unknown), `lambda_at_onset` and
        `lambda_at_end` ((onset, eigen_index) when the run has `hessian_eigenvalues`, else
        (onset,) all NaN), `learning_rate_at_onset` and `learning_rate_at_end` (from
        `learning_rate(step)` or the config, else NaN), `branches`, `aperiodic_steps` (steps
        of the episode labelled aperiodic), `doubling_step` and `doubling_trigger` ((onset,
        doubling), −1 where not reached or unknown). Attributes record the method, variable,
        parameters, optimizer and momentum (from the config; gd if absent) and the run's
        config.

    Raises:
        TypeError: if `run` is not an xarray Dataset.
        ValueError: on an unknown method, a missing variable, `lambda_jump` without
            `hessian_eigenvalues`, a step coordinate with gaps, or a parameter out of range.
    """
    if not isinstance(run, xr.Dataset):
        raise TypeError(f"run must be an xarray.Dataset (got {type(run).__name__}).")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (got {method!r}).")
    window = integer_at_least("window", window, 2)
    min_fraction = _check_fraction("min_fraction", min_fraction, closed_low=False, closed_high=True)
    min_amplitude = _check_fraction(
        "min_amplitude", min_amplitude, closed_low=True, closed_high=False
    )
    if not (np.isfinite(tolerance) and tolerance > 0):
        raise ValueError(
            f"tolerance must be > 0 (got {tolerance}); it is the |Δλ_max| per step that marks "
            "an instability for method='lambda_jump'."
        )
    branch_tolerance = _check_fraction(
        "branch_tolerance", branch_tolerance, closed_low=False, closed_high=False
    )
    max_period = integer_at_least("max_period", max_period, 2)
    if max_period & (max_period - 1):
        raise ValueError(f"max_period must be a power of two >= 2 (got {max_period}).")
    if merge_gap is not None:
        merge_gap = integer_at_least("merge_gap", merge_gap, 0)
    default_length = 2 if method == "lambda_jump" else max(2, window // 2)
    min_length = (
        default_length if min_length is None else integer_at_least("min_length", min_length, 1)
    )

    x = _read_series(run, variable)
    steps = np.asarray(run[STEP].values if STEP in run.coords else np.arange(x.size))
    if steps.size > 1 and np.any(np.diff(steps) != 1):
        gap = int(np.flatnonzero(np.diff(steps) != 1)[0])
        raise ValueError(
            "detect_onsets assumes one record per training step, but the step coordinate is "
            f"not consecutive (step {steps[gap]} is followed by {steps[gap + 1]}); reindex "
            "the run on every step or analyse a run logged at every step."
        )
    has_lambda = "hessian_eigenvalues" in run.data_vars
    if method == "lambda_jump" and not has_lambda:
        raise ValueError(
            "method='lambda_jump' needs a 'hessian_eigenvalues' variable (track the Hessian "
            "with TrainConfig(hessian_top_k=...) or add analysis.hessian_trajectory(run)); "
            "use method='alternation' or 'branches' on runs without it."
        )
    lam = None
    eigen_indices = np.array([], dtype=np.int64)
    if has_lambda:
        eig = run["hessian_eigenvalues"]
        if set(eig.dims) != {STEP, EIGEN_INDEX}:
            raise ValueError(
                "hessian_eigenvalues must have the dimensions ('step', 'eigen_index') "
                f"(got {eig.dims})."
            )
        eig = eig.transpose(STEP, EIGEN_INDEX)
        eigen_indices = np.asarray(
            eig[EIGEN_INDEX].values if EIGEN_INDEX in eig.coords else np.arange(1, eig.shape[1] + 1)
        )
        if eigen_indices.size and (eigen_indices.min() < 1 or 1 not in eigen_indices):
            raise ValueError(
                "eigen_index must count from 1 (λ_max is eigen_index 1, the run-file "
                f"convention; got {eigen_indices.tolist()[:8]}); assign "
                "eigen_index=np.arange(1, k + 1)."
            )
        lam = np.asarray(eig.values, dtype=float)
    if merge_gap is None:
        # For lambda_jump, jumps at consecutive tracked samples (and one sample apart) belong
        # to one episode whatever the tracking interval.
        sparse = 2 * _tracking_interval(lam) if method == "lambda_jump" else 0
        merge_gap = max(window, sparse)

    labels = branch_labels(
        x,
        window=window,
        tolerance=branch_tolerance,
        max_period=max_period,
        min_amplitude=min_amplitude,
    )
    if method == "alternation":
        episodes = _alternation_episodes(
            x,
            window=window,
            min_fraction=min_fraction,
            min_amplitude=min_amplitude,
            merge_gap=merge_gap,
            min_length=min_length,
        )
    elif method == "branches":
        episodes = _branch_episodes(
            labels, window=window, merge_gap=merge_gap, min_length=min_length
        )
    else:
        first = int(np.flatnonzero(eigen_indices == 1)[0]) if 1 in eigen_indices else 0
        episodes = _lambda_jump_episodes(
            lam[:, first], tolerance=tolerance, merge_gap=merge_gap, min_length=min_length
        )
    if drop_decaying and method != "lambda_jump":
        episodes = _drop_decaying(x, episodes, window)

    config = run_config(run)
    periods_of_step = _period_indices(run, steps, config)
    start, end = episodes.start.astype(np.int64), episodes.end.astype(np.int64)
    count = start.size
    doublings = np.array([1 << k for k in range(1, int(np.log2(max_period)) + 1)])

    # Cascade structure from the branch labels inside each episode.
    sustain = max(1, window // 4)
    branches = np.zeros(count, dtype=np.int64)
    aperiodic = np.zeros(count, dtype=np.int64)
    doubling_step = np.full((count, doublings.size), -1, dtype=np.int64)
    for i, (s, e) in enumerate(zip(start, end, strict=True)):
        segment = labels[s : e + 1]
        aperiodic[i] = int(np.sum(segment == APERIODIC))
        for j, p in enumerate(doublings):
            runs = _runs(segment == p)
            long_enough = runs.end - runs.start + 1 >= min(sustain, segment.size)
            if long_enough.any():
                doubling_step[i, j] = s + int(runs.start[long_enough][0])
                branches[i] = p

    data: dict[str, Any] = {
        "onset_step": ((ONSET,), steps[start] if count else start),
        "end_step": ((ONSET,), steps[end] if count else end),
        "period_index": ((ONSET,), periods_of_step[start]),
        "branches": ((ONSET,), branches),
        "aperiodic_steps": ((ONSET,), aperiodic),
        "doubling_step": (
            (ONSET, DOUBLING),
            np.where(doubling_step >= 0, steps[np.maximum(doubling_step, 0)], -1)
            if count
            else doubling_step,
        ),
    }
    trigger = np.full((count, doublings.size), -1, dtype=np.int64)
    coords: dict[str, Any] = {ONSET: np.arange(count), DOUBLING: doublings}
    if lam is not None:
        # Carried forward over the tracking interval (track_every), no farther: a λ sampled
        # thousands of steps before an onset says nothing about the curvature at it.
        filled = _forward_fill(lam, limit=_tracking_interval(lam))
        previous = np.vstack((filled[:1], filled[:-1]))
        if method == "lambda_jump":
            # The paper's marks are steps where λ_max jumped: λ_max at those very steps.
            paired = filled
        else:
            # Both branches: the mean of λ over steps s−1 and s (NaN-aware).
            paired = np.where(
                np.isfinite(previous) & np.isfinite(filled), 0.5 * (filled + previous), filled
            )
        at_onset = paired[start] if count else np.empty((0, lam.shape[1]))
        at_end = paired[end] if count else np.empty((0, lam.shape[1]))
        data["lambda_at_onset"] = ((ONSET, EIGEN_INDEX), at_onset)
        data["lambda_at_end"] = ((ONSET, EIGEN_INDEX), at_end)
        coords[EIGEN_INDEX] = eigen_indices
        first = int(np.flatnonzero(eigen_indices == 1)[0]) if 1 in eigen_indices else 0
        both = np.fmax(filled, previous)
        for i in range(count):
            lam_th = at_onset[i, first]
            if not np.isfinite(lam_th):
                continue
            for j in range(doublings.size):
                s = doubling_step[i, j]
                if s >= 0:
                    above = int(np.sum(both[s] >= lam_th))
                    trigger[i, j] = above if above > 0 else -1
    else:
        data["lambda_at_onset"] = ((ONSET,), np.full(count, np.nan))
        data["lambda_at_end"] = ((ONSET,), np.full(count, np.nan))
    data["doubling_trigger"] = ((ONSET, DOUBLING), trigger)

    if "learning_rate" in run.data_vars and run["learning_rate"].dims == (STEP,):
        recorded = _forward_fill(np.asarray(run["learning_rate"].values, dtype=float))
        eta, eta_end = recorded[start], recorded[end]
    elif "learning_rate" in config:
        eta = eta_end = np.full(count, float(config["learning_rate"]))
    else:
        eta = eta_end = np.full(count, np.nan)
    data["learning_rate_at_onset"] = ((ONSET,), eta)
    data["learning_rate_at_end"] = ((ONSET,), eta_end)

    parameters = {
        "window": window,
        "min_fraction": min_fraction,
        "min_amplitude": float(min_amplitude),
        "drop_decaying": bool(drop_decaying),
        "tolerance": float(tolerance),
        "branch_tolerance": branch_tolerance,
        "max_period": max_period,
        "merge_gap": merge_gap,
        "min_length": min_length,
    }
    result = xr.Dataset(data, coords=coords)
    result.attrs = {
        "method": method,
        "variable": variable,
        "parameters": json.dumps(parameters),
        "sampling": "one record per training step assumed",
        "optimizer": str(config.get("optimizer") or "gd"),
        "momentum": float(config.get("momentum") if config.get("momentum") is not None else 0.9),
    }
    if "config" in run.attrs:
        result.attrs["run_config"] = (
            run.attrs["config"] if isinstance(run.attrs["config"], str) else json.dumps(config)
        )
    result["onset_step"].attrs["long_name"] = "first step of the instability"
    result["end_step"].attrs["long_name"] = "last step of the instability"
    result["period_index"].attrs["long_name"] = "oscillation period of the onset (-1: unknown)"
    result["branches"].attrs["long_name"] = "largest number of branches reached (0: aperiodic)"
    result["doubling_step"].attrs["long_name"] = "first step with that many branches (-1: never)"
    result["doubling_trigger"].attrs["long_name"] = (
        "eigen_index whose crossing of the onset's lambda triggered the doubling (-1: unknown)"
    )
    result["lambda_at_onset"].attrs["long_name"] = "Hessian eigenvalues at the onset step"
    result["lambda_at_end"].attrs["long_name"] = "Hessian eigenvalues at the end step"
    result["learning_rate_at_onset"].attrs["long_name"] = "learning rate at the onset step"
    result["learning_rate_at_end"].attrs["long_name"] = "learning rate at the end step"
    return result
