"""The trainer and its run files: records, checkpoints, restore, dtypes, divergence, failures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr

from schedules import triangle
from training import STEP_VARIABLES, TrainConfig, open_run, restore, train
from training._runfile import host

SMALL = TrainConfig(
    hidden_widths=(16,),
    steps=250,
    checkpoint_every=60,
    eval_every=25,
    chunk_steps=100,
    amplitude=5.0,
    period=50.0,
)


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "small.nc"
    train(SMALL.replace(output=str(path)))
    return path


def test_file_layout(run_path):
    ds = open_run(run_path)
    assert ds.attrs["status"] == "complete"
    assert int(ds.attrs["last_complete_step"]) == 249
    assert ds.attrs["format_version"] == "1"
    assert ds.attrs["dynloss_version"]
    assert ds.attrs["host"] == host() and host().startswith(f"jax {jax.__version__}, ")
    assert TrainConfig.from_json(ds.attrs["config"]) == SMALL.replace(output=str(run_path))
    np.testing.assert_array_equal(ds["step"], np.arange(250))
    for name in STEP_VARIABLES:
        assert ds[name].dims[0] == "step"
        assert ds[name].attrs["long_name"] and "units" in ds[name].attrs
    assert ds["gamma"].dims == ("step", "class")
    # chunks break at checkpoints (every 60) and chunk boundaries (every 100); final one at 250
    np.testing.assert_array_equal(ds["checkpoint_step"], [0, 60, 120, 180, 240, 250])
    assert ds["params"].dims == ("checkpoint", "param") and ds.sizes["param"] == 2 * 16 + 16 + 51
    assert ds["rng_key"].dtype == np.uint32
    layout = json.loads(ds.attrs["param_layout"])
    assert sum(int(np.prod(shape)) for _, shape, _ in layout) == ds.sizes["param"]
    val = ds["val_accuracy"].values
    assert np.all(np.isfinite(val[::25])) and np.all(np.isnan(np.delete(val, np.s_[::25])))


def test_gamma_recorded_is_the_schedule(run_path):
    ds = open_run(run_path)
    s = triangle(3, 50.0, 5.0)
    for t in (0, 10, 25, 77, 249):
        np.testing.assert_allclose(ds["gamma"].sel(step=t), s(t), rtol=1e-6)
    np.testing.assert_allclose(ds["gamma"].sum("class"), 3.0, rtol=1e-6)


def test_restore_reproduces_recorded_loss(run_path):
    ds = open_run(run_path)
    for step in (0, 60, 180, 240):
        r = restore(run_path, step)
        assert r.step == step and r.gamma.shape == (3,)
        recorded = float(ds["loss"].sel(step=step))
        np.testing.assert_allclose(float(r.loss_fn(r.params)), recorded, rtol=1e-6)
        recorded_static = float(ds["static_loss"].sel(step=step))
        np.testing.assert_allclose(float(r.static_loss_fn(r.params)), recorded_static, rtol=1e-6)
        out = r.model.apply(r.params, r.data.x_train)
        np.testing.assert_allclose(
            np.mean(np.argmax(out, -1) == r.data.y_train),
            float(ds["train_accuracy"].sel(step=step)),
            rtol=1e-6,
        )


def test_restore_rejects_unsaved_step(run_path):
    with pytest.raises(ValueError, match="step 61 is not a saved checkpoint"):
        restore(run_path, 61)


def test_float64_run_without_flags_and_float32_stays_float32(tmp_path):
    assert not jax.config.jax_enable_x64
    config = SMALL.replace(steps=120, dtype="float64", output=str(tmp_path / "f64.nc"))
    ds = train(config)
    for name in ("loss", "gamma", "params", "grad_norm"):
        assert ds[name].dtype == np.float64, name
    r = restore(config.output, 60)  # restoring a float64 run turns x64 on for the process
    np.testing.assert_allclose(
        float(r.loss_fn(r.params)), float(ds["loss"].sel(step=60)), rtol=1e-12
    )
    jax.config.update("jax_enable_x64", False)
    reference = train(SMALL.replace(steps=120))
    with jax.enable_x64(True):
        ds32 = train(SMALL.replace(steps=120))
    for name in ("loss", "gamma", "params", "grad_norm", "val_loss"):
        assert ds32[name].dtype == np.float32, name
    # the global 64-bit flag does not change a float32 run at all
    xr.testing.assert_identical(ds32, reference)


def test_divergence_is_recorded(tmp_path):
    config = SMALL.replace(
        loss="dmse1", learning_rate=50.0, steps=400, output=str(tmp_path / "div.nc")
    )
    ds = train(config)
    assert ds.attrs["status"] == "diverged"
    bad = int(ds.attrs["diverged_at_step"])
    assert ds.sizes["step"] == bad + 1 == int(ds.attrs["last_complete_step"]) + 1
    assert not np.isfinite(ds["loss"].values[-1]) and np.all(np.isfinite(ds["loss"].values[:-1]))


def test_existing_output_is_not_overwritten(run_path):
    before = run_path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists; choose another path"):
        train(SMALL.replace(output=str(run_path)))
    assert run_path.read_bytes() == before


def test_failure_marks_file_and_keeps_records(tmp_path):
    path = tmp_path / "fail.nc"

    def progress(done, total, latest):
        if done >= 100:
            raise RuntimeError("interrupted by the test")

    with pytest.raises(RuntimeError, match="interrupted"):
        train(SMALL.replace(output=str(path)), progress=progress)
    ds = open_run(path)
    assert ds.attrs["status"] == "failed" and "interrupted by the test" in ds.attrs["error"]
    assert ds.sizes["step"] == 100 and int(ds.attrs["last_complete_step"]) == 99


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"track_every": 10}, r"track_every=10 has nothing to track: set hessian_top_k"),
        (
            {"hidden_widths": (1,), "hessian_top_k": 5},
            r"hessian_top_k must be <= P/2 = 4 for online tracking \(got 5; P = 9 parameters\)",
        ),
    ],
)
def test_tracking_options_that_cannot_take_effect_are_refused(tmp_path, changes, message):
    path = tmp_path / "run.nc"
    with pytest.raises(ValueError, match=message):
        train(SMALL.replace(steps=5, output=str(path), **changes))
    assert not path.exists()


def test_static_loss_records_unit_gamma_and_equal_losses():
    ds = train(SMALL.replace(loss="ce", steps=60))
    np.testing.assert_array_equal(ds["gamma"], 1.0)
    np.testing.assert_array_equal(ds["loss"], ds["static_loss"])


def test_minibatch_run_is_deterministic():
    config = SMALL.replace(batch_size=32, steps=80, optimizer="momentum")
    a, b = train(config), train(config)
    xr.testing.assert_identical(a, b)
    assert ds_is_finite(a)


def ds_is_finite(ds):
    return bool(np.all(np.isfinite(ds["loss"].values)))


def test_no_output_returns_dataset_without_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = train(SMALL.replace(steps=30))
    assert ds.attrs["status"] == "complete" and list(tmp_path.iterdir()) == []


def test_killed_run_leaves_readable_file(tmp_path):
    path = tmp_path / "killed.nc"
    config = TrainConfig(
        hidden_widths=(16,),
        steps=2_000_000,
        chunk_steps=2000,
        checkpoint_every=100_000,
        output=str(path),
    )
    script = (
        "from training import TrainConfig, train\n"
        f"train(TrainConfig.from_json({config.to_json()!r}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=os.environ | {"JAX_PLATFORMS": "cpu"}
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.5)
            if path.exists() and _steps_on_disk(path) >= 4000:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ds = open_run(path)
    assert ds.attrs["status"] == "running"
    n = ds.sizes["step"]
    assert n >= 4000 and n % 2000 == 0
    assert int(ds.attrs["last_complete_step"]) == n - 1
    assert np.all(np.isfinite(ds["loss"].values))


def test_open_run_retries_a_read_that_lands_in_an_append(tmp_path, monkeypatch):
    path = tmp_path / "run.nc"
    train(SMALL.replace(steps=20, output=str(path)))
    real, calls = xr.open_dataset, []

    def flaky(*args, **kwargs):
        calls.append(args[0])
        if len(calls) <= 2:
            raise RuntimeError("NetCDF: HDF error")
        return real(*args, **kwargs)

    monkeypatch.setattr(xr, "open_dataset", flaky)
    ds = open_run(path, siblings=False)
    assert len(calls) == 3 and ds.sizes["step"] == 20

    def always(*args, **kwargs):
        raise RuntimeError("NetCDF: HDF error")

    monkeypatch.setattr(xr, "open_dataset", always)
    with pytest.raises(RuntimeError, match="HDF error"):
        open_run(path, siblings=False)


def _steps_on_disk(path: Path) -> int:
    # A poll that lands in the middle of the writer's append can fail with an HDF error
    # (OSError or RuntimeError), and one right after the file was created finds no netCDF
    # header yet (ValueError from xarray's engine guess): both mean "not yet", poll again.
    try:
        with xr.open_dataset(path) as ds:
            return int(ds.attrs.get("last_complete_step", -1)) + 1
    except (OSError, RuntimeError, ValueError):
        return 0


def test_repeated_runs_reuse_the_compiled_loop_and_record_their_own_output(tmp_path):
    first = train(SMALL.replace(steps=80, output=str(tmp_path / "a.nc")))
    second = train(SMALL.replace(steps=80, output=str(tmp_path / "b.nc")))
    assert TrainConfig.from_json(second.attrs["config"]).output == str(tmp_path / "b.nc")
    for name in STEP_VARIABLES:
        xr.testing.assert_identical(first[name], second[name])


def test_summary_step_records_equal_full_records_on_summary_steps():
    from training import build, initial_state, make_step

    config = SMALL.replace(steps=40, eval_every=5)
    problem = build(config)
    carry = (*initial_state(problem), (), problem.hyper)
    steps = jax.numpy.arange(40)
    _, full = jax.lax.scan(make_step(problem), carry, steps)
    _, summary = jax.lax.scan(make_step(problem, summary_every=10), carry, steps)
    on = np.arange(40) % 10 == 0
    for name in full:
        a, b = np.asarray(full[name]), np.asarray(summary[name])
        if name in ("loss", "gamma", "learning_rate"):
            np.testing.assert_allclose(b, a, rtol=1e-6)
        else:
            np.testing.assert_allclose(b[on], a[on], rtol=1e-6)
            assert np.all(np.isnan(b[~on]))
    for bad in (0, 7, True, 2.0):
        with pytest.raises(ValueError, match="summary_every must be None or a positive multiple"):
            make_step(problem, summary_every=bad)


TINY64 = TrainConfig(
    hidden_widths=(8,),
    steps=60,
    eval_every=20,
    chunk_steps=40,
    checkpoint_every=20,
    period=20.0,
    learning_rate=0.5,
    stop_after=50,
    dtype="float64",
)


def test_records_are_those_of_the_checkpointed_parameters(tmp_path):
    # At a checkpoint step s (also an eval step) the records belong to the saved parameters
    # p_s (before the update of step s): val_loss/val_accuracy are the static loss/accuracy of
    # p_s on the validation split, grad_norm is |∇ loss_s(p_s)| (η = 0.5: not the update's
    # norm), and Γ is the schedule with stop_after (Γ ≡ 1 from step 50 on).
    from schedules import cross_entropy

    path = tmp_path / "run.nc"
    ds = train(TINY64.replace(output=str(path)))
    for s in (0, 20, 40):
        r = restore(path, s)
        out_val = r.model.apply(r.params, r.data.x_val)
        val_loss = float(cross_entropy(out_val, jax.numpy.asarray(r.data.y_val)))
        val_acc = np.mean(np.argmax(np.asarray(out_val), -1) == r.data.y_val)
        np.testing.assert_allclose(float(ds["val_loss"].sel(step=s)), val_loss, rtol=1e-12)
        np.testing.assert_allclose(float(ds["val_accuracy"].sel(step=s)), val_acc, rtol=1e-12)
        out = r.model.apply(r.params, r.data.x_train)  # accuracies k/N exact in float64
        train_acc = np.mean(np.argmax(np.asarray(out), -1) == r.data.y_train)
        np.testing.assert_allclose(float(ds["train_accuracy"].sel(step=s)), train_acc, rtol=1e-14)
        grads = jax.grad(r.loss_fn)(r.params)
        norm = np.sqrt(sum(np.sum(np.asarray(g) ** 2) for g in jax.tree.leaves(grads)))
        np.testing.assert_allclose(float(ds["grad_norm"].sel(step=s)), norm, rtol=1e-12)
    expected = np.stack([triangle(3, 20.0, 10.0, stop_after=50)(t) for t in range(60)])
    np.testing.assert_allclose(ds["gamma"].values, expected, rtol=1e-14)
    assert not np.allclose(ds["gamma"].sel(step=49), 1.0)
    np.testing.assert_array_equal(ds["gamma"].sel(step=slice(50, None)), 1.0)


@pytest.mark.parametrize("optimizer", ["gd", "momentum", "nesterov"])
def test_optimizer_updates_by_hand(tmp_path, optimizer):
    # optax.sgd: trace_{s+1} = g_s + μ·trace_s; gd p -= η g_s, heavy ball p -= η trace_{s+1},
    # Nesterov p -= η (g_s + μ trace_{s+1}), with g_s the gradient of the loss of step s (Γ(s)).
    from jax.flatten_util import ravel_pytree

    config = TINY64.replace(
        steps=3, checkpoint_every=1, optimizer=optimizer, momentum=0.9, stop_after=None
    )
    path = tmp_path / "run.nc"
    train(config.replace(output=str(path)))
    eta, mu = config.learning_rate, config.momentum
    params = restore(path, 0).params
    trace = jax.tree.map(np.zeros_like, params)
    for s in range(3):
        g = jax.grad(restore(path, s).loss_fn)(params)
        trace = jax.tree.map(lambda t, g: g + mu * t, trace, g)
        if optimizer == "gd":
            step = g
        elif optimizer == "momentum":
            step = trace
        else:
            step = jax.tree.map(lambda g, t: g + mu * t, g, trace)
        params = jax.tree.map(lambda p, d: p - eta * d, params, step)
        saved = ravel_pytree(restore(path, s + 1).params)[0]
        np.testing.assert_allclose(saved, ravel_pytree(params)[0], rtol=1e-12, atol=1e-14)


def test_minibatches_are_fresh_every_step():
    # With a tiny learning rate the parameters barely move, so the minibatch static loss
    # varies from step to step only through the sampled batch; its mean is near the
    # full-batch loss (sampling is uniform).
    config = SMALL.replace(batch_size=32, steps=40, learning_rate=1e-6, eval_every=20)
    ds = train(config)
    static = ds["static_loss"].values
    assert static.std() > 1e-2 * static.mean()
    full = restore(ds, 0).static_loss_fn(restore(ds, 0).params)
    np.testing.assert_allclose(static.mean(), float(full), rtol=0.1)


def test_interrupt_marks_file_with_its_cause(tmp_path):
    path = tmp_path / "interrupted.nc"

    def progress(done, total, latest):
        if done >= 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(SMALL.replace(output=str(path)), progress=progress)
    ds = open_run(path)
    assert ds.attrs["status"] == "failed"
    assert ds.attrs["error"] == "KeyboardInterrupt: interrupted (Ctrl-C or SIGINT)"
    assert int(ds.attrs["last_complete_step"]) == 99


def test_runs_differing_in_hyperparameters_share_one_program():
    # A learning-rate study: the learning rate, Γ's amplitude and period, stop_after and the
    # momentum are arguments of the compiled step, so the second run reuses the first one's
    # program (no new trace or compilation of the chunk) and equals the same run compiled on
    # its own.
    import training._trainer as trainer

    base = TrainConfig(hidden_widths=(5,), steps=30, checkpoint_every=10, hessian_top_k=1)
    other = base.replace(learning_rate=0.7, amplitude=3.0, period=10.0, stop_after=20)
    trainer._PREPARED.clear()
    train(base)
    (prepared,) = trainer._PREPARED.values()
    shared = train(other)
    (again,) = trainer._PREPARED.values()
    assert again is prepared and prepared.run_chunk._cache_size() == 1
    trainer._PREPARED.clear()
    alone = train(other)
    for name in ("loss", "gamma", "hessian_eigenvalues", "params"):
        np.testing.assert_array_equal(shared[name].values, alone[name].values)
    assert json.loads(shared.attrs["config"])["learning_rate"] == 0.7
    # A user metric may read ctx.config, so it keeps a program per configuration.
    metrics = {"lr": lambda ctx: ctx.config.learning_rate}
    plain = base.replace(hessian_top_k=0, steps=2)
    assert train(plain, metrics=metrics)["lr"].values[0] == 1.0
    assert train(plain.replace(learning_rate=0.7), metrics=metrics)["lr"].values[0] == 0.7
