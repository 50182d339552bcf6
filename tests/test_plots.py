"""Figures render with the Agg backend and carry the expected panels and labels."""

import json

import matplotlib
import numpy as np
import pytest
import xarray as xr

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from analysis import (
    detect_onsets,
    fit_threshold_scaling,
    plot_gradient_projection,
    plot_landscape_section,
    plot_run,
    plot_spectral_density,
    plot_threshold_scaling,
)
from analysis._plots import _envelope


def basic_run(n=3000, classes=3):
    steps = np.arange(n)
    loss = 1.0 + 0.2 * np.exp(-steps / 500.0)
    for start, stop in ((600, 900), (1800, 2100)):
        inside = (steps >= start) & (steps < stop)
        loss[inside] += (
            1e-2 * (steps[inside] - start + 1) / (stop - start) * (-1.0) ** steps[inside]
        )
    val = np.full(n, np.nan)
    val[::100] = 0.7
    return xr.Dataset(
        {
            "loss": ("step", loss),
            "static_loss": ("step", 0.9 * loss),
            "train_accuracy": ("step", 1.0 - 0.3 * np.exp(-steps / 800.0)),
            "val_accuracy": ("step", val),
            "gamma": (("step", "class"), np.ones((n, classes))),
            "learning_rate": ("step", np.full(n, 0.5)),
            "grad_norm": ("step", np.exp(-steps / 1000.0)),
        },
        coords={"step": steps, "class": np.arange(classes)},
        attrs={"config": json.dumps({"loss": "dce", "learning_rate": 0.5, "optimizer": "gd"})},
    )


def full_run(n=3000):
    run = basic_run(n)
    steps = np.arange(n)
    lam = np.column_stack([3.0 + np.sin(steps / 300.0), 2.0 + 0.5 * np.cos(steps / 200.0)])
    proj = np.column_stack([0.5 + 0.1 * np.sin(steps / 50.0), 0.2 * np.ones(n)])
    return run.assign(
        hessian_eigenvalues=(("step", "eigen_index"), lam),
        ntk_eigenvalues=(("step", "ntk_eigen_index"), 100 + lam[:, :1]),
        grad_projection=(("step", "eigen_index"), proj),
        grad_perpendicular=("step", np.sqrt(1 - (proj**2).sum(axis=1))),
    ).assign_coords(eigen_index=[1, 2], ntk_eigen_index=[1])


def titles(fig):
    return [ax.get_title() for ax in fig.axes]


def save(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    assert path.stat().st_size > 1000
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_run_with_basics_only(tmp_path):
    fig = plot_run(basic_run())
    assert titles(fig) == [
        "Γ per class",
        "Loss F(t)",
        "ΔF = F(t) − F(t−1)",
        "Accuracy",
    ]
    assert fig.axes[-1].get_xlabel() == "step"
    assert "loss=dce" in fig._suptitle.get_text()
    save(fig, tmp_path, "basic")


def test_plot_run_with_loss_only():
    run = xr.Dataset({"loss": ("step", np.linspace(1, 0, 50))})
    fig = plot_run(run)
    assert titles(fig) == ["Loss F(t)", "ΔF = F(t) − F(t−1)"]
    plt.close(fig)


def test_plot_run_with_hessian_ntk_onsets_and_zoom(tmp_path):
    run = full_run()
    onsets = detect_onsets(run)
    assert onsets.sizes["onset"] == 2
    fig = plot_run(run, onsets=onsets, zoom=(500, 1000))
    names = titles(fig)
    assert "Hessian λ_1…λ_k" in names and "NTK λ_max" in names
    assert "Hessian λ_1…λ_k (zoom 500–1000)" in names
    assert len(fig.axes) == 2 * 6
    hessian_ax = fig.axes[names.index("Hessian λ_1…λ_k")]
    labels = hessian_ax.get_legend_handles_labels()[1]
    assert {"λ1", "λ2", "threshold λ_th", "stability 2/η"} <= set(labels)
    stability = [line for line in hessian_ax.get_lines() if line.get_label() == "stability 2/η"]
    assert np.allclose(stability[0].get_ydata(), 4.0)  # 2/η with η = 0.5
    # Onset (green) and end (red) markers on every panel of the full-length column.
    for ax in fig.axes[::2]:
        vertical = [line for line in ax.get_lines() if len(set(line.get_xdata())) == 1]
        assert len(vertical) >= 4
    save(fig, tmp_path, "full")


def test_envelope_keeps_both_branches_of_long_runs():
    steps = np.arange(70_000)
    values = np.where(steps % 2 == 0, 1.0, -1.0) * (steps > 35_000)
    x, low, high = _envelope(steps, values, 1000)
    assert x.size <= 1000
    assert np.all(high[x > 35_100] == 1.0) and np.all(low[x > 35_100] == -1.0)
    assert np.all(high[x < 34_900] == 0.0)
    short_x, short_low, short_high = _envelope(steps[:10], values[:10], 1000)
    assert short_low is short_high and short_x.size == 10


def test_plot_run_draws_a_long_run_decimated(tmp_path):
    n = 70_000
    run = xr.Dataset(
        {"loss": ("step", 1 + 0.01 * np.sin(np.arange(n) * np.pi / 2))},
        coords={"step": np.arange(n)},
    )
    fig = plot_run(run, max_points=500)
    for ax in fig.axes:
        assert all(len(line.get_xdata()) <= 500 for line in ax.get_lines())
    save(fig, tmp_path, "long")


def test_plot_threshold_scaling_and_spectral_density(tmp_path):
    etas = np.geomspace(0.1, 2, 6)
    lam = 1.9 * etas**-0.9
    fit = fit_threshold_scaling(etas, lam, num_bootstrap=20)
    fig = plot_threshold_scaling(etas, lam, fit, groups=np.arange(6) % 2)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "learning rate η" and ax.get_ylabel() == "threshold λ_th"
    assert any("α = -0.900" in label for label in ax.get_legend_handles_labels()[1])
    assert "2/η" in ax.get_legend_handles_labels()[1]
    save(fig, tmp_path, "scaling")
    # Groups are named in the legend; beyond MAX_GROUP_LEGEND they share one entry.
    fig = plot_threshold_scaling(etas, lam, fit, groups=["a.nc", "b.nc"] * 3)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"a.nc", "b.nc"} <= set(labels)
    fig = plot_threshold_scaling(etas.repeat(2), lam.repeat(2), fit, groups=np.arange(12))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "measured λ_th, 12 groups (one colour each)" in labels
    grid = np.linspace(-1, 10, 200)
    density = np.exp(-(grid**2)) + 1e-3 * np.exp(-((grid - 8) ** 2))
    fig = plot_spectral_density(grid, density, ritz_values=[0.0, 8.0], learning_rate=0.25)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "eigenvalue λ" and ax.get_ylabel() == "spectral density"
    assert ax.get_title() == "Hessian spectral density"
    assert ax.get_yscale() == "log"
    save(fig, tmp_path, "density")


def test_plot_gradient_projection_and_landscape_section(tmp_path):
    run = full_run()
    fig = plot_gradient_projection(run, onsets=detect_onsets(run))
    assert titles(fig) == ["Gradient projection on Hessian eigenvectors", "Gradient norm"]
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["|g·v1|/|g|", "|g·v2|/|g|", "|g⊥|/|g|"]
    save(fig, tmp_path, "projection")
    a = np.linspace(-1, 1, 21)
    b = np.linspace(-2, 2, 31)
    surface = xr.DataArray(
        a[:, None] ** 2 + 0.1 * b[None, :] ** 2,
        dims=("a", "b"),
        coords={"a": a, "b": b},
        attrs={"long_name": "section at step 100"},
    )
    surface["a"].attrs["long_name"] = "a (along v1)"
    fig = plot_landscape_section(surface, path=[[0.5, 1.0], [0.2, 0.5], [0.0, 0.0]], log=True)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "a (along v1)" and ax.get_ylabel() == "b"
    assert ax.get_title() == "section at step 100"
    save(fig, tmp_path, "section")
    # The path Dataset of curvature.landscape_section (variables a, b on dim point).
    path = xr.Dataset({"a": ("point", [0.5, 0.0]), "b": ("point", [1.0, 0.0])})
    fig = plot_landscape_section(surface, path=path)
    trajectory = [line for line in fig.axes[0].get_lines() if line.get_label() == "trajectory"]
    assert trajectory[0].get_xdata().tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="must hold variables 'a' and 'b'"):
        plot_landscape_section(surface, path=path.rename(a="x"))


def test_values_at_a_single_checkpoint_are_drawn_as_markers():
    run = full_run()
    lam = np.full((run.sizes["step"], 2), np.nan)
    lam[100] = [3.0, 2.0]
    sparse = run.assign(hessian_eigenvalues=(("step", "eigen_index"), lam))
    fig = plot_run(sparse)
    ax = fig.axes[titles(fig).index("Hessian λ_1…λ_k")]
    lines = [line for line in ax.get_lines() if line.get_label() in ("λ1", "λ2")]
    assert len(lines) == 2 and all(line.get_marker() == "o" for line in lines)
    assert [line.get_xdata().tolist() for line in lines] == [[100], [100]]


def test_gradient_projection_without_coordinates_draws_every_eigenvector():
    run = full_run().drop_vars("eigen_index")
    fig = plot_gradient_projection(run)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["|g·v1|/|g|", "|g·v2|/|g|", "|g⊥|/|g|"]


def test_log_section_colours_span_the_data_not_the_offset():
    a = np.linspace(-1, 1, 21)
    surface = xr.DataArray(0.3 + a[:, None] ** 2 + a[None, :] ** 2, dims=("a", "b"))
    fig = plot_landscape_section(surface, log=True)
    low, high = fig.axes[1].get_ylim()  # the colour bar
    # F − min F runs from 0.01 (next to the minimum) to 2: log10 spans about -2.3 to 0.3.
    assert low > -3.0 and high < 1.0


def test_bad_inputs_are_rejected():
    with pytest.raises(TypeError, match=r"run must be an xarray.Dataset"):
        plot_run({"loss": [1, 2]})
    with pytest.raises(ValueError, match="run must have a 'step' dimension"):
        plot_run(xr.Dataset({"loss": ("time", [1.0, 2.0])}))
    with pytest.raises(ValueError, match="run has none of the plottable variables"):
        plot_run(xr.Dataset({"other": ("step", [1.0, 2.0])}))
    with pytest.raises(ValueError, match="zoom must be a pair"):
        plot_run(basic_run(), zoom=(100, 50))
    with pytest.raises(ValueError, match="zoom must be a pair"):
        plot_run(basic_run(), zoom=(1.5, 1.9))  # both whole steps are 1
    for count in (0, -1, 2.5):
        with pytest.raises(ValueError, match="eigen_count must be an integer >= 1 or None"):
            plot_run(full_run(), eigen_count=count)
    with pytest.raises(ValueError, match="max_points must be >= 2"):
        plot_run(basic_run(), max_points=1)
    with pytest.raises(ValueError, match="same length"):
        plot_threshold_scaling([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="at least one positive, finite point"):
        plot_threshold_scaling([0.1], [-1.0])
    with pytest.raises(ValueError, match="density must have the grid's length"):
        plot_spectral_density(np.arange(5), np.ones(4))
    with pytest.raises(ValueError, match="needs a 'grad_projection' variable"):
        plot_gradient_projection(basic_run())
    with pytest.raises(ValueError, match=r"surface must be a 2-D xarray.DataArray"):
        plot_landscape_section(xr.DataArray(np.ones(3)))
    with pytest.raises(ValueError, match="path must have shape"):
        plot_landscape_section(xr.DataArray(np.ones((3, 3))), path=[1.0, 2.0])
    with pytest.raises(ValueError, match="levels must be >= 2"):
        plot_landscape_section(xr.DataArray(np.ones((3, 3))), levels=1)
    plt.close("all")


def test_density_stability_line_is_the_optimizers_own_limit():
    # The vertical line sits at the optimizer's limit: (2+2β)/((1+2β)η) for Nesterov.
    grid = np.linspace(0, 10, 50)
    fig = plot_spectral_density(
        grid, np.exp(-grid), learning_rate=0.5, optimizer="nesterov", momentum=0.9
    )
    line = next(x for x in fig.axes[0].get_lines() if x.get_label() == "stability limit")
    np.testing.assert_allclose(line.get_xdata(), (2 + 1.8) / ((1 + 1.8) * 0.5))
    fig = plot_spectral_density(grid, np.exp(-grid), learning_rate=0.5)
    line = next(x for x in fig.axes[0].get_lines() if x.get_label() == "stability limit")
    np.testing.assert_allclose(line.get_xdata(), 4.0)  # 2/η for gd
    plt.close("all")


def test_run_panels_draw_the_right_values():
    run = full_run()
    onsets = detect_onsets(run)
    fig = plot_run(run, onsets=onsets, eigen_count=1, max_points=10_000)
    names = titles(fig)
    # ΔF = F(t) − F(t−1), not its negative.
    delta = fig.axes[names.index("ΔF = F(t) − F(t−1)")].get_lines()[0]
    np.testing.assert_allclose(delta.get_ydata(), np.diff(run["loss"].values))
    # eigen_count=1 draws λ1 only.
    labels = fig.axes[names.index("Hessian λ_1…λ_k")].get_legend_handles_labels()[1]
    assert "λ1" in labels and "λ2" not in labels
    # Onsets are green, ends red, at the detected steps.
    ax = fig.axes[names.index("Loss F(t)")]
    marks = {}
    for line in ax.get_lines():
        if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2:
            marks.setdefault(line.get_color(), []).append(line.get_xdata()[0])
    assert sorted(marks["tab:green"]) == sorted(onsets["onset_step"].values.tolist())
    assert sorted(marks["tab:red"]) == sorted(onsets["end_step"].values.tolist())
    plt.close(fig)


def test_gradient_norm_panel_is_logarithmic():
    fig = plot_gradient_projection(full_run())
    assert fig.axes[0].get_yscale() == "linear" and fig.axes[1].get_yscale() == "log"
    assert fig.axes[1].get_ylabel() == "|g|" and fig.axes[1].get_xlabel() == "step"
    plt.close(fig)
