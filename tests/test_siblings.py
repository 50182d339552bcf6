"""Post-hoc result files next to a run: what is merged, what is kept, what is never touched."""

import json
import os
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import analysis._map as map_module
from analysis import hessian_trajectory, map_checkpoints, ntk_trajectory
from analysis._cli import main
from training import (
    TrainConfig,
    hessian_metric,
    open_run,
    sibling_files,
    sibling_path,
    train,
    write_sibling,
)

TINY = TrainConfig(hidden_widths=(4,), steps=60, checkpoint_every=20, amplitude=5.0, period=20.0)


def loss_value(ctx):
    return ctx.loss_fn(ctx.params)


@pytest.fixture
def runs(tmp_path):
    """``lr=1.nc`` with a post-hoc result, and a sweep neighbour ``lr=1.5.nc``."""
    first, second = tmp_path / "lr=1.nc", tmp_path / "lr=1.5.nc"
    train(TINY.replace(output=str(first)))
    train(TINY.replace(learning_rate=1.5, output=str(second)))
    map_checkpoints(first, loss_value, steps=[0, 20], append=True)
    return first, second


def test_a_neighbour_run_is_neither_merged_nor_deleted(runs):
    first, second = runs
    assert sibling_files(first) == [sibling_path(first, "loss_value")]
    assert sibling_files(second) == []
    merged = open_run(first)
    assert "loss_5" not in merged and "params_5" not in merged
    assert np.isfinite(merged["loss_value"].sel(step=20))
    merged.close()
    # A config error must not delete anything; a real overwrite deletes this run's results only.
    with pytest.raises(ValueError, match=r"hessian_top_k must be <= P/2 = 13 for online"):
        train(TINY.replace(output=str(first), hessian_top_k=1000), overwrite=True)
    assert sibling_path(first, "loss_value").exists() and second.exists()
    train(TINY.replace(output=str(first)), overwrite=True)
    assert not sibling_path(first, "loss_value").exists() and second.exists()


def test_results_of_the_same_shape_merge_and_others_are_refused(runs):
    first, _ = runs
    map_checkpoints(first, loss_value, steps=[40], append=True)
    kept = xr.open_dataset(sibling_path(first, "loss_value"))
    np.testing.assert_array_equal(kept["step"], [0, 20, 40])
    kept.close()
    hessian_trajectory(first, steps=[0, 20], k=2, append=True)
    with pytest.raises(FileExistsError, match=r"computed with other options \(\{.*\"k\": 2"):
        hessian_trajectory(first, steps=[40], k=1, append=True)
    with xr.open_dataset(sibling_path(first, "hessian")) as ds:
        np.testing.assert_array_equal(ds["step"], [0, 20])

    def pair(ctx):  # the same name, another shape
        return jnp.stack([ctx.loss_fn(ctx.params)] * 2)

    with pytest.raises(FileExistsError, match="differ from the new ones in loss_value"):
        map_checkpoints(first, pair, steps=[40], name="loss_value", append=True)
    hessian_trajectory(first, steps=[40], k=1, append=True, overwrite=True)
    with xr.open_dataset(sibling_path(first, "hessian")) as ds:
        np.testing.assert_array_equal(ds["step"], [40])
        assert ds.sizes["eigen_index"] == 1


def test_a_file_of_another_run_is_not_replaced(runs, tmp_path):
    first, _ = runs
    stranger = sibling_path(first, "hessian")
    xr.Dataset({"x": ("step", [1.0])}, coords={"step": [0]}).to_netcdf(stranger)
    result = xr.Dataset({"y": ("step", [2.0])}, coords={"step": [0]})
    with pytest.raises(FileExistsError, match="was not computed from"):
        write_sibling(first, "hessian", result)
    with xr.open_dataset(stranger) as ds:
        assert "x" in ds


def test_a_failing_diagnostic_does_not_replace_complete_results(runs):
    first, _ = runs

    def loss_value(ctx):  # same name, fails at step 20
        if int(ctx.step) >= 20:
            raise RuntimeError("boom")
        return ctx.loss_fn(ctx.params) + 1.0

    with pytest.raises(Exception, match="boom"):
        map_checkpoints(first, loss_value, steps=[0, 20], append=True)
    with xr.open_dataset(sibling_path(first, "loss_value")) as ds:
        np.testing.assert_array_equal(ds["step"], [0, 20])  # step 20 kept, step 0 updated


def test_density_on_a_model_smaller_than_the_default_depth(runs):
    first, _ = runs  # 27 parameters, below the default Lanczos depth of 80
    result = hessian_trajectory(first, steps=[20], k=2, density=True)
    assert np.all(np.isfinite(result["hessian_density"]))


def test_results_at_the_final_checkpoint_extend_the_run(runs):
    # The outer join on step: the final checkpoint (step 60, after the last trained step 59)
    # is merged as a step of its own.
    first, _ = runs
    map_checkpoints(first, loss_value, steps=[60], append=True)
    with open_run(first) as ds:
        assert ds.sizes["step"] == TINY.steps + 1
        assert np.isfinite(ds["loss_value"].sel(step=60)) and np.isnan(ds["loss"].sel(step=60))


def test_duplicate_steps_are_taken_once(runs):
    first, _ = runs
    result = hessian_trajectory(first, steps=[40, 0, 40], k=1, warm=False, append=True)
    np.testing.assert_array_equal(result["step"], [0, 40])
    assert open_run(first).sizes["step"] == TINY.steps  # opens: the step index is unique


def test_cli_errors_are_one_line_messages(runs, capsys, tmp_path):
    first, _ = runs
    assert main(["hessian", str(first), "--k", "1000", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: k must be an integer with 1 <= k <= P = 27" in err and "Traceback" not in err
    assert ".." not in err
    broken = tmp_path / "broken.nc"
    broken.write_bytes(b"not a netCDF file")
    assert main(["info", str(broken)]) == 2
    assert "error:" in capsys.readouterr().err


def test_demo_keeps_an_existing_run_unless_asked(tmp_path, capsys):
    existing = tmp_path / "demo.nc"
    train(TINY.replace(output=str(existing)))
    assert main(["demo", "--steps", "50", "--quiet", "--output-dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert open_run(existing).sizes["step"] == TINY.steps


def test_results_of_an_earlier_run_under_the_same_name_are_not_adopted(runs):
    first, _ = runs  # lr=1.nc with loss_value at steps 0 and 20
    first.unlink()
    train(TINY.replace(seed=7, output=str(first)))  # a different run under the same name
    assert sibling_files(first) == [] and "loss_value" not in open_run(first)
    with pytest.raises(FileExistsError, match="was not computed from"):
        map_checkpoints(first, loss_value, steps=[20], append=True)


def test_results_with_other_options_are_not_merged(runs):
    first, _ = runs
    from analysis import ntk_trajectory

    ntk_trajectory(first, steps=[0, 20], k=2, append=True)
    with pytest.raises(FileExistsError, match="computed with other options"):
        ntk_trajectory(first, steps=[40], k=2, subset=10, append=True)
    ntk_trajectory(first, steps=[40], k=2, append=True)  # same options: merged
    with xr.open_dataset(sibling_path(first, "ntk")) as ds:
        np.testing.assert_array_equal(ds["step"], [0, 20, 40])


def test_refusals_come_before_the_computation(runs, monkeypatch):
    first, _ = runs
    hessian_trajectory(first, steps=[0], k=2, append=True)
    import analysis._trajectories as trajectories

    def never(*args, **kwargs):
        raise AssertionError("computed although the result would be refused")

    monkeypatch.setattr(trajectories, "map_checkpoints", never)
    with pytest.raises(FileExistsError, match="computed with other options"):
        hessian_trajectory(first, steps=[20], k=3, append=True)


def test_a_copy_of_the_run_keeps_its_own_results(runs, tmp_path):
    first, _ = runs
    import shutil

    copy = tmp_path / "lr=1.backup.nc"
    shutil.copy(first, copy)
    map_checkpoints(copy, loss_value, steps=[40], append=True)  # lr=1.backup.loss_value.nc
    assert sibling_files(first) == [sibling_path(first, "loss_value")]
    train(TINY.replace(output=str(first)), overwrite=True)
    assert sibling_path(copy, "loss_value").exists()
    with pytest.raises(ValueError, match=r"without '\.' or '/'"):
        map_checkpoints(first, loss_value, name="a.b", append=True)


def test_results_without_recorded_options_still_merge(runs):
    first, _ = runs
    hessian_trajectory(first, steps=[0], k=1, append=True)
    target = sibling_path(first, "hessian")
    with xr.open_dataset(target) as ds:
        legacy = ds.load()
    del legacy.attrs["options"]  # as written before options were recorded
    legacy.to_netcdf(target)
    hessian_trajectory(first, steps=[20], k=1, num_iterations=np.int64(20), append=True)
    with xr.open_dataset(target) as ds:
        np.testing.assert_array_equal(ds["step"], [0, 20])
        assert '"num_iterations": 20' in ds.attrs["options"]


def test_run_names_with_glob_characters(tmp_path):
    run = tmp_path / "run[1].nc"
    train(TINY.replace(steps=20, checkpoint_every=10, output=str(run)))
    map_checkpoints(run, loss_value, steps=[0, 10], append=True)
    assert sibling_files(run) == [tmp_path / "run[1].loss_value.nc"]
    with open_run(run) as ds:
        assert np.isfinite(ds["loss_value"].sel(step=10))


def test_runs_without_an_extension_name_their_results_by_kind(tmp_path):
    import shutil

    run = tmp_path / "myrun"
    train(TINY.replace(steps=20, checkpoint_every=10, hessian_top_k=1, output=str(run)))
    hessian_trajectory(run, steps=[0], k=1, append=True)
    assert sibling_files(run) == [tmp_path / "myrun.hessian"]
    with open_run(run) as ds:  # tracked online and post hoc: the post-hoc one named by kind
        assert "hessian_eigenvalues" in ds and "hessian_eigenvalues_hessian" in ds
    backup = tmp_path / "myrun.backup"  # stem "myrun", suffix ".backup"
    shutil.copy(run, backup)
    hessian_trajectory(backup, steps=[10], k=1, append=True)
    assert sibling_files(backup) == [tmp_path / "myrun.hessian.backup"]
    assert sibling_files(run) == [tmp_path / "myrun.hessian"]  # not the backup's


def test_overwrite_discards_every_earlier_step_as_its_help_says(runs, capsys):
    first, _ = runs
    hessian_trajectory(first, steps=[0, 20, 40], k=2, append=True)
    with pytest.raises(SystemExit):
        main(["hessian", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "replace RUN.hessian.nc as a whole: every earlier step in it is discarded" in help_text
    command = ["hessian", str(first), "--steps", "0", "--k", "2", "--overwrite", "--quiet"]
    assert main(command) == 0  # the same shape and options
    with xr.open_dataset(sibling_path(first, "hessian")) as ds:
        np.testing.assert_array_equal(ds["step"], [0])


def test_overwrite_that_cannot_open_the_output_keeps_the_results(runs, monkeypatch):
    # A protected run file (chmod a-w, or any failure to open it): the old run and its
    # post-hoc results stay, since results are deleted only once the new file is open.
    import training._runfile

    first, _ = runs
    before = first.read_bytes()

    def refuse(self, path, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(training._runfile.RunWriter, "__init__", refuse)
    with pytest.raises(PermissionError):
        train(TINY.replace(output=str(first)), overwrite=True)
    monkeypatch.undo()
    assert first.read_bytes() == before
    assert sibling_files(first) == [sibling_path(first, "loss_value")]


def test_an_output_created_meanwhile_by_another_process_is_not_replaced(tmp_path, monkeypatch):
    # Two `train` calls started together with the same output both pass the first check; the
    # file is created with NC_NOCLOBBER, so the later one is refused instead of mixing runs.
    import training._trainer

    path = tmp_path / "same.nc"
    prepare = training._trainer._prepare

    def prepare_while_another_run_starts(*args):
        prepared = prepare(*args)
        monkeypatch.setattr(training._trainer, "_prepare", prepare)
        train(TINY.replace(seed=2, output=str(path)))  # the other process
        return prepared

    monkeypatch.setattr(training._trainer, "_prepare", prepare_while_another_run_starts)
    with pytest.raises(FileExistsError, match="another process may have created it"):
        train(TINY.replace(seed=1, output=str(path)))
    monkeypatch.undo()
    with open_run(path) as ds:
        assert ds.attrs["status"] == "complete"
        assert json.loads(ds.attrs["config"])["seed"] == 2


CHILD = """
import sys
import xarray as xr
from training import write_sibling
part = xr.load_dataset(sys.argv[2])
print("ready", flush=True)
write_sibling(sys.argv[1], "loss_value", part)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="the folder lock uses POSIX flock")
def test_results_written_at_the_same_time_are_merged(runs):
    # Another process (the child) writes step 40 while this one holds the folder lock and
    # writes steps 0, 20, 60: the child waits for the lock, then merges with what it finds.
    import fcntl

    first, _ = runs
    target = sibling_path(first, "loss_value")
    part = first.parent / "part.nc"
    map_checkpoints(first, loss_value, steps=[40]).to_netcdf(part)
    ours = map_checkpoints(first, loss_value, steps=[0, 20, 60])
    with xr.open_dataset(target) as earlier:
        ours = ours.assign_attrs(source_config=earlier.attrs["source_config"])
    folder = os.open(first.parent, os.O_RDONLY)
    fcntl.flock(folder, fcntl.LOCK_EX)
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(first), str(part)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the child is now at the lock (without it, it would have merged)
        ours.to_netcdf(first.parent / "ours.tmp")
        os.replace(first.parent / "ours.tmp", target)
    finally:
        os.close(folder)
    assert child.wait(timeout=120) == 0
    with xr.open_dataset(target) as merged:
        np.testing.assert_array_equal(merged["step"], [0, 20, 40, 60])
    assert not list(first.parent.glob(".*.tmp"))  # no temporary files left behind
    plain = first.parent / "plain.txt"
    plain.write_text("")  # the user's umask decides who may read results, as for any file
    assert target.stat().st_mode == plain.stat().st_mode


def test_analysing_a_run_again_compiles_nothing(runs, compilations):
    # The programs of a diagnostic are kept per configuration and diagnostic, and the built-in
    # factories return the same Metric for the same options: a second analysis of the run, or
    # of a copy of it, reuses them (a warm tracker's update alone compiles for seconds).
    assert hessian_metric(1) is hessian_metric(1)
    assert hessian_metric(1, tol=1e-3) is not hessian_metric(1, tol=1e-2)
    first, _ = runs
    copy = first.parent / "copy.nc"
    copy.write_bytes(first.read_bytes())
    eig = hessian_trajectory(first, steps=[20, 40], k=1)
    with compilations() as seen:
        again = hessian_trajectory(copy, steps=[20, 40], k=1)
        loss = map_checkpoints(copy, loss_value, steps=[0, 20])
    assert seen == []
    np.testing.assert_array_equal(again["hessian_eigenvalues"], eig["hessian_eigenvalues"])
    np.testing.assert_array_equal(
        loss["loss_value"], open_run(first)["loss_value"].sel(step=[0, 20])
    )


def learning_rate_of(ctx):
    return ctx.learning_rate


def configured_learning_rate(ctx):
    return ctx.config.learning_rate


def test_runs_differing_in_learning_rate_share_the_trajectories_programs(runs, compilations):
    # A learning-rate study: the built-in trajectories take the learning rate, Γ's amplitude
    # and period as arguments of their programs, so a neighbour run compiles nothing new, and
    # gives the values it gives when its programs are compiled for it alone.
    first, second = runs
    third = second.parent / "amplitude=8.nc"
    train(TINY.replace(learning_rate=0.5, amplitude=8.0, period=30.0, output=str(third)))
    hessian_trajectory(first, steps=[20, 40], k=1)
    full = {first: ntk_trajectory(first, steps=[20], full=True)}
    with compilations() as seen:
        shared = {run: hessian_trajectory(run, steps=[20, 40], k=1) for run in (second, third)}
        full[third] = ntk_trajectory(third, steps=[20], full=True)
    assert seen == []
    for run in (second, third):
        map_module._PROGRAMS.clear()
        with compilations() as seen:
            alone = hessian_trajectory(run, steps=[20, 40], k=1)
        assert seen  # compiled again: the values above did not come from elsewhere
        for var in ("hessian_eigenvalues", "hessian_residuals", "grad_projection"):
            np.testing.assert_array_equal(shared[run][var], alone[var])
    # The full NTK's stability factors 1 - ηλ/N use each run's own η (1 and 0.5).
    samples = TINY.points_per_class * TINY.num_classes
    for run, eta in ((first, 1.0), (third, 0.5)):
        spectrum = full[run]["ntk_spectrum"].values
        np.testing.assert_allclose(
            full[run]["ntk_stability_factors"].values, 1 - eta * spectrum / samples, rtol=1e-6
        )
    # A diagnostic of one's own: shared, it sees each run's η in ctx.learning_rate; not
    # shared, its run's configuration in ctx.config.
    map_checkpoints(first, learning_rate_of, share_programs=True)
    with compilations() as seen:
        eta = map_checkpoints(third, learning_rate_of, share_programs=True)
    assert seen == [] and np.all(eta["learning_rate_of"] == 0.5)
    for run, eta in ((first, 1.0), (second, 1.5)):
        configured = map_checkpoints(run, configured_learning_rate, steps=[20])
        assert float(configured["configured_learning_rate"][0]) == eta
    # Γ (amplitude and period) comes from each run's own values through a shared program.
    for run in (first, third):
        got = map_checkpoints(run, loss_value, steps=[0, 20, 40], share_programs=True)
        recorded = open_run(run)["loss"].sel(step=[0, 20, 40])
        np.testing.assert_allclose(got["loss_value"], recorded, rtol=5e-7)
