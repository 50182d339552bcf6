"""Tests of curvature/_ntk_tracking.py: per-step top-k NTK eigenvalues inside lax.scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvature import empirical_ntk, ntk_spectrum, ntk_tracker


def mlp(key, width=16, classes=3):
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "w1": jax.random.normal(k1, (2, width)) / jnp.sqrt(2.0),
        "b1": 0.1 * jax.random.normal(k2, (width,)),
        "w2": jax.random.normal(k3, (width, classes)) / jnp.sqrt(width),
        "b2": jnp.zeros((classes,)),
    }

    def apply(p, x):
        return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    return params, apply


def run(tracker, steps=12, eta=0.05):
    """Full-batch GD on an MSE loss with the tracker inside the scanned step."""
    params, apply = mlp(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (12, 2))  # N*C = 36
    target = jax.nn.one_hot(jnp.arange(12) % 3, 3)

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((apply(p, x) - target) ** 2, axis=1))

    def step(carry, _):
        p, state = carry
        track, state = tracker.update(apply, p, x, state)
        p = jax.tree_util.tree_map(lambda a, g: a - eta * g, p, jax.grad(loss)(p))
        return (p, state), (track, p)

    state = tracker.init(apply, params, x, jax.random.PRNGKey(2))
    _, (tracks, history) = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(
        (params, state)
    )
    return apply, x, params, tracks, history


def test_tracker_follows_the_exact_top_k(x64):
    apply, x, params, tracks, history = run(ntk_tracker(2, restart_tol=1e-3))
    assert tracks.eigenvalues.shape == (12, 2)
    assert tracks.residuals.shape == (12, 2)
    assert bool(tracks.restarted[0])  # the first update always solves cold
    assert int(tracks.restarted[1:].sum()) <= 2  # warm starts suffice afterwards
    for step in (0, 5, 11):  # step s tracks the params before update s
        p = params if step == 0 else jax.tree_util.tree_map(lambda h, s=step: h[s - 1], history)
        exact = ntk_spectrum(empirical_ntk(apply, p, x)).eigenvalues[:2]
        np.testing.assert_allclose(tracks.eigenvalues[step], exact, rtol=1e-5)
    scale = tracks.eigenvalues[:, :1]
    assert float(jnp.max(tracks.residuals / scale)) <= 1e-3


def test_tiny_restart_tolerance_restarts_every_step(x64):
    _, _, _, tracks, _ = run(ntk_tracker(1, num_iterations=1, restart_tol=1e-300), steps=3)
    assert bool(jnp.all(tracks.restarted))


def test_huge_restart_tolerance_never_restarts_after_the_first_step(x64):
    _, _, _, tracks, _ = run(ntk_tracker(1, num_iterations=1, restart_tol=1e300), steps=3)
    np.testing.assert_array_equal(tracks.restarted, [True, False, False])


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0,), {}, r"k must be a positive integer \(got 0\)"),
        ((1.5,), {}, r"k must be a positive integer \(got 1.5\)"),
        ((1,), {"num_iterations": 0}, r"num_iterations must be a positive integer \(got 0\)"),
        ((1,), {"cold_iterations": -2}, r"cold_iterations must be a positive integer"),
        ((1,), {"restart_tol": 0.0}, r"restart_tol must be > 0 \(got 0.0\)"),
        ((1,), {"tol": -1e-3}, r"tol must be > 0 \(got -0.001\)"),
    ],
)
def test_tracker_rejects_bad_settings(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ntk_tracker(*args, **kwargs)


def test_tracker_rejects_k_too_large_for_lobpcg():
    params, apply = mlp(jax.random.PRNGKey(0))
    x = jnp.ones((4, 2))  # N*C = 12: LOBPCG needs 5*k < 12
    with pytest.raises(ValueError, match=r"k must satisfy 5\*k < N\*C = 12 for LOBPCG \(got k=3\)"):
        ntk_tracker(3).init(apply, params, x, jax.random.PRNGKey(0))


def test_tracker_at_a_tiny_kernel_scale_in_float32():
    # Outputs scaled by 1e-10, the kernel by 1e-20: JAX's LOBPCG alone read residuals of 0
    # there, so warm solves failed and every step restarted, with eigenvalues 88% off.
    params, apply = mlp(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (12, 2))
    tiny = lambda p, z: 1e-10 * apply(p, z)  # noqa: E731
    tracker = ntk_tracker(2)
    results = []
    for fn in (apply, tiny):
        state = tracker.init(fn, params, x, jax.random.PRNGKey(2))
        update = jax.jit(lambda p, s, fn=fn: tracker.update(fn, p, x, s))
        tracks = []
        for i in range(4):
            p = jax.tree_util.tree_map(lambda a, i=i: a * (1 + 0.01 * i), params)
            track, state = update(p, state)
            tracks.append(track)
        results.append(jax.tree_util.tree_map(lambda *t: jnp.stack(t), *tracks))
    reference, scaled = results
    np.testing.assert_array_equal(scaled.restarted, reference.restarted)
    assert not bool(jnp.any(scaled.restarted[1:]))
    np.testing.assert_allclose(scaled.eigenvalues / 1e-20, reference.eigenvalues, rtol=1e-5)
