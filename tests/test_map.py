"""User diagnostics: online (train(metrics=...)) and post hoc (map_checkpoints) are peers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from analysis._map import DiagnosticError, map_checkpoints
from training import Metric, TrainConfig, open_run, sibling_path, train

CONFIG = TrainConfig(
    hidden_widths=(12,), steps=200, checkpoint_every=50, track_every=25, amplitude=5.0, period=40.0
)


def grad_cosine(ctx):
    """Cosine between the gradients of the dynamical and the static loss."""
    g_static = jax.grad(ctx.static_loss_fn)(ctx.params)
    return optax.tree.vdot(ctx.grads, g_static) / (
        optax.tree.norm(ctx.grads) * optax.tree.norm(g_static)
    )


def per_class(ctx):
    pred = jnp.argmax(ctx.apply_fn(ctx.params, ctx.x), -1)
    onehot = jax.nn.one_hot(ctx.y, ctx.gamma.shape[0])
    return {
        "accuracy": (onehot * (pred == ctx.y)[:, None]).sum(0) / onehot.sum(0),
        "loss": ctx.loss_fn(ctx.params),
    }


def scalar_and_array(ctx):
    return jnp.stack([ctx.gamma.sum(), ctx.learning_rate])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("map") / "run.nc"
    train(
        CONFIG.replace(output=str(path)),
        metrics={"grad_cosine": grad_cosine, "per_class": per_class, "pair": scalar_and_array},
    )
    return path


def test_online_records(run):
    ds = open_run(run)
    assert ds.attrs["metrics"] == '["grad_cosine", "per_class", "pair"]'
    assert ds["per_class_accuracy"].dims == ("step", "per_class_accuracy_dim_0")
    assert ds["pair"].dims == ("step", "pair_dim_0")
    tracked = ds["grad_cosine"].values
    assert np.all(np.isfinite(tracked[::25])) and np.all(np.isnan(np.delete(tracked, np.s_[::25])))
    np.testing.assert_allclose(
        ds["per_class_loss"].values[::25], ds["loss"].values[::25], rtol=1e-6
    )
    np.testing.assert_allclose(ds["pair"].values[::25, 0], 3.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("fn", "name"),
    [(grad_cosine, "grad_cosine"), (per_class, "per_class"), (scalar_and_array, "pair")],
)
def test_post_hoc_equals_online(run, fn, name):
    post = map_checkpoints(run, fn, name=name)
    online = open_run(run)
    steps = post["step"].values[post["step"].values < CONFIG.steps]
    np.testing.assert_array_equal(post["step"], [0, 50, 100, 150, 200])
    for var in post.data_vars:
        np.testing.assert_allclose(
            post[var].sel(step=steps), online[var].sel(step=steps), rtol=2e-5, atol=1e-6
        )


def test_short_last_batch_is_padded_and_compiled_once(run):
    def traced(log):
        def loss_at(ctx):
            log.append(None)  # runs once per trace, i.e. per compiled shape
            return ctx.loss_fn(ctx.params)

        return loss_at

    split, whole = [], []
    # batches 2, 2, 1 + pad (a NumPy integer is an integer)
    post = map_checkpoints(run, traced(split), batch=np.int64(2), name="loss_at")
    one = map_checkpoints(run, traced(whole), batch=5, name="loss_at")
    np.testing.assert_array_equal(post["step"], [0, 50, 100, 150, 200])
    np.testing.assert_allclose(post["loss_at"], one["loss_at"], rtol=1e-6)
    assert len(split) == len(whole)  # no second compilation for the short last batch


def test_python_only_function_falls_back_to_a_loop(run):
    def host_side(ctx):
        return float(np.asarray(ctx.loss_fn(ctx.params)))  # not traceable: needs the value

    post = map_checkpoints(run, host_side, steps=[50, 100])
    online = open_run(run)
    np.testing.assert_allclose(post["host_side"], online["loss"].sel(step=[50, 100]), rtol=1e-5)


def test_stateful_metric_and_named_dims(run):
    counter = Metric(
        init=lambda ctx: jnp.zeros((), jnp.int32),
        update=lambda ctx, n: ({"count": n + 1, "gamma": ctx.gamma}, n + 1),
        dims={"gamma": ("class",)},
    )
    post = map_checkpoints(run, counter, name="counter")
    np.testing.assert_array_equal(post["counter_count"], [1, 2, 3, 4, 5])
    assert post["counter_gamma"].dims == ("step", "class")


def test_error_names_the_step_and_keeps_results(run):
    def fails_late(ctx):
        if int(ctx.step) >= 100:
            raise RuntimeError("the user's bug")
        return float(ctx.loss_fn(ctx.params))

    with pytest.raises(
        DiagnosticError, match="failed at step 100: RuntimeError: the user's bug"
    ) as info:
        map_checkpoints(run, fails_late, append=True)
    assert info.value.step == 100
    np.testing.assert_array_equal(info.value.partial["step"], [0, 50])
    merged = open_run(run)
    assert np.isfinite(merged["fails_late"].sel(step=50)) and np.isnan(
        merged["fails_late"].sel(step=51)
    )


def test_append_and_merge(run):
    map_checkpoints(run, grad_cosine, steps=[0, 100], append=True, name="cos_posthoc")
    assert sibling_path(run, "cos_posthoc").exists()
    merged = open_run(run)
    assert merged.sizes["step"] == CONFIG.steps
    assert np.isfinite(merged["cos_posthoc"].sel(step=100))


def test_bad_inputs(run):
    with pytest.raises(ValueError, match=r"steps \[51\] are not saved checkpoints"):
        map_checkpoints(run, grad_cosine, steps=[51])
    with pytest.raises(ValueError, match=r"steps is empty; name at least one saved checkpoint"):
        map_checkpoints(run, grad_cosine, steps=[])
    with pytest.raises(ValueError, match="a lambda has no name"):
        map_checkpoints(run, lambda ctx: 1.0)
    for batch in (0, True, 2.0):
        message = rf"batch must be an integer >= 1 or None \(got {batch}\)"
        with pytest.raises(ValueError, match=message):
            map_checkpoints(run, grad_cosine, batch=batch)
    with pytest.raises(ValueError, match="append=True needs the run's file path"):
        map_checkpoints(open_run(run), grad_cosine, append=True)
    stateless_metric = Metric(lambda ctx: (), lambda ctx, s: (ctx.gamma.sum(), s))
    with pytest.raises(ValueError, match="a Metric has no name; pass name="):
        map_checkpoints(run, stateless_metric)
    with pytest.raises(TypeError, match="one diagnostic is expected here, not a mapping"):
        map_checkpoints(run, {"a": grad_cosine, "b": per_class})


def nothing(ctx):
    return None


def label(ctx):
    return {"ok": ctx.gamma.sum(), "label": "x"}


def python_float(ctx):
    return float(ctx.loss_fn(ctx.params))


def test_values_are_numbers_in_the_runs_dtype(run):
    # What a run file can hold, post hoc as online: numbers, stored in the run's float dtype.
    for fn, var in ((nothing, "nothing"), (label, "label_label")):
        with pytest.raises(ValueError, match=rf"metric {fn.__name__!r} returned .* for {var!r}"):
            map_checkpoints(run, fn, steps=[0], append=True)
        assert not sibling_path(run, fn.__name__).exists()
    with pytest.raises(ValueError, match=r"metric 'nothing' returned None for 'nothing'"):
        train(CONFIG.replace(steps=10), metrics={"nothing": nothing})
    with pytest.raises(TypeError, match=r"metrics must be a mapping \{'name': fn\} \(got a list"):
        train(CONFIG.replace(steps=10), metrics=[grad_cosine])
    stored = map_checkpoints(run, python_float, steps=[0, 50])
    assert stored["python_float"].dtype == np.float32  # a Python float, as the trainer stores it
    # Equal on CPU; within a few float32 ulp on a GPU, whose fused training step sums the loss
    # in another order than the loss function called alone.
    np.testing.assert_allclose(
        stored["python_float"], open_run(run)["loss"].sel(step=[0, 50]), rtol=5e-7
    )


def test_online_metric_must_be_traceable_and_not_clash():
    def masked(ctx):
        return jnp.mean(ctx.x[ctx.y == 0])

    with pytest.raises(ValueError, match="metric 'masked' cannot run inside the trainer's"):
        train(CONFIG.replace(steps=10), metrics={"masked": masked})
    with pytest.raises(ValueError, match=r"clash with variables the trainer records"):
        train(CONFIG.replace(steps=10), metrics={"loss": grad_cosine})


def test_metric_names_of_run_file_variables_are_refused_before_any_file_is_touched(tmp_path):
    path = tmp_path / "run.nc"
    config = CONFIG.replace(steps=10, checkpoint_every=5, track_every=1, output=str(path))
    train(config)
    before = open_run(path).load()
    bad = {
        "rng_key": ({"rng_key": grad_cosine}, "clash with variables the trainer records"),
        "dim": (
            {"w": Metric(lambda c: (), lambda c, s: (jnp.zeros(4), s), {"": ("param",)})},
            r"dimension name\(s\) \['param'\] clash with dimensions every run file has",
        ),
        "class": (
            {"w": Metric(lambda c: (), lambda c, s: (jnp.zeros(4), s), {"": ("class",)})},
            r"metric dimension 'class' has size 4, but the run has 3 classes",
        ),
    }
    for metrics, message in bad.values():
        with pytest.raises(ValueError, match=message):
            train(config, metrics=metrics, overwrite=True)
    after = open_run(path).load()
    assert after.sizes == before.sizes and after.attrs["config"] == before.attrs["config"]
    np.testing.assert_array_equal(after["loss"], before["loss"])


def test_online_metric_may_use_the_class_dimension(tmp_path):
    path = tmp_path / "run.nc"
    counter = Metric(
        init=lambda ctx: jnp.zeros((), jnp.int32),
        update=lambda ctx, n: ({"gamma": ctx.gamma}, n + 1),
        dims={"gamma": ("class",)},
    )
    train(CONFIG.replace(steps=50, output=str(path)), metrics={"counter": counter})
    online = open_run(path)
    assert online["counter_gamma"].dims == ("step", "class")
    np.testing.assert_allclose(online["counter_gamma"].sel(step=25), online["gamma"].sel(step=25))
