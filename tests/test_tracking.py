"""Warm-started top-k tracking inside a scan, against eigh of the dense Hessian."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from test_lanczos import spiral_problem

from curvature import _tracking, hessian_eigh, hessian_top_k, hessian_tracker


@pytest.fixture(params=["library", "arrays"])
def small_linalg(request, monkeypatch):
    """Run the block tracker's small eigh / QR as library calls and in array operations."""
    monkeypatch.setattr(_tracking, "SMALL_LINALG", request.param)


def _track(tracker, loss, params, steps):
    opt = optax.sgd(1.0)
    _, unravel = ravel_pytree(params)

    @jax.jit
    def run(params, state):
        def body(carry, _):
            p, s, ts = carry
            eig, ts = tracker.update(loss, p, ts)
            u, s = opt.update(jax.grad(loss)(p), s, p)
            out = (ravel_pytree(p)[0], eig, ts.restarted, ts.iterations)
            return (optax.apply_updates(p, u), s, ts), out

        return jax.lax.scan(body, (params, opt.init(params), state), None, length=steps)

    state = tracker.init(params, jax.random.key(7))
    (_, _, final), out = run(params, state)
    return unravel, final, out


def test_tracker_matches_dense_eigh_along_gd(x64, small_linalg):
    method, num_iterations = "block", 10
    loss, (params,) = spiral_problem(100, jnp.float64, steps=(200,))
    tracker = hessian_tracker(
        3, method=method, num_iterations=num_iterations, tol=1e-9, restart_tol=1e-7
    )
    unravel, final, (flats, eig, restarted, _) = _track(tracker, loss, params, 25)
    assert bool(restarted[0]) and int(final.count) == 25
    # Warm starts carried most steps.
    assert int(final.num_restarts) == int(np.sum(restarted)) < 10
    for step in (8, 24):
        exact = hessian_eigh(loss, unravel(flats[step]))
        ref = np.asarray(exact.eigenvalues[:3])
        assert np.max(np.abs(eig.eigenvalues[step] - ref) / np.abs(ref)) <= 1e-10
        assert np.max(eig.residuals[step] / np.abs(eig.eigenvalues[step])) <= 1e-7
        gaps = np.abs(np.diff(np.asarray(exact.eigenvalues[:4])))
        separated = np.minimum(np.r_[np.inf, gaps[:2]], gaps) > 1e-3 * np.abs(ref)
        cos = np.abs(np.sum(np.asarray(eig.eigenvectors[step] * exact.eigenvectors[:3]), 1))
        assert np.all(cos[separated] >= 1 - 1e-8)


def test_signs_follow_previous_step(x64):
    loss, (params,) = spiral_problem(100, jnp.float64, steps=(100,))
    tracker = hessian_tracker(2, num_iterations=10, tol=1e-9)
    _, _, (_, eig, _, _) = _track(tracker, loss, params, 8)
    overlaps = np.sum(np.asarray(eig.eigenvectors[1:] * eig.eigenvectors[:-1]), axis=2)
    assert np.all(overlaps > 0.9)


def test_failed_warm_start_restarts_cold(x64):
    # No expansions and a tolerance below rounding: every update after the first restarts,
    # and the cold result is still exact.
    spectrum = np.concatenate([[5.0, 4.0, 3.0], np.linspace(-1.0, 1.0, 27)])
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((30, 30)))
    a = jnp.asarray((q * spectrum) @ q.T)
    loss = lambda z: 0.5 * z @ a @ z  # noqa: E731
    tracker = hessian_tracker(3, num_iterations=0, tol=1e-30, restart_tol=1e-30)
    state = tracker.init(jnp.zeros(30), jax.random.key(0))
    update = jax.jit(tracker.update, static_argnums=0)
    for _ in range(3):
        eig, state = update(loss, jnp.zeros(30), state)
        assert bool(state.restarted)
        np.testing.assert_allclose(eig.eigenvalues, [5.0, 4.0, 3.0], rtol=1e-12)
    assert int(state.num_restarts) == 3


@pytest.mark.parametrize(
    ("method", "num_iterations", "small"),
    [
        ("block", 4, "library"),
        ("block", 4, "arrays"),
        ("jax_lobpcg", 30, None),
        ("lanczos", 20, None),
    ],
)
def test_warm_start_on_fixed_matrix_does_not_restart(
    x64, monkeypatch, method, num_iterations, small
):
    if small is not None:
        monkeypatch.setattr(_tracking, "SMALL_LINALG", small)
    spectrum = np.concatenate([[5.0, 4.0, 3.0], np.linspace(-1.0, 1.0, 27)])
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((30, 30)))
    a = jnp.asarray((q * spectrum) @ q.T)
    loss = lambda z: 0.5 * z @ a @ z  # noqa: E731
    tracker = hessian_tracker(3, method=method, num_iterations=num_iterations, tol=1e-10)
    state = tracker.init(jnp.zeros(30), jax.random.key(0))
    update = jax.jit(tracker.update, static_argnums=0)
    eig, state = update(loss, jnp.zeros(30), state)
    assert bool(state.restarted)
    # A slightly different start point of the warm path: perturb the stored vectors.
    state = state._replace(eigenvectors=state.eigenvectors + 1e-3 * jnp.ones((3, 30)))
    eig, state = update(loss, jnp.zeros(30), state)
    assert not bool(state.restarted)
    np.testing.assert_allclose(eig.eigenvalues, [5.0, 4.0, 3.0], rtol=1e-12)
    cos = np.abs(np.sum(np.asarray(eig.eigenvectors) * q[:, :3].T, axis=1))
    assert np.all(cos > 1 - 1e-10)


@pytest.mark.parametrize("scale", [1.0, 1e-10])
def test_warm_start_holding_an_exact_eigenvector_stays_exact(small_linalg, scale):
    # The first stored vector is an exact eigenvector: its residual row is exactly zero, and
    # the residual block must not turn it into a direction inside the warm vectors' span.
    # At scale 1e-10 the dropped direction's penalty must scale too (an absolute one swamped
    # the eigh and the warm start failed into a cold restart).
    d = jnp.asarray([10.0, 9, 8, 1, 0.5, 0.2, 0.1, 0]) * scale
    loss = lambda w: 0.5 * jnp.sum(d * w**2)  # noqa: E731
    tracker = hessian_tracker(2, num_iterations=4, tol=1e-5)
    state = tracker.init(jnp.zeros(8), jax.random.key(0))
    previous = jnp.zeros((2, 8)).at[0, 0].set(1.0).at[1, 1].set(0.6).at[1, 3].set(0.8)
    state = state._replace(eigenvectors=previous, count=jnp.ones((), jnp.int32))
    eig, state = jax.jit(tracker.update, static_argnums=0)(loss, jnp.zeros(8), state)
    assert not bool(state.restarted) and int(state.iterations) == 1
    np.testing.assert_allclose(eig.eigenvalues / scale, [10.0, 9.0], rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(eig.eigenvectors, axis=1), 1.0, rtol=1e-5)


def test_dependent_stored_vectors_restart_cold(x64, small_linalg):
    # Two equal stored vectors: QR completes them, Gram-Schmidt leaves a zero row; either
    # way the result is the true top 2 (the arrays path by restarting cold).
    d = jnp.asarray([-1.0, -2, -3, -4, -5, -6, -7, -8])
    loss = lambda w: 0.5 * jnp.sum(d * w**2)  # noqa: E731
    tracker = hessian_tracker(2, num_iterations=4, tol=1e-8)
    state = tracker.init(jnp.zeros(8), jax.random.key(0))
    previous = jnp.zeros((2, 8)).at[:, 0].set(1.0)
    state = state._replace(eigenvectors=previous, count=jnp.ones((), jnp.int32))
    eig, state = jax.jit(tracker.update, static_argnums=0)(loss, jnp.zeros(8), state)
    np.testing.assert_allclose(eig.eigenvalues, [-1.0, -2.0], rtol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(eig.eigenvectors, axis=1), 1.0, rtol=1e-8)
    if _tracking.small_linalg() == "arrays":
        assert bool(state.restarted)


def test_smallest_eigenvalues_tracked(x64, small_linalg):
    spectrum = np.concatenate([[-6.0, -5.0, -4.0], np.linspace(-1.0, 8.0, 37)])
    loss, x = None, jnp.zeros(40)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((40, 40)))
    a = jnp.asarray((q * spectrum) @ q.T)
    loss = lambda z: 0.5 * z @ a @ z  # noqa: E731
    tracker = hessian_tracker(3, which="smallest", num_iterations=20, tol=1e-10)
    state = tracker.init(x, jax.random.key(0))
    update = jax.jit(tracker.update, static_argnums=0)
    for _ in range(2):
        eig, state = update(loss, x, state)
        np.testing.assert_allclose(eig.eigenvalues, [-4.0, -5.0, -6.0], rtol=1e-10)
    assert not bool(state.restarted)


def test_exact_reference_dense_eigh_smoke(x64):
    # The reference used above: dense eigh of the Hessian of a quadratic is exact.
    a = jnp.diag(jnp.arange(1.0, 6.0))
    np.testing.assert_allclose(
        hessian_eigh(lambda z: 0.5 * z @ a @ z, jnp.zeros(5))[0], [5, 4, 3, 2, 1], rtol=1e-14
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, r"k must be a positive integer \(got 0\)"),
        ({"k": 2, "method": "power"}, r"method must be one of 'block', 'jax_lobpcg', 'lanczos'"),
        ({"k": 2, "which": "top"}, r"which must be 'largest'"),
        ({"k": 2, "num_iterations": -1}, r"num_iterations must be an integer >= 0"),
        ({"k": 2, "method": "lanczos", "num_iterations": 1}, r"integer >= 2 for method"),
        ({"k": 2, "tol": 0.0}, r"tol must be > 0 \(got 0.0\)"),
        ({"k": 2, "tol": 1e-3, "restart_tol": 1e-4}, r"restart_tol must be >= tol"),
    ],
)
def test_bad_tracker_options_are_rejected(kwargs, message):
    kwargs = dict(kwargs)
    with pytest.raises(ValueError, match=message):
        hessian_tracker(kwargs.pop("k"), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 7}, r"k must be an integer with 1 <= k <= P = 6"),
        ({"k": 2, "method": "jax_lobpcg"}, r"needs 5 \* k < P \(got k = 2, P = 6\)"),
        ({"k": 2, "num_matvecs": 1}, r"num_matvecs must satisfy k <= num_matvecs <= P"),
        (
            {"k": 2, "method": "lanczos", "num_iterations": 7},
            r"num_iterations, the Lanczos depth of method 'lanczos', must satisfy.*2 <= "
            r"num_iterations <= 6 \(got 7\)",
        ),
        ({"k": 4}, r"method 'block' needs 2 \* k <= P.*got k = 4, P = 6"),
        ({"k": 2, "restart_tol": 1e-4}, r"restart_tol must be >= tol.*default tol 0.00119"),
    ],
)
def test_bad_sizes_are_rejected_at_init(kwargs, message):
    kwargs = dict(kwargs)
    tracker = hessian_tracker(kwargs.pop("k"), **kwargs)
    with pytest.raises(ValueError, match=message):
        tracker.init(jnp.zeros(6), jax.random.key(0))


def test_cold_starts_are_deep_enough_for_many_eigenpairs(x64):
    """k = 70 > 64: the cold start's Krylov depth grows with k (it was fixed at 64)."""
    values = np.concatenate([np.linspace(10.0, 5.0, 70), np.linspace(0.1, 0.0, 130)])
    loss = lambda z: 0.5 * jnp.sum(values * z**2)  # noqa: E731
    tracker = hessian_tracker(70)
    eig, _ = jax.jit(tracker.update, static_argnums=0)(
        loss, jnp.zeros(200), tracker.init(jnp.zeros(200), jax.random.key(0))
    )
    np.testing.assert_allclose(eig.eigenvalues, values[:70], rtol=1e-8)
    assert np.max(eig.residuals) < 1e-6


def test_signs_follow_the_stored_vectors_not_a_fixed_convention(x64):
    # The stored vectors, negated, are the sign reference of the next update: the new vectors
    # overlap them positively although their own largest entries are then negative.
    spectrum = np.concatenate([[5.0, 4.0, 3.0], np.linspace(-1.0, 1.0, 27)])
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((30, 30)))
    a = jnp.asarray((q * spectrum) @ q.T)
    loss = lambda z: 0.5 * z @ a @ z  # noqa: E731
    tracker = hessian_tracker(2, num_iterations=4, tol=1e-10)
    update = jax.jit(tracker.update, static_argnums=0)
    _, state = update(loss, jnp.zeros(30), tracker.init(jnp.zeros(30), jax.random.key(0)))
    flipped = -state.eigenvectors
    eig, state = update(loss, jnp.zeros(30), state._replace(eigenvectors=flipped))
    assert not bool(state.restarted)
    overlaps = np.sum(np.asarray(eig.eigenvectors * flipped), axis=1)
    np.testing.assert_allclose(overlaps, 1.0, atol=1e-8)


def test_default_restart_tolerance_is_ten_times_tol(x64):
    # k = 1, no expansions: the warm result is the Rayleigh quotient of the stored vector
    # v = (e1 + t e2) / |.| of diag(2, 1, 0.5, ...), relative residual t / (2 + t^2). The
    # default tol is 1e-4 in float64, so the default restart tolerance is 1e-3: t = 0.02
    # (1e-2) restarts, t = 6e-4 (3e-4, between the two tolerances) is accepted.
    d = jnp.asarray([2.0, 1.0, 0.5, 0.25, 0.1, 0.0])
    loss = lambda z: 0.5 * jnp.sum(d * z**2)  # noqa: E731
    tracker = hessian_tracker(1, num_iterations=0)
    update = jax.jit(tracker.update, static_argnums=0)
    state = tracker.init(jnp.zeros(6), jax.random.key(0))
    state = state._replace(count=jnp.ones((), jnp.int32))
    for t, restarts in ((0.02, True), (6e-4, False)):
        v = jnp.zeros((1, 6)).at[0, 0].set(1.0).at[0, 1].set(t)
        eig, new = update(loss, jnp.zeros(6), state._replace(eigenvectors=v))
        assert bool(new.restarted) == restarts
        if not restarts:
            rho = (2.0 + t**2) / (1.0 + t**2)
            np.testing.assert_allclose(eig.eigenvalues, [rho], rtol=1e-12)
            np.testing.assert_allclose(eig.residuals / rho, [t / (2.0 + t**2)], rtol=1e-9)


def test_small_linalg_follows_the_backend(monkeypatch):
    # LAPACK on CPU (faster there), array operations elsewhere (no solver calls on a GPU).
    monkeypatch.setattr(_tracking, "SMALL_LINALG", None)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert _tracking.small_linalg() == "library"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert _tracking.small_linalg() == "arrays"
    monkeypatch.setattr(_tracking, "SMALL_LINALG", "library")
    assert _tracking.small_linalg() == "library"
    monkeypatch.setattr(_tracking, "SMALL_LINALG", "lapack")
    with pytest.raises(ValueError, match="SMALL_LINALG must be None, 'library' or 'arrays'"):
        _tracking.small_linalg()


def test_tiny_hessian_warm_start_is_judged_by_true_residuals(small_linalg):
    # float32, Hessian scaled by 1e-20: residual norms of plain squares flush to zero, which
    # accepted any stale warm start as converged. The tracker moves from the parameters at
    # step 0 to those at step 300: the stale vectors must be refined (or restarted) to the
    # eigenpairs at the new point.
    scale = 1e-20
    loss, (start, end) = spiral_problem(20, jnp.float32, steps=(0, 300))
    tiny = lambda p: scale * loss(p)  # noqa: E731
    tracker = hessian_tracker(3)
    update = jax.jit(tracker.update, static_argnums=0)
    state = tracker.init(start, jax.random.key(0))
    _, state = update(tiny, start, state)
    eig, state = update(tiny, end, state)
    reference = hessian_top_k(loss, end, 3)
    np.testing.assert_allclose(eig.eigenvalues / scale, reference.eigenvalues, rtol=1e-4)
    relative = np.asarray(eig.residuals / np.abs(eig.eigenvalues))
    assert np.all(relative > 0) and np.all(relative <= _tracking._default_tol(jnp.float32))
    assert bool(state.restarted) or int(state.iterations) > 0


def test_jax_lobpcg_tracker_at_any_scale_in_float32():
    # JAX's LOBPCG sums plain squares: at 1e-20 it stopped at once and every step restarted
    # cold, at 1e20 it overflowed; it now runs on H divided by a power of two near the
    # previous step's largest eigenvalue.
    loss, states = spiral_problem(20, jnp.float32, steps=(0, 5, 10))
    tracker = hessian_tracker(3, method="jax_lobpcg")
    update = jax.jit(tracker.update, static_argnums=0)
    runs = {}
    for s in (1.0, 1e-20, 1e20):
        state = tracker.init(states[0], jax.random.key(0))
        scaled = lambda p, s=s: s * loss(p)  # noqa: E731
        rows = []
        for params in states:
            eig, state = update(scaled, params, state)
            rows.append((eig.eigenvalues / s, bool(state.restarted), int(state.iterations)))
        runs[s] = rows
    for s in (1e-20, 1e20):
        for (ref_values, *ref_flags), (values, *flags) in zip(runs[1.0], runs[s], strict=True):
            assert flags == ref_flags
            np.testing.assert_allclose(values, ref_values, rtol=1e-4)
    assert [flags[0] for _, *flags in runs[1.0]] == [True, False, False]
