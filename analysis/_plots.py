"""Figures of runs, thresholds, spectra and landscape sections (matplotlib).

Every function returns a `matplotlib.figure.Figure` and never calls `plt.show()`; save it with
`fig.savefig(path)`. Figures are built without pyplot (no global figure registry, no GUI
backend needed), so they work headless and never accumulate; Jupyter still displays a returned
Figure. Long step axes are decimated for drawing: the steps are cut into at most
`max_points` bins and each bin is drawn as its min/max envelope, so a 70,000-step run draws fast
and both branches of a bifurcation stay visible (the upper and lower edge of the envelope).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis._onsets import run_config
from analysis._scaling import ScalingFit, stability_limit
from curvature._checks import integer_at_least

__all__ = [
    "plot_gradient_projection",
    "plot_landscape_section",
    "plot_run",
    "plot_spectral_density",
    "plot_threshold_scaling",
]

STEP = "step"
CLASS = "class"
EIGEN_INDEX = "eigen_index"
NTK_EIGEN_INDEX = "ntk_eigen_index"

_ONSET_COLOR = "tab:green"
_END_COLOR = "tab:red"
#: Groups named one by one in the legend of `plot_threshold_scaling`; more share one entry.
MAX_GROUP_LEGEND = 10


def _envelope(
    x: np.ndarray, y: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min/max envelope of y over at most `max_points` bins of consecutive entries.

    Returns `(x_bin, low, high)`: the first x of each bin and the bin's min and max of the
    finite y values (NaN for bins without any). With at most `max_points` entries, returns
    `(x, y, y)` unchanged.
    """
    x = np.asarray(x)
    y = np.asarray(y, dtype=float)
    if y.size <= max_points:
        return x, y, y
    size = int(np.ceil(y.size / max_points))
    nbins = int(np.ceil(y.size / size))
    padded = np.full(nbins * size, np.nan)
    padded[: y.size] = y
    blocks = padded.reshape(nbins, size)
    finite = np.isfinite(blocks)
    low = np.where(finite, blocks, np.inf).min(axis=1)
    high = np.where(finite, blocks, -np.inf).max(axis=1)
    empty = ~finite.any(axis=1)
    low[empty] = np.nan
    high[empty] = np.nan
    return x[::size][:nbins], low, high


def _draw(
    ax: Axes,
    x: np.ndarray,
    y: np.ndarray,
    *,
    max_points: int,
    label: str | None = None,
    color: str | None = None,
    marker: str | None = None,
) -> None:
    """Draw one series, decimated to its min/max envelope when long; NaN entries are skipped.

    A series with points at fewer than a tenth of the steps (post-hoc values at a few
    checkpoints, sparse tracking) is drawn with markers, so that a single point shows.
    """
    keep = np.isfinite(np.asarray(y, dtype=float))
    if marker is None and keep.sum() < max(2, keep.size // 10):
        marker = "o"
    x, y = np.asarray(x)[keep], np.asarray(y, dtype=float)[keep]
    if y.size == 0:
        return
    xb, low, high = _envelope(x, y, max_points)
    if low is high:
        ax.plot(xb, y, lw=0.8, label=label, color=color, marker=marker, ms=2)
        return
    (line,) = ax.plot(xb, high, lw=0.6, label=label, color=color)
    ax.plot(xb, low, lw=0.6, color=line.get_color())
    ax.fill_between(xb, low, high, color=line.get_color(), alpha=0.3, lw=0)


def _run_config(run: xr.Dataset) -> dict:
    """The run's config dict, or {} when it is absent or unreadable (a figure still draws)."""
    try:
        return run_config(run)
    except ValueError:
        return {}


def _steps(run: xr.Dataset) -> np.ndarray:
    if STEP in run.coords:
        return np.asarray(run[STEP].values)
    return np.arange(run.sizes[STEP])


def _slice(run: xr.Dataset, window: tuple[int, int] | None) -> xr.Dataset:
    if window is None:
        return run
    start, stop = window
    steps = _steps(run)
    keep = (steps >= start) & (steps <= stop)
    return run.isel({STEP: np.flatnonzero(keep)})


def _onset_marks(onsets: xr.Dataset | None) -> tuple[np.ndarray, np.ndarray]:
    if onsets is None or "onset_step" not in onsets:
        return np.array([], dtype=int), np.array([], dtype=int)
    start = np.asarray(onsets["onset_step"].values)
    end = np.asarray(onsets["end_step"].values) if "end_step" in onsets else np.array([], int)
    return start[start >= 0], end[end >= 0]


def _mark(ax: Axes, marks: tuple[np.ndarray, np.ndarray], window: tuple[int, int] | None) -> None:
    for steps, color in zip(marks, (_ONSET_COLOR, _END_COLOR), strict=True):
        for s in steps:
            if window is None or window[0] <= s <= window[1]:
                ax.axvline(float(s), color=color, ls="--", lw=0.7, alpha=0.8)


def _panels(run: xr.Dataset) -> list[str]:
    names = []
    if "gamma" in run:
        names.append("gamma")
    if "loss" in run or "static_loss" in run:
        names.append("loss")
    if "loss" in run:
        names.append("delta")
    if any(v in run for v in ("train_accuracy", "val_accuracy")):
        names.append("accuracy")
    if "hessian_eigenvalues" in run:
        names.append("hessian")
    if "ntk_eigenvalues" in run:
        names.append("ntk")
    return names


def _threshold_value(onsets: xr.Dataset | None) -> float | None:
    if onsets is None or "lambda_at_onset" not in onsets:
        return None
    from analysis._threshold import threshold

    try:
        result = threshold(onsets)
    except ValueError:
        return None
    return result.mean if result.count > 0 else None


def _draw_panel(
    ax: Axes,
    name: str,
    run: xr.Dataset,
    *,
    max_points: int,
    eigen_count: int | None,
    threshold_value: float | None,
    config: dict,
) -> None:
    steps = _steps(run)
    if name == "gamma":
        gamma = run["gamma"].transpose(STEP, ...)
        classes = gamma[CLASS].values if CLASS in gamma.coords else range(gamma.shape[1])
        for column, cls in enumerate(classes):
            _draw(ax, steps, gamma.values[:, column], max_points=max_points, label=f"class {cls}")
        ax.set_ylabel("Γ_i(t)")
        ax.set_title("Γ per class")
    elif name == "loss":
        if "loss" in run:
            _draw(ax, steps, run["loss"].values, max_points=max_points, label="F (dynamical)")
        if "static_loss" in run:
            _draw(ax, steps, run["static_loss"].values, max_points=max_points, label="static loss")
        ax.set_ylabel("loss")
        ax.set_title("Loss F(t)")
    elif name == "delta":
        loss = np.asarray(run["loss"].values, dtype=float)
        delta = np.full_like(loss, np.nan)
        delta[1:] = np.diff(loss)
        _draw(ax, steps, delta, max_points=max_points, color="tab:purple")
        ax.set_ylabel("ΔF")
        ax.set_title("ΔF = F(t) − F(t−1)")
    elif name == "accuracy":
        for var, label in (("train_accuracy", "train"), ("val_accuracy", "validation")):
            if var in run:
                values = np.asarray(run[var].values, dtype=float)
                sparse = np.isfinite(values).sum() < 0.5 * values.size
                _draw(
                    ax,
                    steps,
                    values,
                    max_points=max_points,
                    label=label,
                    marker="o" if sparse else None,
                )
        ax.set_ylabel("accuracy")
        ax.set_title("Accuracy")
    elif name == "hessian":
        eig = run["hessian_eigenvalues"].transpose(STEP, ...)
        count = eig.shape[1] if eigen_count is None else min(eigen_count, eig.shape[1])
        indices = eig[EIGEN_INDEX].values if EIGEN_INDEX in eig.coords else np.arange(1, count + 1)
        for column in range(count):
            _draw(
                ax, steps, eig.values[:, column], max_points=max_points, label=f"λ{indices[column]}"
            )
        if threshold_value is not None:
            ax.axhline(threshold_value, color="k", ls="--", lw=0.9, label="threshold λ_th")
        _stability_line(ax, run, steps, config, max_points)
        ax.set_ylabel("Hessian eigenvalue")
        ax.set_title("Hessian λ_1…λ_k")
    elif name == "ntk":
        ntk = run["ntk_eigenvalues"].transpose(STEP, ...)
        _draw(ax, steps, ntk.values[:, 0], max_points=max_points, color="tab:brown")
        ax.set_ylabel("NTK λ_max")
        ax.set_title("NTK λ_max")


def _stability_line(
    ax: Axes, run: xr.Dataset, steps: np.ndarray, config: dict, max_points: int
) -> None:
    """Draw the optimizer's stability limit (2/η for gd) from `learning_rate(step)` or config."""
    optimizer = str(config.get("optimizer") or "gd")
    momentum = float(config.get("momentum") if config.get("momentum") is not None else 0.9)
    if "learning_rate" in run:
        eta = np.asarray(run["learning_rate"].values, dtype=float)
    elif "learning_rate" in config:
        eta = np.full(steps.shape, float(config["learning_rate"]))
    else:
        return
    positive = np.isfinite(eta) & (eta > 0)
    if not positive.any():
        return
    try:
        limit = np.full(eta.shape, np.nan)
        limit[positive] = stability_limit(eta[positive], optimizer, momentum)
    except ValueError:
        return
    label = {"gd": "2/η", "momentum": "(2+2β)/η", "nesterov": "(2+2β)/((1+2β)η)"}[optimizer]
    _draw(ax, steps, limit, max_points=max_points, color="0.4", label=f"stability {label}")
    ax.get_lines()[-1].set_linestyle(":")


def plot_run(
    run: xr.Dataset,
    *,
    onsets: xr.Dataset | None = None,
    zoom: tuple[int, int] | None = None,
    eigen_count: int | None = None,
    max_points: int = 4000,
    title: str | None = None,
) -> Figure:
    """The 2021 paper's Fig. 4 panel set for one run, drawing only the panels it can.

    Panels, top to bottom, each only when its variables are present: Γ per class (`gamma`);
    dynamical loss F and static loss; ΔF = F(t) − F(t−1); train/validation accuracy; Hessian
    λ_1…λ_k (`hessian_eigenvalues`) with the threshold λ_th (mean λ_1 at the onsets, when
    `onsets` is given) and the optimizer's stability line (2/η for gd, read from
    `learning_rate` and the config's optimizer); NTK λ_max (`ntk_eigenvalues`). Onsets are
    marked on every panel by green (start) and red (end) dashed lines, as in the paper.

    Args:
        run: a run Dataset on the `step` dimension (a user-built one with only `loss` works).
        onsets: the result of `detect_onsets` for this run, for the markers and threshold line.
        zoom: `(start, stop)` steps; adds a right-hand column with the same panels restricted
            to that range (the paper's panels g–l, one cascade).
        eigen_count: draw at most this many Hessian eigenvalues (default: all).
        max_points: decimation budget per series (min/max envelope per bin beyond it).
        title: figure title (default: the run's loss/schedule/η from its config, if any).

    Returns:
        The Figure (one row of axes per panel; two columns with `zoom`).
    """
    if not isinstance(run, xr.Dataset):
        raise TypeError(f"run must be an xarray.Dataset (got {type(run).__name__}).")
    if STEP not in run.dims:
        raise ValueError(
            f"run must have a 'step' dimension to be plotted (its dims are {tuple(run.dims)})."
        )
    panels = _panels(run)
    if not panels:
        raise ValueError(
            "run has none of the plottable variables (gamma, loss, static_loss, "
            "train_accuracy, val_accuracy, hessian_eigenvalues, ntk_eigenvalues)."
        )
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2 (got {max_points}).")
    if zoom is not None:
        if len(zoom) != 2 or not int(zoom[0]) < int(zoom[1]):
            raise ValueError(
                f"zoom must be a pair of steps (start, stop) with start < stop (got {zoom})."
            )
        zoom = (int(zoom[0]), int(zoom[1]))
    eigen_count = integer_at_least("eigen_count", eigen_count, 1, optional=True)
    config = _run_config(run)
    marks = _onset_marks(onsets)
    threshold_value = _threshold_value(onsets)
    columns = [None] if zoom is None else [None, zoom]
    fig = Figure(figsize=(7.0 * len(columns), 2.0 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), len(columns), sharex="col", squeeze=False)
    for column, window in enumerate(columns):
        part = _slice(run, window)
        for row, name in enumerate(panels):
            ax = axes[row, column]
            _draw_panel(
                ax,
                name,
                part,
                max_points=max_points,
                eigen_count=eigen_count,
                threshold_value=threshold_value,
                config=config,
            )
            _mark(ax, marks, window)
            if window is not None:
                ax.set_title(ax.get_title() + f" (zoom {window[0]}–{window[1]})")
            if ax.get_legend_handles_labels()[0] and column == 0:
                ax.legend(fontsize=7, loc="best")
        axes[-1, column].set_xlabel("step")
    if title is None and config:
        title = ", ".join(
            f"{key}={config[key]}"
            for key in ("loss", "schedule", "amplitude", "period", "learning_rate")
            if key in config
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_threshold_scaling(
    learning_rates: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    fit: ScalingFit | None = None,
    *,
    optimizer: str = "gd",
    momentum: float = 0.9,
    groups: Sequence[object] | np.ndarray | None = None,
) -> Figure:
    """Log-log plot of λ_th against η with the fitted power law and the stability line.

    Args:
        learning_rates, thresholds: the points (as passed to `fit_threshold_scaling`).
        fit: the `ScalingFit`; its line c·η^α is drawn with α and its CI in the legend.
        optimizer, momentum: which stability limit to draw (2/η for gd, SCIENCE.md).
        groups: optional run label per point; points of one group share a colour, and up to
            `MAX_GROUP_LEGEND` (10) groups are named in the legend.

    Returns:
        The Figure (one axes, titled "Threshold scaling").
    """
    eta = np.asarray(learning_rates, dtype=float).ravel()
    lam = np.asarray(thresholds, dtype=float).ravel()
    if eta.shape != lam.shape:
        raise ValueError(
            f"learning_rates and thresholds must have the same length (got {eta.size} and "
            f"{lam.size})."
        )
    keep = np.isfinite(eta) & np.isfinite(lam) & (eta > 0) & (lam > 0)
    if not keep.any():
        raise ValueError("plot_threshold_scaling needs at least one positive, finite point.")
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    if groups is None:
        ax.scatter(eta[keep], lam[keep], s=14, label="measured λ_th")
    else:
        labels = np.asarray(groups).ravel()
        if labels.shape != eta.shape:
            raise ValueError(
                f"groups must have one label per point (got {labels.size} for {eta.size})."
            )
        names, index = np.unique(labels[keep], return_inverse=True)
        if names.size <= MAX_GROUP_LEGEND:
            for i, name in enumerate(names):
                ax.scatter(eta[keep][index == i], lam[keep][index == i], s=14, label=str(name))
        else:
            ax.scatter(
                eta[keep],
                lam[keep],
                s=14,
                c=index,
                cmap="tab20",
                label=f"measured λ_th, {names.size} groups (one colour each)",
            )
    grid = np.geomspace(eta[keep].min() / 1.2, eta[keep].max() * 1.2, 100)
    if fit is not None:
        ax.plot(
            grid,
            fit.prefactor * grid**fit.exponent,
            "k-",
            lw=1.2,
            label=(
                f"fit c·η^α, α = {fit.exponent:.3f} [{fit.ci_low:.3f}, {fit.ci_high:.3f}], "
                f"R² = {fit.r2:.3f}"
            ),
        )
    name = {"gd": "2/η", "momentum": "(2+2β)/η", "nesterov": "(2+2β)/((1+2β)η)"}.get(
        optimizer, optimizer
    )
    ax.plot(grid, stability_limit(grid, optimizer, momentum), ":", color="0.4", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("threshold λ_th")
    ax.set_title("Threshold scaling")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_spectral_density(
    grid: Sequence[float] | np.ndarray,
    density: Sequence[float] | np.ndarray,
    *,
    ritz_values: Sequence[float] | np.ndarray | None = None,
    learning_rate: float | None = None,
    optimizer: str = "gd",
    momentum: float = 0.9,
    log: bool = True,
    label: str | None = None,
) -> Figure:
    """Plot a Hessian spectral density (e.g. from `curvature.spectral_density`).

    Args:
        grid: eigenvalue grid, shape (G,).
        density: density on the grid, shape (G,) (or (S, G): one curve per row, e.g. per step).
        ritz_values: optional Ritz values, drawn as ticks along the bottom.
        learning_rate: when given, the optimizer's stability limit is drawn as a vertical line.
        optimizer, momentum: which stability limit (SCIENCE.md).
        log: logarithmic density axis (the density spans many decades).
        label: legend label of the curve (one curve only).

    Returns:
        The Figure (one axes, x label "eigenvalue λ", y label "spectral density").
    """
    grid = np.asarray(grid, dtype=float).ravel()
    dens = np.atleast_2d(np.asarray(density, dtype=float))
    if dens.shape[-1] != grid.size:
        raise ValueError(
            f"density must have the grid's length {grid.size} on its last axis "
            f"(got shape {dens.shape})."
        )
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for row, curve in enumerate(dens):
        ax.plot(grid, curve, lw=1.0, label=label if row == 0 and label else None)
    if ritz_values is not None:
        ax.plot(
            np.asarray(ritz_values, dtype=float).ravel(),
            np.zeros(np.size(ritz_values)),
            "|",
            color="k",
            ms=10,
            transform=ax.get_xaxis_transform(),
            label="Ritz values",
        )
    if learning_rate is not None:
        ax.axvline(
            stability_limit(learning_rate, optimizer, momentum),
            color="0.4",
            ls=":",
            label="stability limit",
        )
    if log:
        positive = dens[dens > 0]
        ax.set_yscale("log")
        if positive.size:
            ax.set_ylim(max(positive.min(), positive.max() * 1e-8), positive.max() * 2)
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("spectral density")
    ax.set_title("Hessian spectral density")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_gradient_projection(
    ds: xr.Dataset, *, max_points: int = 4000, onsets: xr.Dataset | None = None
) -> Figure:
    """Gradient alignment with the top Hessian eigenvectors over time (2025, Fig. 2f,g).

    Draws |g·v_i|/|g| for each `eigen_index` and |g_⊥|/|g| (`grad_perpendicular`) in one
    panel and |g| (`grad_norm`, log scale) in a second panel when present.

    Args:
        ds: a Dataset with `grad_projection(step, eigen_index)` (a run or a post-hoc result).
        max_points: decimation budget per series.
        onsets: optional `detect_onsets` result for the onset markers.

    Returns:
        The Figure.
    """
    if "grad_projection" not in ds:
        raise ValueError(
            "plot_gradient_projection needs a 'grad_projection' variable (track it with "
            "TrainConfig(projection=True) or compute it post hoc)."
        )
    steps = _steps(ds)
    rows = 2 if "grad_norm" in ds else 1
    fig = Figure(figsize=(7.0, 2.4 * rows + 0.4))
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    ax = axes[0, 0]
    proj = ds["grad_projection"].transpose(STEP, ...)
    indices = (
        proj[EIGEN_INDEX].values if EIGEN_INDEX in proj.coords else range(1, proj.shape[1] + 1)
    )
    for column, index in enumerate(indices):
        _draw(ax, steps, proj.values[:, column], max_points=max_points, label=f"|g·v{index}|/|g|")
    if "grad_perpendicular" in ds:
        _draw(ax, steps, ds["grad_perpendicular"].values, max_points=max_points, label="|g⊥|/|g|")
    ax.set_ylabel("fraction of |g|")
    ax.set_title("Gradient projection on Hessian eigenvectors")
    ax.legend(fontsize=7)
    marks = _onset_marks(onsets)
    _mark(ax, marks, None)
    if rows == 2:
        ax = axes[1, 0]
        _draw(ax, steps, ds["grad_norm"].values, max_points=max_points, color="tab:gray")
        ax.set_yscale("log")
        ax.set_ylabel("|g|")
        ax.set_title("Gradient norm")
        _mark(ax, marks, None)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    return fig


def plot_landscape_section(
    surface: xr.DataArray,
    path: np.ndarray | Sequence[Sequence[float]] | xr.Dataset | None = None,
    *,
    levels: int = 30,
    log: bool = False,
) -> Figure:
    """Contour plot of a loss-landscape section F(θ + a·v1 + b·v2) (2025, Fig. 3).

    Args:
        surface: a 2-D DataArray; its first dim is drawn along x (a), its second along y (b),
            using their coordinates when present.
        path: optional trajectory projected into the plane: shape (n, 2) of (a, b) pairs, or
            the `path` Dataset of `curvature.landscape_section` (variables `a`, `b`); drawn
            as a line from start (circle) to end (star).
        levels: number of contour levels.
        log: colour by log10(F − min F + ε) to resolve deep, narrow valleys.

    Returns:
        The Figure (one axes with a colour bar).
    """
    if not isinstance(surface, xr.DataArray) or surface.ndim != 2:
        raise ValueError(
            "surface must be a 2-D xarray.DataArray of loss values on an (a, b) grid "
            f"(got {type(surface).__name__} with ndim {getattr(surface, 'ndim', None)})."
        )
    if levels < 2:
        raise ValueError(f"levels must be >= 2 (got {levels}).")
    dim_a, dim_b = surface.dims
    a = surface[dim_a].values if dim_a in surface.coords else np.arange(surface.shape[0])
    b = surface[dim_b].values if dim_b in surface.coords else np.arange(surface.shape[1])
    values = np.asarray(surface.values, dtype=float)
    if log:
        # log10(F − min F + ε) with ε half the smallest positive F − min F: the minimum shows
        # one step below its neighbours instead of at log10 of rounding.
        finite = values[np.isfinite(values)]
        floor = finite.min() if finite.size else 0.0
        above = finite[finite > floor] - floor
        offset = 0.5 * above.min() if above.size else 1.0
        values = np.log10(values - floor + offset)
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.subplots()
    contour = ax.contourf(a, b, values.T, levels=levels, cmap="viridis")
    fig.colorbar(contour, ax=ax, label="log10(F − min F)" if log else "loss F")
    if path is not None:
        if isinstance(path, xr.Dataset):  # curvature.landscape_section's Section.path
            if not {"a", "b"} <= set(path.data_vars):
                raise ValueError(
                    "path as a Dataset must hold variables 'a' and 'b' (as "
                    f"curvature.landscape_section returns; got {sorted(path.data_vars)})."
                )
            path = np.column_stack([path["a"].values, path["b"].values])
        points = np.asarray(path, dtype=float)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(
                f"path must have shape (n, 2) of (a, b) coordinates (got {points.shape})."
            )
        ax.plot(points[:, 0], points[:, 1], "w.-", lw=0.8, ms=3, label="trajectory")
        ax.plot(*points[0], "wo", ms=6)
        ax.plot(*points[-1], "w*", ms=10)
    ax.set_xlabel(str(surface[dim_a].attrs.get("long_name", dim_a)))
    ax.set_ylabel(str(surface[dim_b].attrs.get("long_name", dim_b)))
    ax.set_title(str(surface.attrs.get("long_name", "Loss landscape section")))
    fig.tight_layout()
    return fig
