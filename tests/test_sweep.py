"""Sweeps (analysis._sweep), phase diagrams and width curves (analysis._phase), the sweep CLI."""

import argparse
import json
import os
import sys
from pathlib import Path

import jax
import netCDF4
import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from analysis._phase import phase_diagram, plot_phase_diagram, plot_width
from analysis._sweep import expand, sweep
from analysis._sweep_cli import read_grid_file, register
from training import TrainConfig, train
from training._batched import FINAL_VARIABLES, SUMMARY_VARIABLES, train_batch
from training._runfile import host

ROOT = Path(__file__).resolve().parent.parent
BASE = TrainConfig(hidden_widths=(8,), steps=60, eval_every=20, chunk_steps=40, period=20.0)
GRID = {"amplitude": [1.0, 5.0], "period": [10.0, 20.0], "width": [6, 8], "seed": [0, 1]}


@pytest.fixture(scope="module")
def local():
    return sweep(BASE, GRID, summary_every=20, batch_size=3, command="test")


def test_dataset_layout(local):
    assert list(local["final_val_accuracy"].dims) == ["amplitude", "period", "width", "seed"]
    assert local["amplitude"].values.tolist() == [1.0, 5.0]
    assert local["width"].values.tolist() == [6, 8]
    assert local["loss"].dims[-1] == "summary_step"
    assert local["summary_step"].values.tolist() == [0, 20, 40]
    for name in (
        "final_train_accuracy",
        "final_static_loss",
        "final_loss",
        "diverged",
        "diverged_at_step",
        "val_accuracy",
        "grad_norm",
    ):
        assert name in local
    assert TrainConfig.from_json(local.attrs["base_config"]) == BASE
    assert json.loads(local.attrs["grid"])["width"] == [6, 8]
    assert local.attrs["command"] == "test"


def test_each_entry_is_its_own_run(local):
    config = BASE.replace(amplitude=5.0, period=10.0, hidden_widths=(6,), seed=1)
    ref = train(config)
    entry = local.sel(amplitude=5.0, period=10.0, width=6, seed=1)
    np.testing.assert_allclose(
        entry["loss"].values, ref["loss"].sel(step=[0, 20, 40]).values, rtol=1e-6
    )
    alone = train_batch([config], summary_every=20)
    assert float(entry["final_val_accuracy"]) == pytest.approx(
        alone.final["final_val_accuracy"][0], abs=1e-6
    )


def _deterministic_backend() -> bool:
    """Whether separate processes compile to the same kernels: on CPU, and on a GPU only with
    ``--xla_gpu_deterministic_ops=true`` (without it, an H200 gave rounding-level
    differences, 2.2e-7 relative, between the dask workers and this process)."""
    flags = os.environ.get("XLA_FLAGS", "")
    return jax.default_backend() == "cpu" or "--xla_gpu_deterministic_ops=true" in flags


def test_dask_path_equals_local_path(local, tmp_path):
    dask = sweep(BASE, GRID, summary_every=20, batch_size=3, workers=2, command="test")
    if _deterministic_backend():
        xr.testing.assert_identical(dask, local)
    else:
        xr.testing.assert_allclose(dask, local, rtol=1e-5)
        assert dask.attrs == local.attrs


def test_restart_skips_finished_batches(local, tmp_path):
    out = tmp_path / "s.nc"

    def interrupt(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(
            BASE,
            GRID,
            output=out,
            summary_every=20,
            batch_size=3,
            progress=interrupt,
            command="test",
        )
    parts = sorted((tmp_path / "s.nc.parts").glob("batch-*.nc"))
    assert len(parts) == 1
    with netCDF4.Dataset(parts[0], "a") as part:  # as if a worker elsewhere had computed it
        assert part.getncattr("host") == host()
        part.setncattr("host", "elsewhere")
    seen = []
    again = sweep(
        BASE,
        GRID,
        output=out,
        summary_every=20,
        batch_size=3,
        progress=lambda d, t: seen.append(d),
        command="test",
    )
    assert seen[0] == 3  # the first batch was not re-run
    assert again.attrs["host"] == " | ".join(sorted(["elsewhere", host()]))
    assert local.attrs["host"] == host()
    xr.testing.assert_identical(again.assign_attrs(host=host()), local)
    assert not (tmp_path / "s.nc.parts").exists()
    xr.testing.assert_identical(xr.load_dataset(out).assign_attrs(host=host()), local)
    assert sweep(BASE, GRID, output=out, summary_every=20, batch_size=3).equals(local)
    with pytest.raises(FileExistsError, match="holds a different sweep"):
        sweep(BASE, {"seed": [0]}, output=out, summary_every=20)


def test_run_files_are_written(tmp_path):
    ds = sweep(BASE, {"seed": [0, 1]}, run_files=tmp_path / "runs", summary_every=20)
    files = sorted(p.name for p in (tmp_path / "runs").glob("*.nc"))
    assert files == ["seed=0.nc", "seed=1.nc"]
    run = xr.load_dataset(tmp_path / "runs" / "seed=1.nc")
    assert run.attrs["status"] == "complete"
    np.testing.assert_array_equal(
        run["loss"].sel(step=[0, 20, 40]).values, ds["loss"].sel(seed=1).values
    )


def _stamp(path):
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _interrupt_after(runs):
    def progress(done, total):
        if done >= runs:
            raise KeyboardInterrupt

    return progress


def _status(path):
    with xr.open_dataset(path) as run:
        return run.attrs["status"], TrainConfig.from_json(run.attrs["config"])


def test_run_files_of_other_runs_are_refused(tmp_path):
    """A sweep never replaces a run file that does not hold its run, unless overwrite."""
    runs = tmp_path / "runs"
    sweep(BASE, {"seed": [0]}, run_files=runs, summary_every=20)
    (runs / "seed=0.nc").rename(runs / "seed=1.nc")  # a finished run of seed 0, named seed=1
    stamp = _stamp(runs / "seed=1.nc")
    with pytest.raises(FileExistsError, match=r"seed=1\.nc' already exists and does not hold"):
        sweep(BASE, {"seed": [0, 1]}, run_files=runs, summary_every=20)
    assert _stamp(runs / "seed=1.nc") == stamp
    assert sorted(p.name for p in runs.iterdir()) == ["seed=1.nc"]  # nothing was written
    (runs / "seed=0.nc").write_text("not a run file")
    with pytest.raises(FileExistsError, match=r"seed=0\.nc' \(and 1 more\) already exists"):
        sweep(BASE, {"seed": [0, 1]}, run_files=runs, summary_every=20)
    sweep(BASE, {"seed": [0, 1]}, run_files=runs, summary_every=20, overwrite=True)
    for seed in (0, 1):
        status, config = _status(runs / f"seed={seed}.nc")
        assert status == "complete" and config.seed == seed


def test_resumed_sweep_keeps_finished_run_files(tmp_path):
    """Files of the same runs, finished, are kept; a file left unfinished is written again."""
    runs = tmp_path / "runs"
    options = dict(run_files=runs, summary_every=20, batch_size=1, command="test")
    with pytest.raises(KeyboardInterrupt):
        sweep(BASE, {"seed": [0, 1, 2]}, progress=_interrupt_after(1), **options)
    assert sorted(p.name for p in runs.glob("*.nc")) == ["seed=0.nc"]
    stamp = _stamp(runs / "seed=0.nc")
    with pytest.raises(KeyboardInterrupt):  # one more batch: seed 1, then left as "failed"
        sweep(BASE, {"seed": [0, 1, 2]}, progress=_interrupt_after(2), **options)
    with netCDF4.Dataset(runs / "seed=1.nc", "a") as nc:  # as a batch interrupted mid-way
        nc.setncattr("status", "failed")
    seen = []
    ds = sweep(BASE, {"seed": [0, 1, 2]}, progress=lambda d, t: seen.append(d), **options)
    assert seen[0] == 1  # seed 0's batch was not re-run, seed 1's was (its file was unfinished)
    assert _stamp(runs / "seed=0.nc") == stamp
    for seed in (0, 1, 2):
        status, config = _status(runs / f"seed={seed}.nc")
        assert status == "complete" and config.seed == seed
        with xr.open_dataset(runs / f"seed={seed}.nc") as run:
            np.testing.assert_array_equal(
                run["loss"].sel(step=[0, 20, 40]).values, ds["loss"].sel(seed=seed).values
            )


def test_resume_with_other_options_recomputes_parts(tmp_path):
    """Parts computed with another summary interval, or without run files, are not reused."""
    out, runs = tmp_path / "s.nc", tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        sweep(
            BASE,
            {"seed": [0, 1]},
            output=out,
            summary_every=40,
            batch_size=1,
            progress=_interrupt_after(1),
        )
    assert len(list((tmp_path / "s.nc.parts").glob("batch-*.nc"))) == 1
    seen = []
    ds = sweep(
        BASE,
        {"seed": [0, 1]},
        output=out,
        run_files=runs,
        summary_every=20,
        batch_size=1,
        progress=lambda d, t: seen.append(d),
    )
    assert seen[0] == 0
    assert ds["summary_step"].values.tolist() == [0, 20, 40]
    assert np.isfinite(ds["loss"].values).all()
    assert sorted(p.name for p in runs.glob("*.nc")) == ["seed=0.nc", "seed=1.nc"]
    assert int(ds.attrs["summary_every"]) == 20


def test_existing_output_gets_the_requested_run_files(tmp_path):
    out, runs = tmp_path / "s.nc", tmp_path / "runs"
    first = sweep(BASE, {"seed": [0, 1]}, output=out, summary_every=20, command="test")
    stamp = _stamp(out)
    again = sweep(
        BASE, {"seed": [0, 1]}, output=out, run_files=runs, summary_every=20, command="test"
    )
    xr.testing.assert_identical(again, first)
    assert _stamp(out) == stamp  # the output is the same sweep: left as it is
    for seed in (0, 1):
        status, config = _status(runs / f"seed={seed}.nc")
        assert status == "complete" and config.seed == seed
    with pytest.raises(FileExistsError, match=r"holds a different sweep.*overwrite=True"):
        sweep(BASE, {"seed": [0]}, output=out, summary_every=20)
    assert _stamp(out) == stamp
    other = sweep(BASE, {"seed": [0]}, output=out, summary_every=20, overwrite=True)
    xr.testing.assert_identical(xr.load_dataset(out), other)
    assert other.sizes["seed"] == 1


def test_existing_output_written_with_other_number_formatting_is_the_same_sweep(tmp_path):
    # Outputs written before TrainConfig stored every float field as a float hold "period": 20
    # where today's hold 20.0: the same configuration, so the output is kept.
    out = tmp_path / "s.nc"
    first = sweep(BASE, {"seed": [0]}, output=out, summary_every=20, command="test")
    stored = json.loads(first.attrs["base_config"])
    stored["period"] = int(stored["period"])
    old = first.assign_attrs(base_config=json.dumps(stored, sort_keys=True))
    old.to_netcdf(out)
    again = sweep(BASE, {"seed": [0]}, output=out, summary_every=20, command="test")
    assert again.attrs["base_config"] == old.attrs["base_config"]  # the file, left as it is


def test_stop_last_period():
    configs = expand(BASE, {"period": [10.0, 20.0]}, stop_last_period=True)
    assert [c.stop_after for c in configs] == [50, 40]
    assert expand(BASE, {"period": [10.0]}, stop_last_period=np.True_)[0].stop_after == 50


@pytest.mark.parametrize(
    ("base", "grid", "value", "message"),
    [
        (BASE, {"stop_after": [None, 30]}, True, "would replace the grid's stop_after"),
        (BASE.replace(stop_after=30), {"seed": [0]}, True, "replace the base config's stop"),
        (BASE, {"seed": [0]}, "false", "stop_last_period must be True or False"),
        (BASE, {"seed": [0]}, 1, "stop_last_period must be True or False"),
    ],
)
def test_bad_stop_last_period(base, grid, value, message):
    with pytest.raises(ValueError, match=message):
        expand(base, grid, stop_last_period=value)
    with pytest.raises(ValueError, match=message):
        sweep(base, grid, stop_last_period=value)


@pytest.mark.parametrize(
    ("grid", "kwargs", "error", "message"),
    [
        ({}, {}, ValueError, "grid must be a non-empty mapping"),
        ({"amplitud": [1.0]}, {}, ValueError, "grid key 'amplitud' is not a TrainConfig field"),
        (
            {"width": [4], "hidden_widths": [[4]]},
            {},
            ValueError,
            "grid keys 'width' and 'hidden_widths' set the same field",
        ),
        (
            {"hidden_widths": [[4], 4]},
            {},
            ValueError,
            r"grid\['hidden_widths'\] has values that give the same configuration",
        ),
        ({"output": ["a"]}, {}, ValueError, "grid key 'output' cannot be swept"),
        ({"seed": 3}, {}, ValueError, r"grid\['seed'\] must be a list of values"),
        ({"seed": []}, {}, ValueError, r"grid\['seed'\] must hold at least one value"),
        ({"seed": [1, 1]}, {}, ValueError, r"grid\['seed'\] has repeated values"),
        (
            {"amplitude": [2, 2.0]},
            {},
            ValueError,
            r"grid\['amplitude'\] has values that give the same configuration",
        ),
        ({"amplitude": [0.5]}, {}, ValueError, "amplitude must be >= 1"),
        ({"seed": [0]}, {"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
        ({"seed": [0]}, {"workers": 0}, ValueError, "workers must be an integer >= 1"),
        ({"seed": [0]}, {"lanes": 0}, ValueError, "lanes must be an integer >= 1"),
        ({"seed": [0]}, {"lanes": True}, ValueError, r"lanes must be an integer >= 1 \(got True"),
        ({"seed": [0]}, {"summary_every": 30}, ValueError, "multiple of eval_every=20"),
        ({"seed": [0]}, {"workers": 2, "scheduler": "tcp://x:1"}, ValueError, "not both"),
        ({"seed": [0]}, {"scheduler": 5}, ValueError, "scheduler must be an address string"),
        ({"seed": [0]}, {"overwrite": "yes"}, ValueError, "overwrite must be True or False"),
    ],
)
def test_bad_sweep_inputs(grid, kwargs, error, message):
    with pytest.raises(error, match=message):
        sweep(BASE, grid, **kwargs)


def test_bad_base_config():
    with pytest.raises(ValueError, match=r"base_config\.output must be None"):
        sweep(BASE.replace(output="x.nc"), {"seed": [0]})
    with pytest.raises(TypeError, match="base_config must be a TrainConfig"):
        sweep({"steps": 3}, {"seed": [0]})
    with pytest.raises(ValueError, match="batched runs do not track curvature"):
        sweep(BASE.replace(hessian_top_k=1), {"seed": [0]})


def _fake_sweep():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, (2, 3, 4))
    ds = xr.Dataset(
        {"final_val_accuracy": (("amplitude", "period", "seed"), values)},
        coords={"amplitude": [1.0, 10.0], "period": [10.0, 100.0, 1000.0], "seed": range(4)},
    )
    return ds, values


def test_phase_diagram_is_seed_mean_and_sem():
    ds, values = _fake_sweep()
    values[1, 2, 0] = np.nan  # a diverged run is left out
    ds["final_val_accuracy"].values[1, 2, 0] = np.nan
    phase = phase_diagram(ds)
    assert phase.dims == ("stat", "amplitude", "period")
    np.testing.assert_allclose(phase.sel(stat="mean"), np.nanmean(values, -1))
    n = np.isfinite(values).sum(-1)
    np.testing.assert_allclose(phase.sel(stat="n"), n)
    np.testing.assert_allclose(phase.sel(stat="sem"), np.nanstd(values, -1, ddof=1) / np.sqrt(n))
    assert phase_diagram(ds, "final_val_accuracy").equals(phase)


def test_phase_diagram_refuses_ambiguous_dims():
    ds, _ = _fake_sweep()
    wide = xr.concat([ds, ds], dim=xr.DataArray([10, 20], dims="width", name="width"))
    with pytest.raises(ValueError, match=r"dimensions \{'width': 2\} remain.*sel\(width=10\)"):
        phase_diagram(wide)
    assert phase_diagram(wide.isel(width=[0])).sizes["period"] == 3
    with pytest.raises(ValueError, match="metric 'accuracy' is not a final metric"):
        phase_diagram(ds, "accuracy")
    with pytest.raises(ValueError, match="'T' is not a dimension of the sweep"):
        phase_diagram(ds, x="T")
    with pytest.raises(ValueError, match="the kept dimensions must differ"):
        phase_diagram(ds, x="period", y="period")


def test_figures():
    ds, _ = _fake_sweep()
    fig = plot_phase_diagram(ds)
    assert isinstance(fig, Figure)
    assert fig.axes[0].get_title().endswith("mean over 4 seeds")
    ds["final_val_accuracy"].values[1, 2, 0] = np.nan  # one diverged run
    title = plot_phase_diagram(ds).axes[0].get_title()
    assert title.endswith("mean over 3–4 seeds per cell")
    width = xr.Dataset(
        {
            "final_val_accuracy": (
                ("width", "loss", "seed"),
                np.random.default_rng(1).random((3, 2, 3)),
            )
        },
        coords={"width": [10, 100, 1000], "loss": ["ce", "dce"], "seed": range(3)},
    )
    fig = plot_width(width)
    assert isinstance(fig, Figure)
    styles = [line.get_linestyle() for line in fig.axes[0].get_lines()]
    assert "--" in styles and "-" in styles


def test_sweep_over_loss_and_width_assembles_and_plots():
    # The 2025 width study sweeps `loss`: the coordinate takes the name, the summary moves.
    ds = sweep(BASE, {"width": [4, 8], "loss": ["ce", "dce"], "seed": [0, 1]})
    assert ds["loss"].values.tolist() == ["ce", "dce"]
    assert ds["summary_loss"].dims == ("width", "loss", "seed", "summary_step")
    assert "static_loss" in ds and "summary_static_loss" not in ds
    fig = plot_width(ds)
    assert isinstance(fig, Figure)


def test_sweep_over_architectures(tmp_path):
    # hidden_widths is a TrainConfig field, so a grid key: whole architectures, labelled
    # "4x4" in the coordinate and in the run file names.
    grid = {"hidden_widths": [[4, 4], [6]], "seed": [0]}
    ds = sweep(BASE, grid, run_files=tmp_path, summary_every=20)
    assert ds["hidden_widths"].values.tolist() == ["4x4", "6"]
    assert sorted(p.name for p in tmp_path.glob("*.nc")) == [
        "hidden_widths=4x4_seed=0.nc",
        "hidden_widths=6_seed=0.nc",
    ]
    run = xr.load_dataset(tmp_path / "hidden_widths=4x4_seed=0.nc")
    assert TrainConfig.from_json(run.attrs["config"]).hidden_widths == (4, 4)
    alone = train(BASE.replace(hidden_widths=(4, 4), seed=0))
    np.testing.assert_allclose(
        ds["loss"].sel(hidden_widths="4x4", seed=0).values,
        alone["loss"].sel(step=[0, 20, 40]).values,
        rtol=1e-6,
    )


def test_shipped_sweep_reproduces_phase_example():
    path = ROOT / "data" / "sweep_laptop.nc"
    assert path.stat().st_size < 1_000_000
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from phase_diagram import phase_table
    finally:
        sys.path.pop(0)
    phase = phase_table(path)
    expected = json.loads((ROOT / "data" / "sweep_laptop_phase.json").read_text())
    assert phase["amplitude"].values.tolist() == expected["amplitude"]
    np.testing.assert_allclose(phase.sel(stat="mean"), expected["mean"], rtol=1e-12)
    np.testing.assert_allclose(phase.sel(stat="sem"), expected["sem"], rtol=1e-12)
    with xr.open_dataset(path) as ds:
        assert ds.attrs["command"].startswith("dynloss sweep examples/sweep_laptop.toml")


@pytest.fixture(scope="module")
def shipped_rerun():
    """Two runs of the shipped sweep (A = 20, T = 200, seeds 0 and 1), trained again, and the
    file's records of them."""
    with xr.open_dataset(ROOT / "data" / "sweep_laptop.nc") as ds:
        base = TrainConfig.from_json(ds.attrs["base_config"])
        point = ds.sel(amplitude=20.0, period=200.0, seed=[0, 1]).load()
    again = sweep(
        base,
        {"amplitude": [20.0], "period": [200.0], "seed": [0, 1]},
        summary_every=int(ds.attrs["summary_every"]),
        stop_last_period=True,
    )
    return again.isel(amplitude=0, period=0), point


def test_shipped_sweep_reruns_from_the_same_start(shipped_rerun):
    """On any machine: the records at step 0 (data, initialisation, loss, Γ) are the file's."""
    again, point = shipped_rerun
    assert again.attrs["host"] == host()
    for name in SUMMARY_VARIABLES:
        np.testing.assert_allclose(
            again[name].sel(summary_step=0),
            point[name].sel(summary_step=0),
            rtol=1e-5,  # the order of sums may differ (a GPU); another start differs by O(1)
            err_msg=name,
        )


def test_shipped_sweep_reruns_exactly_where_it_was_recorded(shipped_rerun):
    """Where the file was made, the runs repeat to the last bit. Elsewhere they need not:
    these runs sit at the edge of stability and follow rounding, and XLA:CPU rounds
    differently with other vector instructions (on an AVX2-only CPU, the file's former
    final accuracies 0.613 / 0.613, recorded on another CPU, came out 0.743 / 0.637; a 1-ulp
    change of the learning rate moves them as far)."""
    again, point = shipped_rerun
    if point.attrs["host"] != host():
        pytest.skip(f"data/sweep_laptop.nc was recorded on {point.attrs['host']!r}, not here")
    for name in SUMMARY_VARIABLES:
        np.testing.assert_array_equal(again[name], point[name], err_msg=name)
    for name in FINAL_VARIABLES:  # evaluated for a whole batch: 50 runs there, 2 here
        np.testing.assert_allclose(again[name], point[name], rtol=1e-6, atol=0, err_msg=name)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="dynloss")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args), parser


def test_cli_sweep_and_phase(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(
        "[base]\nhidden_widths = [6]\nsteps = 40\neval_every = 20\nchunk_steps = 40\n"
        "[grid]\namplitude = [1.0, 5.0]\nperiod = [10.0, 20.0]\nseed = [0, 1]\n"
        "[sweep]\nsummary_every = 20\n"
    )
    out = tmp_path / "s.nc"
    code, _ = _cli(["sweep", str(grid), "--output", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text
    ds = xr.load_dataset(out)
    assert ds.attrs["command"] == f"dynloss sweep {grid} --output {out} --quiet"
    fig = tmp_path / "p.png"
    code, _ = _cli(["phase", str(out), "--output", str(fig)])
    text = capsys.readouterr().out
    assert "seed mean ± standard error" in text and f"wrote {fig}" in text
    assert fig.stat().st_size > 0


def test_cli_reports_what_it_wrote(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(
        "[base]\nhidden_widths = [6]\nsteps = 40\neval_every = 20\nchunk_steps = 40\n"
        "[grid]\nseed = [0, 1]\n[sweep]\nsummary_every = 20\n"
    )
    out, runs = tmp_path / "s.nc", tmp_path / "rf"
    _cli(["sweep", str(grid), "--output", str(out), "--quiet"])
    assert f"wrote {out}" in capsys.readouterr().out
    _cli(["sweep", str(grid), "--output", str(out), "--run-files", str(runs), "--quiet"])
    text = capsys.readouterr().out
    assert f"wrote {runs}/ (2 run files)" in text
    assert f"{out} already holds this sweep; left unchanged" in text
    assert f"wrote {out}" not in text
    assert sorted(p.name for p in runs.glob("*.nc")) == ["seed=0.nc", "seed=1.nc"]
    _cli(["sweep", str(grid), "--output", str(out), "--run-files", str(runs), "--quiet"])
    text = capsys.readouterr().out
    assert f"{runs}/ already holds the 2 finished run files; left unchanged" in text
    assert "\nwrote" not in "\n" + text
    (runs / "seed=1.nc").write_text("not a run file")
    with pytest.raises(FileExistsError, match=r"seed=1\.nc' already exists"):
        _cli(["sweep", str(grid), "--output", str(out), "--run-files", str(runs), "--quiet"])
    args = ["sweep", str(grid), "--output", str(out), "--run-files", str(runs), "--quiet"]
    _cli([*args, "--overwrite"])
    text = capsys.readouterr().out
    assert f"wrote {runs}/ (1 of 2 run files; the others were finished already)" in text
    assert _status(runs / "seed=1.nc")[0] == "complete"


def test_cli_help_has_examples(capsys):
    for command in ("sweep", "phase"):
        with pytest.raises(SystemExit):
            _cli([command, "--help"])
        assert "examples:\n  dynloss " + command in capsys.readouterr().out


def test_grid_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"grid file .* does not exist"):
        read_grid_file(tmp_path / "none.toml")
    bad = tmp_path / "b.toml"
    bad.write_text("[base]\nsteps = 3\n")
    with pytest.raises(ValueError, match=r"needs a non-empty \[grid\] table"):
        read_grid_file(bad)
    bad.write_text("[grid]\nseed = [0]\n[extra]\na = 1\n")
    with pytest.raises(ValueError, match=r"unknown table\(s\) \['extra'\]"):
        read_grid_file(bad)
    bad.write_text("[grid]\nseed = [0]\n[sweep]\nworkers = 2\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['workers'\]"):
        read_grid_file(bad)


def test_example_grid_files_parse():
    for name in ("sweep_laptop", "sweep_phase_2021", "sweep_width_2025"):
        base, grid, options = read_grid_file(ROOT / "examples" / f"{name}.toml")
        assert len(expand(base, grid, stop_last_period=options.get("stop_last_period", False)))
    _, grid, _ = read_grid_file(ROOT / "examples" / "sweep_phase_2021.toml")
    assert len(grid["amplitude"]) * len(grid["period"]) * len(grid["seed"]) == 5000


def test_phase_cli_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sweep file .* does not exist"):
        _cli(["phase", str(tmp_path / "none.nc")])
    with pytest.raises(ValueError, match="--sel must be DIM=VALUE"):
        _cli(["phase", str(ROOT / "data" / "sweep_laptop.nc"), "--sel", "bogus"])


def test_stop_last_period_never_negative():
    # A period longer than the run: Γ is static from step 0, not a negative stop_after.
    assert expand(BASE, {"period": [100.0]}, stop_last_period=True)[0].stop_after == 0


def test_existing_output_with_another_stop_last_period_is_another_sweep(tmp_path):
    out = tmp_path / "s.nc"
    sweep(BASE, {"seed": [0]}, output=out, summary_every=20)
    with pytest.raises(FileExistsError, match="holds a different sweep"):
        sweep(BASE, {"seed": [0]}, output=out, summary_every=20, stop_last_period=True)


def test_none_grid_values_are_labelled_none():
    ds = sweep(BASE, {"stop_after": [None, 30]}, summary_every=20)
    assert ds["stop_after"].values.tolist() == ["none", "30"]
    # The two runs differ only after step 30 (Γ static there for the second).
    loss = ds["loss"].sel(summary_step=[0, 20]).values
    np.testing.assert_allclose(loss[0], loss[1], rtol=1e-6)


def test_phase_diagram_of_a_sweep_without_seeds():
    # One run per cell: the mean is the value itself, n = 1, and no standard error (NaN).
    ds, values = _fake_sweep()
    single = ds.isel(seed=0, drop=True)
    phase = phase_diagram(single)
    np.testing.assert_allclose(phase.sel(stat="mean"), values[..., 0])
    np.testing.assert_array_equal(phase.sel(stat="n"), 1.0)
    assert np.isnan(phase.sel(stat="sem")).all()


def test_phase_table_and_figure_axes():
    from analysis._phase import format_phase_table

    ds, values = _fake_sweep()
    phase = phase_diagram(ds)  # y = amplitude (2 rows), x = period (3 columns)
    lines = format_phase_table(phase).splitlines()
    assert lines[0] == "final_val_accuracy: seed mean ± standard error"
    assert lines[1].split() == ["amplitude", "\\", "period", "10.0", "100.0", "1000.0"]
    assert [line.split()[0] for line in lines[2:]] == ["1.0", "10.0"]
    mean = values.mean(-1)
    sem = values.std(-1, ddof=1) / 2
    assert lines[3].split()[2] == f"{mean[1, 1]:.3f}±{sem[1, 1]:.3f}"
    ax = plot_phase_diagram(ds).axes[0]
    assert ax.get_xlabel() == "period" and ax.get_ylabel() == "amplitude"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "100", "1000"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "10"]


def test_width_figure_axes():
    width = xr.Dataset(
        {"final_val_accuracy": (("width", "loss", "seed"), np.ones((3, 2, 2)))},
        coords={"width": [10, 100, 1000], "loss": ["ce", "dce"], "seed": range(2)},
    )
    ax = plot_width(width).axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "hidden width"
    assert ax.get_legend_handles_labels()[1] == ["CE", "DCE"]


def test_phase_cli_selects_before_averaging(tmp_path, capsys):
    ds, _ = _fake_sweep()
    wide = xr.concat([ds, ds + 1.0], dim=xr.DataArray([10, 20], dims="width", name="width"))
    path = tmp_path / "wide.nc"
    wide.to_netcdf(path)
    code, _ = _cli(["phase", str(path), "--sel", "width=20"])
    assert code == 0
    table = capsys.readouterr().out.splitlines()
    expected = float(wide["final_val_accuracy"].sel(width=20, amplitude=1.0, period=10.0).mean())
    assert table[2].split()[1].startswith(f"{expected:.3f}±")
    with pytest.raises(ValueError, match=r"'30' is not a value of 'width'; its values are \[10"):
        _cli(["phase", str(path), "--sel", "width=30"])


def test_cli_options_override_the_grid_file(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(
        "[base]\nhidden_widths = [4]\nsteps = 40\neval_every = 20\nchunk_steps = 40\n"
        "[grid]\nseed = [0]\n[sweep]\nsummary_every = 40\n"
    )
    out = tmp_path / "s.nc"
    _cli(["sweep", str(grid), "--output", str(out), "--summary-every", "20", "--quiet"])
    ds = xr.load_dataset(out)
    assert int(ds.attrs["summary_every"]) == 20
    assert ds["summary_step"].values.tolist() == [0, 20]
    assert "1 runs, 0 diverged" in capsys.readouterr().out


def test_resume_with_another_summary_interval_recomputes_parts(tmp_path):
    # Without run files (which force a recomputation anyway): the part's name alone must
    # tell that it was computed with summary_every=40.
    out = tmp_path / "s.nc"
    options = dict(output=out, batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        sweep(BASE, {"seed": [0, 1]}, summary_every=40, progress=_interrupt_after(1), **options)
    seen = []
    ds = sweep(
        BASE, {"seed": [0, 1]}, summary_every=20, progress=lambda d, t: seen.append(d), **options
    )
    assert seen[0] == 0
    assert ds["summary_step"].values.tolist() == [0, 20, 40]
    assert np.isfinite(ds["loss"].values).all()
