"""End-to-end tests of the dynloss command line."""

import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from analysis import hessian_trajectory
from analysis._cli import main, parse_steps
from training import TrainConfig, open_run, train


def test_train_then_info(tmp_path, capsys):
    out = tmp_path / "cli.nc"
    code = main(
        [
            "train",
            "--hidden-widths",
            "8",
            "--steps",
            "120",
            "--period",
            "40",
            "--stop-after",
            "none",
            "--checkpoint-every",
            "50",
            "--quiet",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "status: complete" in printed
    ds = open_run(out)
    config = TrainConfig.from_json(ds.attrs["config"])
    assert config.hidden_widths == (8,) and config.period == 40 and config.stop_after is None
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "status          complete" in info and "steps recorded  120 of 120" in info


def test_train_from_toml_with_override(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(TrainConfig(hidden_widths=(4,), steps=40, loss="dmse2").to_toml())
    out = tmp_path / "t.nc"
    assert (
        main(["train", "--config", str(toml), "--seed", "3", "--quiet", "--output", str(out)]) == 0
    )
    config = TrainConfig.from_json(open_run(out).attrs["config"])
    assert (config.loss, config.seed, config.steps) == ("dmse2", 3, 40)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--amplitude", "0.5"], "amplitude must be >= 1"),
        (["--loss", "hinge"], "loss must be one of"),
        (["--learning-rate", "0"], "learning_rate must be > 0"),
        (["--hidden-widths", "0"], "hidden_widths must be a non-empty list of integers >= 1"),
        (["--period", "0"], "period must be > 0"),
    ],
)
def test_bad_input_writes_nothing(tmp_path, capsys, option, message):
    out = tmp_path / "bad.nc"
    assert main(["train", *option, "--steps", "10", "--quiet", "--output", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_file(capsys, tmp_path):
    assert main(["info", str(tmp_path / "nope.nc")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_writes_run_and_figure(tmp_path, capsys):
    assert main(["demo", "--steps", "6000", "--quiet", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    run, figure = tmp_path / "demo.nc", tmp_path / "demo.png"
    assert f"wrote {run}" in printed and f"wrote {figure}" in printed
    assert figure.stat().st_size > 10_000
    ds = open_run(run, siblings=False)
    assert ds.sizes["step"] == 6000 and np.all(np.isfinite(ds["loss"]))
    assert np.all(np.isfinite(ds["hessian_eigenvalues"]))
    merged = open_run(run)  # + the NTK λ_max of every checkpoint, the final one (6000) included
    assert np.isfinite(merged["ntk_eigenvalues"].sel(step=6000)).all()
    assert "threshold λ_th" in printed and "instabilities detected" in printed


def test_console_script_help():
    exe = [sys.executable, "-m", "analysis._cli"]
    for command in ([], ["train"], ["info"], ["demo"]):
        result = subprocess.run(
            [*exe, *command, "--help"], capture_output=True, text=True, check=True
        )
        assert "examples:" in result.stdout


def test_map_user_function_from_file(tmp_path, capsys):
    run = tmp_path / "m.nc"
    assert (
        main(
            [
                "train",
                "--hidden-widths",
                "8",
                "--steps",
                "100",
                "--checkpoint-every",
                "25",
                "--quiet",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    diag = tmp_path / "diag.py"
    diag.write_text("def loss_again(ctx):\n    return ctx.loss_fn(ctx.params)\n")
    assert main(["map", str(run), f"{diag}:loss_again", "--steps", "0:100:50", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "wrote " + str(tmp_path / "m.loss_again.nc") in printed
    ds = open_run(run)
    np.testing.assert_allclose(
        ds["loss_again"].sel(step=[0, 50]), ds["loss"].sel(step=[0, 50]), rtol=1e-5
    )
    assert np.isnan(ds["loss_again"].sel(step=25))
    assert main(["map", str(run), "no_colon_here"]) == 2
    assert "module:function" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lr_runs(tmp_path_factory):
    """Two tracked DCE runs at η = 1 and 2 (T = 1000/η), each with several cascades."""
    folder = tmp_path_factory.mktemp("lr")
    paths = []
    for eta in (1.0, 2.0):
        path = folder / f"lr{eta:g}.nc"
        main(
            [
                "train",
                "--hidden-widths",
                "32",
                "--amplitude",
                "40",
                "--period",
                str(1000 / eta),
                "--steps",
                str(int(5000 / eta)),
                "--learning-rate",
                str(eta),
                "--hessian-top-k",
                "3",
                "--projection",
                "true",
                "--checkpoint-every",
                "500",
                "--quiet",
                "--output",
                str(path),
            ]
        )
        paths.append(path)
    return paths


def test_detect_hessian_ntk(lr_runs, capsys):
    run = lr_runs[0]
    assert main(["detect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "instabilities detected (alternation)" in out and "threshold λ_th" in out
    assert (run.parent / "lr1.onsets-alternation.nc").exists()
    onsets = xr.open_dataset(run.parent / "lr1.onsets-alternation.nc")
    oscillating = onsets["onset_step"].values < 4000  # the last period (4000-5000) is static
    phase = (onsets["onset_step"].values[oscillating] % 1000) / 1000
    assert phase.size >= 3 and np.all(phase > 0.5)  # in the second half of their period
    assert main(["hessian", str(run), "--steps", "0:5000:2500", "--k", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "λ2" in out and f"wrote {run.parent / 'lr1.hessian.nc'}" in out
    assert main(["ntk", str(run), "--steps", "2500", "--full", "--subset", "50", "--quiet"]) == 0
    assert "divergent" in capsys.readouterr().out
    ds = open_run(run)
    assert "ntk_spectrum" in ds and "hessian_eigenvalues_hessian" in ds
    # Post-hoc results are stored as the trainer stores them: the restart flag in the run's
    # float32, eigen indices int32.
    for name in ("hessian_eigenvalues", "hessian_restarted"):
        assert ds[f"{name}_hessian"].dtype == ds[name].dtype == np.float32, name
    for dim in ds["hessian_eigenvalues_hessian"].dims[1:] + ds["hessian_eigenvalues"].dims[1:]:
        assert ds[dim].dtype == np.int32, dim


def test_hessian_and_ntk_take_several_runs(lr_runs, tmp_path, capsys):
    # One command for a learning-rate study: every run is checked first, then analysed in one
    # process (their programs compiled once); a glob's result files are skipped.
    runs = []
    for run in lr_runs:
        runs.append(tmp_path / run.name)
        runs[-1].write_bytes(run.read_bytes())
    first, second = map(str, runs)
    # Step 3000 is saved in the first run only (the second has 2500 steps): nothing is written.
    assert main(["hessian", first, second, "--steps", "0", "3000", "--k", "1", "--quiet"]) == 2
    assert "lr2.nc: steps [3000] are not saved checkpoints" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("*.nc")) == ["lr1.nc", "lr2.nc"]
    # An earlier result of the second run with other options refuses the command before the
    # first run is analysed; --overwrite replaces it.
    assert main(["hessian", second, "--steps", "0", "--k", "2", "--quiet"]) == 0
    capsys.readouterr()
    several = ["hessian", first, second, "--steps", "0:2001:1000", "--k", "1", "--quiet"]
    assert main(several) == 2
    assert "lr2.nc: " in capsys.readouterr().err
    assert not (tmp_path / "lr1.hessian.nc").exists()
    assert main([*several, "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert f"\n{first}\n" in out and f"\n{second}\n" in out
    assert out.count("wrote") == 2
    for run in runs:
        alone = hessian_trajectory(run, steps=[0, 1000, 2000], k=1)
        with xr.open_dataset(run.with_suffix(".hessian.nc")) as written:
            np.testing.assert_array_equal(
                written["hessian_eigenvalues"], alone["hessian_eigenvalues"]
            )
    everything = sorted(map(str, tmp_path.glob("*.nc")))  # lr1.hessian.nc, lr1.nc, ...
    assert main(["ntk", *everything, "--steps", "1000", "--k", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "skipping 2 post-hoc result file(s)" in captured.err
    assert all((tmp_path / f"{run.stem}.ntk.nc").exists() for run in runs)


def test_fit_and_plots(lr_runs, tmp_path, capsys):
    fit_json = tmp_path / "fit.json"
    assert main(["fit", *map(str, lr_runs), "--output", str(fit_json), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "exponent α" in out and fit_json.exists()
    import json

    fit = json.loads(fit_json.read_text())
    assert -1.3 < fit["exponent"] < -0.7  # λ_th ∝ 1/η: the edge of stability
    # A glob of the folder also matches the runs' post-hoc results (RUN.<kind>.nc): skipped.
    assert main(["detect", str(lr_runs[0])]) == 0
    everything = sorted(map(str, lr_runs[0].parent.glob("*.nc")))
    assert len(everything) > len(lr_runs)
    again = tmp_path / "again.json"
    figure = tmp_path / "fit.png"
    assert (
        main(
            [
                "fit",
                *everything,
                "--output",
                str(again),
                "--bootstrap",
                "50",
                "--figure",
                str(figure),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "skipping" in captured.err
    lines = captured.out.splitlines()
    row = lines[lines.index(next(x for x in lines if "exponent α" in x)) + 2]
    assert row.split()[-1] == str(len(lr_runs))  # the runs fitted, not the files given
    assert json.loads(again.read_text())["exponent"] == fit["exponent"]
    assert sorted(json.loads(again.read_text())["runs"]) == sorted(map(str, lr_runs))
    assert figure.stat().st_size > 5000
    for kind in ("run", "projection", "density", "section"):
        png = tmp_path / f"{kind}.png"
        assert main(["plot", kind, str(lr_runs[0]), "--step", "2500", "--output", str(png)]) == 0
        assert png.stat().st_size > 5000
    png = tmp_path / "threshold.png"
    assert (
        main(["plot", "threshold", *map(str, lr_runs), "--output", str(png), "--bootstrap", "20"])
        == 0
    )
    assert png.stat().st_size > 5000
    assert main(["plot", "run", *map(str, lr_runs)]) == 2
    assert "takes one run file" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "nope.nc")]) == 2
    assert "run file '" in capsys.readouterr().err  # open_run's message, not xarray's


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["0:100:0"], r"--steps stride must be a positive integer \(got '0:100:0'\)"),
        (["0:100:-1"], r"--steps stride must be a positive integer"),
        (["abc"], r"--steps takes integers and start:stop\[:stride\] ranges \(got 'abc'\)"),
        (["1.5"], r"--steps takes integers"),
        ([""], r"--steps takes integers"),
        (["500:600"], r"--steps 500:600 selects no saved checkpoint; saved steps are \[0, 50"),
        (["1:2:3:4"], r"--steps range must be start:stop\[:stride\]"),
    ],
)
def test_bad_steps_name_the_option(tokens, message):
    with pytest.raises(ValueError, match=message):
        parse_steps(tokens, np.array([0, 50, 100]))


def test_steps_ranges_and_integers():
    saved = np.array([0, 50, 100, 150])
    assert parse_steps(["0:101:100", "150", "50"], saved) == [0, 50, 100, 150]
    assert parse_steps([":"], saved) == [0, 50, 100, 150]
    assert parse_steps(None, saved) is None


def test_unimportable_diagnostic_module_is_a_message(capsys, tmp_path):
    run = tmp_path / "r.nc"
    train(TrainConfig(hidden_widths=(4,), steps=20, checkpoint_every=10, output=str(run)))
    assert main(["map", str(run), "no_such_module_here:fn", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot import module 'no_such_module_here'" in err and "Traceback" not in err
    assert main(["ntk", str(run), "--full", "--k", "0", "--quiet"]) == 2
    assert "--k must be a positive integer (got 0)" in capsys.readouterr().err


def test_diverged_run_info_bad_file_and_unused_tolerance(capsys, tmp_path):
    run = tmp_path / "div.nc"
    config = TrainConfig(
        hidden_widths=(100,), steps=50, loss="mse", learning_rate=1e6, output=str(run)
    )
    train(config)
    assert main(["info", str(run)]) == 0
    assert "diverged at" in capsys.readouterr().out
    assert main(["detect", str(run), "--tolerance", "3"]) == 2
    assert "--tolerance is the lambda_jump detector's threshold" in capsys.readouterr().err
    junk = tmp_path / "junk.nc"
    junk.write_text("not netCDF")
    assert main(["info", str(junk)]) == 2
    assert "is not a readable netCDF run file" in capsys.readouterr().err


def test_train_output_default_is_shown_and_none_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "run file to write (default: the --config file's output, else runs/run.nc" in help_text
    assert main(["train", "--steps", "10", "--quiet", "--output", "none"]) == 2
    err = capsys.readouterr().err
    assert "--output must be a file path (got 'none')" in err and "runs/run.nc" in err
    assert not (tmp_path / "runs").exists()
    assert main(["train", "--hidden-widths", "4", "--steps", "10", "--quiet"]) == 0
    assert "wrote runs/run.nc" in capsys.readouterr().out
    assert (tmp_path / "runs" / "run.nc").is_file()


def test_train_config_path_with_an_equals_sign(tmp_path, capsys):
    toml = tmp_path / "lr=0.5.toml"
    toml.write_text(TrainConfig(hidden_widths=(4,), steps=10, learning_rate=0.5).to_toml())
    out = tmp_path / "lr=0.5.nc"
    assert main(["train", "--config", str(toml), "--quiet", "--output", str(out)]) == 0
    assert TrainConfig.from_json(open_run(out).attrs["config"]).learning_rate == 0.5


def test_info_counts_trained_steps_only(tmp_path, capsys):
    from analysis import hessian_trajectory

    run = tmp_path / "r.nc"
    train(TrainConfig(hidden_widths=(4,), steps=20, checkpoint_every=10, output=str(run)))
    hessian_trajectory(run, k=1, append=True)  # checkpoints 0, 10 and the final 20
    assert open_run(run).sizes["step"] == 21  # the sibling's step 20 is merged
    assert main(["info", str(run)]) == 0
    assert "steps recorded  20 of 20" in capsys.readouterr().out


def test_density_plot_draws_the_optimizers_own_limit(tmp_path, monkeypatch):
    import analysis._plots

    run = tmp_path / "nesterov.nc"
    config = TrainConfig(hidden_widths=(8,), steps=20, checkpoint_every=10, output=str(run))
    train(config.replace(optimizer="nesterov", momentum=0.9, learning_rate=0.5))
    seen = {}
    original = analysis._plots.plot_spectral_density

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(analysis._plots, "plot_spectral_density", spy)
    png = tmp_path / "density.png"
    assert main(["plot", "density", str(run), "--step", "10", "--output", str(png)]) == 0
    assert seen["optimizer"] == "nesterov" and seen["momentum"] == 0.9
    assert seen["learning_rate"] == 0.5
    # Without --step and --output: the middle checkpoint (0, 10, 20), drawn to RUN.density.png.
    assert main(["plot", "density", str(run)]) == 0
    assert seen["label"] == "step 10"
    assert (tmp_path / "nesterov.density.png").stat().st_size > 1000


def test_diverged_training_exits_3(tmp_path, capsys):
    # A run that diverges is written and reported, with exit code 3 (not success).
    out = tmp_path / "div.nc"
    args = ["--hidden-widths", "100", "--steps", "50", "--loss", "mse", "--learning-rate", "1e6"]
    assert main(["train", *args, "--quiet", "--output", str(out)]) == 3
    printed = capsys.readouterr().out
    assert "status: diverged" in printed and f"wrote {out}" in printed


def test_steps_ranges_count_the_stride_from_their_start():
    saved = np.array([0, 50, 100, 150, 200])
    assert parse_steps(["50:201:100"], saved) == [50, 150]
    assert parse_steps(["100:"], saved) == [100, 150, 200]


def test_info_rereads_a_running_run_caught_in_the_middle_of_an_append(monkeypatch):
    # A read that fails with HDF5's error, or sees records and last_complete_step disagree, is
    # retried; `info` never crashes on it and says when it could not get a consistent read.
    import analysis._cli

    monkeypatch.setattr(analysis._cli.time, "sleep", lambda seconds: None)
    running = {"status": "running", "last_complete_step": 999}
    ahead, consistent = {"attrs": running, "recorded": 2000}, {"attrs": running, "recorded": 1000}
    reads = iter([RuntimeError("NetCDF: HDF error"), ahead, consistent])

    def snapshot(path):
        value = next(reads)
        if isinstance(value, Exception):
            raise value
        return value

    monkeypatch.setattr(analysis._cli, "_info_snapshot", snapshot)
    assert analysis._cli._read_info("run.nc") == (consistent, True)
    monkeypatch.setattr(analysis._cli, "_info_snapshot", lambda path: ahead)
    assert analysis._cli._read_info("run.nc") == (ahead, False)


def test_detect_writes_its_result_before_printing(lr_runs, monkeypatch):
    # `dynloss detect RUN.nc | head -1`: the pipe closes at the first line; the result file is
    # already written, and the exit status is a shell's for SIGPIPE.
    import builtins

    run = lr_runs[1]
    target = run.parent / "lr2.onsets-branches.nc"
    target.unlink(missing_ok=True)

    def closed_pipe(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    # The handler points stdout at /dev/null so that Python's exit flush raises nothing. Inside
    # pytest that descriptor is the capture's file: record the call instead of making it.
    redirected = []

    def dup2(fd, fd2):
        os.close(fd)
        redirected.append(fd2)

    monkeypatch.setattr(os, "dup2", dup2)
    monkeypatch.setattr(builtins, "print", closed_pipe)
    assert main(["detect", str(run), "--method", "branches"]) == 141
    monkeypatch.undo()
    assert target.exists()
    assert redirected == [sys.stdout.fileno()]


def test_interrupt_is_a_message_and_a_folder_is_not_a_run(monkeypatch, capsys, tmp_path):
    import analysis._cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis._cli, "_cmd_info", interrupted)
    assert main(["info", "run.nc"]) == 130
    assert "dynloss info: interrupted; the files written before are intact" in (
        capsys.readouterr().err
    )
    monkeypatch.undo()
    assert main(["info", str(tmp_path)]) == 2
    assert "is a folder; give the path of a run file (.nc)" in capsys.readouterr().err


def test_the_requests_check_with_the_trajectories_defaults():
    # The command line checks every run with hessian_request / ntk_request before analysing
    # any: their defaults must be those of the trajectories they check for.
    import inspect

    from analysis import _trajectories

    for request, trajectory in (
        (_trajectories.hessian_request, _trajectories.hessian_trajectory),
        (_trajectories.ntk_request, _trajectories.ntk_trajectory),
    ):
        checked = inspect.signature(request).parameters
        used = inspect.signature(trajectory).parameters
        for name, parameter in checked.items():
            assert parameter.default == used[name].default, (request.__name__, name)
