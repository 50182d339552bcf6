"""Phase diagrams and width curves of a sweep (seed means with standard errors), and figures.

``phase_diagram`` returns a DataArray with a leading ``stat`` dim: ``"mean"`` (over seeds),
``"sem"`` (standard error of that mean, ``std(ddof=1)/sqrt(n)``; NaN for a single run) and
``"n"`` (the runs averaged). Diverged runs have NaN final metrics and are left out of the mean;
``n`` shows how many were left. Figures are built without pyplot, as in ``analysis._plots``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

STAT = "stat"
STATS = ("mean", "sem", "n")
SEED = "seed"
STATIC_LOSSES = ("ce", "mse")


def _variable(ds: xr.Dataset, metric: str) -> xr.DataArray:
    for name in (metric, f"final_{metric}"):
        if name in ds.data_vars and "summary_step" not in ds[name].dims:
            return ds[name]
    finals = sorted(n for n in ds.data_vars if n.startswith("final_"))
    raise ValueError(
        f"metric {metric!r} is not a final metric of this sweep; choose one of "
        f"{[n.removeprefix('final_') for n in finals]}."
    )


def seed_statistics(
    ds: xr.Dataset, metric: str, keep: Sequence[str], *, over: str = SEED
) -> xr.DataArray:
    """Mean, standard error and count of ``metric`` over ``over`` with only ``keep`` left.

    Every other dim must have size 1 (it is dropped); a longer one is ambiguous and refused.
    """
    var = _variable(ds, metric)
    for dim in keep:
        if dim not in var.dims:
            raise ValueError(f"{dim!r} is not a dimension of the sweep; its dims are {var.dims}.")
    if len(set(keep)) != len(keep):
        raise ValueError(f"the kept dimensions must differ (got {list(keep)}).")
    leftover = [d for d in var.dims if d not in keep and d != over]
    ambiguous = {d: var.sizes[d] for d in leftover if var.sizes[d] > 1}
    if ambiguous:
        example = ", ".join(f"{d}={var[d].values[0].item()!r}" for d in ambiguous)
        raise ValueError(
            f"dimensions {ambiguous} remain besides {list(keep)} and {over!r}; only seeds are "
            f"averaged. Select one value first, e.g. sweep.sel({example})."
        )
    var = var.squeeze([d for d in leftover], drop=True)
    if over in var.dims:
        n = var.notnull().sum(over)
        mean = var.mean(over, skipna=True)
        sem = var.std(over, ddof=1, skipna=True) / np.sqrt(n.where(n > 0))
    else:
        n = var.notnull().astype(int)
        mean, sem = var, xr.full_like(var, np.nan, dtype=float)
    out = xr.concat([mean, sem, n.astype(float)], dim=xr.DataArray(list(STATS), dims=STAT))
    out.name = var.name
    out.attrs = {
        "long_name": f"{var.name} over {over} (mean, standard error, runs averaged)",
        "diverged_runs": "left out (their final metrics are NaN)",
    }
    return out.transpose(STAT, *keep)


def phase_diagram(
    sweep_ds: xr.Dataset,
    metric: str = "val_accuracy",
    x: str = "period",
    y: str = "amplitude",
    *,
    over: str = SEED,
) -> xr.DataArray:
    """Seed mean of a final metric on the (y, x) grid, with its standard error.

    Returns a DataArray with dims ``(stat, y, x)``; ``stat`` is ``("mean", "sem", "n")``
    (``da.sel(stat="mean")``). ``metric`` is a final metric with or without its ``final_``
    prefix. Dims other than x, y and ``over`` must have a single value (select one first).
    """
    return seed_statistics(sweep_ds, metric, (y, x), over=over)


def format_phase_table(phase: xr.DataArray) -> str:
    """A text table of ``mean ± sem`` with y down and x across."""
    y, x = phase.dims[1], phase.dims[2]
    mean, sem = phase.sel({STAT: "mean"}).values, phase.sel({STAT: "sem"}).values
    cells = [
        [f"{m:.3f}±{s:.3f}" if np.isfinite(s) else f"{m:.3f}" for m, s in zip(rm, rs, strict=True)]
        for rm, rs in zip(mean, sem, strict=True)
    ]
    width = max(11, *(len(c) for row in cells for c in row))
    corner = f"{y} \\ {x}"
    head = f"{corner:>14} " + " ".join(f"{v!s:>{width}}" for v in phase[x].values)
    rows = [
        f"{v!s:>14} " + " ".join(f"{c:>{width}}" for c in row)
        for v, row in zip(phase[y].values, cells, strict=True)
    ]
    return "\n".join([f"{phase.name}: seed mean ± standard error", head, *rows])


def plot_phase_diagram(
    sweep_ds: xr.Dataset | xr.DataArray,
    metric: str = "val_accuracy",
    x: str = "period",
    y: str = "amplitude",
    *,
    annotate: bool = True,
    cmap: str = "viridis",
) -> Figure:
    """Colour map of the seed-mean metric over (x, y) with a colour bar (2021 Fig. 3 style).

    Accepts a sweep Dataset or the output of :func:`phase_diagram`. Cells are drawn on the
    grid's index positions with the coordinate values as tick labels (sweeps use log-spaced
    values); with ``annotate`` each cell shows mean ± sem.
    """
    phase = (
        sweep_ds if isinstance(sweep_ds, xr.DataArray) else phase_diagram(sweep_ds, metric, x, y)
    )
    y, x = phase.dims[1], phase.dims[2]
    mean = phase.sel({STAT: "mean"}).values
    sem = phase.sel({STAT: "sem"}).values
    fig = Figure(figsize=(1.0 + 0.75 * mean.shape[1] + 1.5, 1.0 + 0.55 * mean.shape[0] + 0.8))
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(
        np.arange(mean.shape[1] + 1) - 0.5, np.arange(mean.shape[0] + 1) - 0.5, mean, cmap=cmap
    )
    fig.colorbar(mesh, ax=ax, label=f"{phase.name} (seed mean)")
    ax.set_xticks(range(mean.shape[1]), [f"{v:g}" if _num(v) else str(v) for v in phase[x].values])
    ax.set_yticks(range(mean.shape[0]), [f"{v:g}" if _num(v) else str(v) for v in phase[y].values])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{phase.name}: mean over {_seed_count(phase.sel({STAT: 'n'}).values)}")
    if annotate:
        lo, hi = np.nanmin(mean), np.nanmax(mean)
        for (i, j), m in np.ndenumerate(mean):
            text = f"{m:.2f}" + (f"\n±{sem[i, j]:.2f}" if np.isfinite(sem[i, j]) else "")
            dark = np.isfinite(m) and hi > lo and (m - lo) / (hi - lo) < 0.5
            ax.text(
                j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black"
            )
    fig.tight_layout()
    return fig


def _seed_count(n: np.ndarray) -> str:
    """ "3 seeds", or "1–3 seeds per cell" where diverged runs left some cells fewer."""
    counts = n[np.isfinite(n) & (n > 0)].astype(int)
    if counts.size == 0:
        return "0 seeds"
    low, high = int(counts.min()), int(counts.max())
    if low == high:
        return f"{high} seed" + ("s" if high != 1 else "")
    return f"{low}–{high} seeds per cell"


def _num(value: object) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def plot_width(
    sweep_ds: xr.Dataset,
    metric: str = "val_accuracy",
    *,
    width: str = "width",
    loss: str = "loss",
) -> Figure:
    """``metric`` (seed mean ± sem) against width, one curve per loss (2025 Fig. 4 style).

    Static losses (ce, mse) are dashed, dynamical ones solid; the width axis is logarithmic.
    Dims other than width, loss and seed must have a single value.
    """
    stats = seed_statistics(sweep_ds, metric, (loss, width))
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    widths = stats[width].values
    for name in stats[loss].values:
        row = stats.sel({loss: name})
        static = str(name) in STATIC_LOSSES
        ax.errorbar(
            widths,
            row.sel({STAT: "mean"}).values,
            yerr=row.sel({STAT: "sem"}).fillna(0).values,
            label=str(name).upper(),
            linestyle="--" if static else "-",
            marker="o" if static else "s",
            capsize=2,
        )
    ax.set_xscale("log")
    ax.set_xlabel("hidden width")
    ax.set_ylabel(f"{stats.name} (seed mean ± sem)")
    ax.legend(title="loss (dashed: static)", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
