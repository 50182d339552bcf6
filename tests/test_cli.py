"""End-to-end tests of the dynloss command line."""

import subprocess
import sys

import numpy as np
import pytest

from analysis._cli import main
from training import TrainConfig, open_run


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
    ds = open_run(run)
    assert ds.sizes["step"] == 6000 and np.all(np.isfinite(ds["loss"]))


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
