"""Public curvature functions called outside ``jit`` run as one compiled program each.

Eagerly, JAX compiles every primitive of a Hessian-vector product on its own (hundreds of
programs, seconds on a small MLP); ``curvature._compiled.compiled`` traces the call once.
These tests count XLA compilations rather than time them.
"""

import collections
import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from curvature import (
    gradient_projection,
    hessian_eigh,
    hessian_top_k,
    hessian_tracker,
    hvp,
    loss_ntk,
    ntk_matrix,
    ntk_spectrum,
    ntk_tracker,
    spectral_density,
)
from curvature._compiled import cached, reused
from training import TrainConfig, build, context, initial_state

KEY = jax.random.key(0)


def _problem(width: int, seed: int = 0):
    """A two-layer tanh network with shapes no other test uses (nothing cached)."""
    keys = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(keys[0], (17, 5))
    y = jax.random.normal(keys[1], (17, 2))
    params = {
        "w1": jax.random.normal(keys[2], (5, width)) / np.sqrt(5),
        "w2": jax.random.normal(keys[3], (width, 2)) / np.sqrt(width),
    }
    traces = collections.Counter()

    def loss(p):
        traces["loss"] += 1
        return 0.5 * jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)

    return loss, params, traces


@pytest.mark.parametrize(
    "call",
    [
        lambda loss, params, v: hessian_top_k(loss, params, 2, num_matvecs=12),
        lambda loss, params, v: spectral_density(loss, params, num_probes=2, num_matvecs=10),
        lambda loss, params, v: hvp(loss, params, {"w1": v["w1"], "w2": v["w2"]}),
        lambda loss, params, v: hessian_eigh(loss, params),
        lambda loss, params, v: gradient_projection(loss, params, v["rows"]),
    ],
    ids=["hessian_top_k", "spectral_density", "hvp", "hessian_eigh", "gradient_projection"],
)
def test_an_eager_call_is_one_program_and_equals_the_traced_one(call, compilations):
    loss, params, traces = _problem(width=7)
    v = jax.tree.map(lambda a: a / 7.0, params)
    v = {**v, "rows": jax.flatten_util.ravel_pytree(v)[0][None]}  # (1, P) for the projection
    with compilations() as seen:
        eager = call(loss, params, v)
    assert len(seen) == 1  # eagerly: dozens to hundreds, one per primitive
    traced = jax.jit(lambda p, v: call(loss, p, v))(params, v)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(traced), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The same loss function and shapes: the program is reused, not traced again.
    before = traces["loss"]
    moved = jax.tree.map(lambda a: a * 1.01, params)
    with compilations() as seen:
        jax.block_until_ready(call(loss, moved, v))
    assert seen == [] and traces["loss"] == before


# A scalar parameter as a 0-d array, a Python float or a NumPy float.
SCALARS = pytest.mark.parametrize(
    "scalar", [jnp.asarray, float, np.float32], ids=["array", "float", "numpy"]
)


@SCALARS
def test_a_scalar_parameter_is_an_argument_not_a_constant(compilations, scalar):
    # Parameters (and vectors like them) may hold 0-d leaves, a learnt temperature: their
    # values change every step and must not be baked into the program.
    x = jax.random.normal(jax.random.key(4), (9, 3))

    def loss(p):
        return jnp.mean(jnp.tanh(p["t"] * x @ p["w"]) ** 2)

    def at(t):
        return {"w": jnp.full((3, 4), 0.3), "t": scalar(t)}

    calls = {
        "hessian_top_k": lambda p: hessian_top_k(loss, p, 2, num_matvecs=8).eigenvalues,
        "hvp": lambda p: hvp(loss, p, p),
        "hessian_eigh": lambda p: hessian_eigh(loss, p).eigenvalues,
        "gradient_projection": lambda p: (
            gradient_projection(loss, p, jnp.eye(13)[:2], grads=jax.grad(loss)(p)).components
        ),
    }
    for name, call in calls.items():
        call(at(1.0))
        with compilations() as seen:
            eager = call(at(1.7))
        assert seen == [], name
        for a, b in zip(
            jax.tree.leaves(eager), jax.tree.leaves(jax.jit(call)(at(1.7))), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_trackers_in_a_python_loop_compile_once_and_equal_the_traced_ones(compilations):
    # A user's loop over steps: the tracker's state (its step counter too) is an argument of
    # one program, not a constant compiled anew at each call (5 s per call eagerly).
    loss, params, _ = _problem(width=8)
    x = jax.random.normal(jax.random.key(3), (11, 5))

    def apply(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]

    hessian, ntk = hessian_tracker(2), ntk_tracker(1)
    updates = {  # (params, state) -> (result, state)
        "hessian": (lambda p, s: hessian.update(loss, p, s), hessian.init(params, KEY)),
        "ntk": (lambda p, s: ntk.update(apply, p, x, s), ntk.init(apply, params, x, KEY)),
    }
    steps = [jax.tree.map(lambda a, s=s: a * (1 + 0.02 * s), params) for s in range(4)]

    def loop(update, state):
        results = []
        for p in steps:
            result, state = update(p, state)
            results.append(result)
        return results, state

    final = {}
    for name, (update, init) in updates.items():
        update(params, init)  # compiled here
        with compilations() as seen:
            eager = loop(update, init)
        assert seen == []
        traced = loop(jax.jit(update), init)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(traced), strict=True):
            if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        final[name] = eager[1]
    assert int(final["hessian"].count) == len(steps) and bool(final["ntk"].started)


def test_loss_kernel_and_its_spectrum_compile_once_and_keep_the_label_check(compilations):
    _, params, _ = _problem(width=9)
    x = jax.random.normal(jax.random.key(5), (13, 5))
    labels = jnp.arange(13) % 2

    def apply(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]

    def spectrum(p):
        kernel = loss_ntk(apply, p, x, labels, loss="dce", weights=jnp.asarray([1.0, 3.0]))
        return ntk_spectrum(ntk_matrix(kernel)).eigenvalues

    spectrum(params)
    moved = jax.tree.map(lambda a: 1.1 * a, params)
    with compilations() as seen:
        eager = spectrum(moved)
    assert seen == []  # the second call reuses every program (it compiled per primitive)
    np.testing.assert_allclose(eager, jax.jit(spectrum)(moved), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, C\)"):
        loss_ntk(apply, params, x, labels + 1, loss="dce", weights=jnp.asarray([1.0, 3.0]))


def test_options_keep_their_checks_and_types(compilations):
    loss, params, _ = _problem(width=6)
    hessian_top_k(loss, params, 2, num_matvecs=10)
    with pytest.raises(ValueError, match="k must be"):
        hessian_top_k(loss, params, 2.0, num_matvecs=10)  # not the cached k=2 program
    # A 0-d array stays a concrete number, so its value is checked as before.
    with pytest.raises(ValueError, match=r"sigma must be > 0"):
        spectral_density(loss, params, num_probes=1, num_matvecs=5, sigma=jnp.asarray(-1.0))
    as_array = spectral_density(loss, params, num_probes=1, num_matvecs=5, sigma=jnp.asarray(0.5))
    as_float = spectral_density(loss, params, num_probes=1, num_matvecs=5, sigma=0.5)
    np.testing.assert_allclose(as_array.density, as_float.density, rtol=1e-6)
    # A PRNG key is an argument of the program: another key, other probes, no new program.
    with compilations() as seen:
        other = spectral_density(
            loss, params, num_probes=1, num_matvecs=5, sigma=0.5, key=jax.random.key(1)
        )
        again = spectral_density(
            loss, params, num_probes=1, num_matvecs=5, sigma=0.5, key=jax.random.key(2)
        )
    assert len(seen) == 1
    assert not np.array_equal(other.ritz_values, again.ritz_values)


def test_an_unhashable_loss_runs_as_written():
    loss, params, _ = _problem(width=5)

    class Loss:  # defines __eq__ without __hash__: unhashable
        def __eq__(self, other):
            return self is other

        def __call__(self, p):
            return loss(p)

    expected = hvp(loss, params, params)
    got = hvp(Loss(), params, params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        # op by op against one program: float32 rounding, relative to the largest entry
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


def test_cache_keeps_the_most_recent_entries():
    cache = collections.OrderedDict()
    made = []
    for key in ("a", "b", "a", "c"):
        cached(cache, key, lambda key=key: made.append(key) or key, size=2)
    assert made == ["a", "b", "c"] and list(cache) == ["a", "c"]


def test_reused_objects_follow_their_arguments_and_types():
    @reused
    def factory(k, **options):
        return [k, options]

    assert factory(3, tol=0.1) is factory(3, tol=0.1)
    assert factory(3) is not factory(3.0) and factory(3.0) == [3.0, {}]
    assert factory(3, tol=0.1) is not factory(3, tol=0.2)
    v0 = jnp.ones(2)  # unhashable: a new object each time
    assert factory(3, v0=v0) is not factory(3, v0=v0)


def test_contexts_of_one_problem_share_their_programs(compilations):
    problem = build(TrainConfig(hidden_widths=(11,), steps=10))
    params = initial_state(problem)[0]
    with compilations() as seen:
        ctx = context(problem, params, 7)
    assert len(seen) <= 4  # Γ and η, the gradient, conversions (107 when run eagerly)
    np.testing.assert_allclose(
        jax.tree.leaves(ctx.grads)[0], jax.tree.leaves(jax.grad(ctx.loss_fn)(params))[0], 1e-6
    )
    np.testing.assert_allclose(ctx.gamma, problem.schedule(7), rtol=1e-6)
    first = hvp(ctx.loss_fn, params, params)
    # Another step of the same problem (as restoring checkpoint after checkpoint): the loss
    # function is the same Partial with another Γ, so nothing is compiled again.
    moved = jax.tree.map(lambda a: 0.9 * a, params)
    with compilations() as seen:
        later = context(problem, moved, 57)
        again = hvp(later.loss_fn, moved, moved)
    assert seen == []
    assert not np.allclose(later.gamma, ctx.gamma)
    expected = jax.jit(lambda p: hvp(lambda q: later.loss_fn(q), p, p))(moved)
    for a, b, c in zip(*map(jax.tree.leaves, (again, expected, first)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        assert not np.allclose(a, c)


def test_a_loss_rebuilt_at_every_call_is_named_in_a_warning(compilations):
    loss, params, _ = _problem(width=10)
    batches = [jax.random.normal(jax.random.key(i), (6, 10)) for i in range(4)]

    def batch_loss(p, b):
        return loss(p) + jnp.mean(b @ p["w2"]) ** 2

    with pytest.warns(UserWarning, match=r"hvp compiled programs for 3 different.*Partial") as got:
        for b in batches[:3]:  # a new closure per call: three compilations, then the warning
            hvp(lambda p, b=b: batch_loss(p, b), params, params)
    assert got[0].filename == __file__  # points at the user's call, not inside the library
    # The advice works: one program for every batch, and no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hvp(jax.tree_util.Partial(batch_loss, b=batches[0]), params, params)
        with compilations() as seen:
            for b in batches[1:]:
                hvp(jax.tree_util.Partial(batch_loss, b=b), params, params)
        assert seen == []
        # Closures of the same code over models of other shapes are not repeats.
        for width in (3, 4, 5):
            other, other_params, _ = _problem(width=width)
            hvp(other, other_params, other_params)


@SCALARS
def test_a_scalar_parameter_is_an_argument_of_the_trackers_too(compilations, scalar):
    x = jax.random.normal(jax.random.key(6), (9, 3))

    def apply(p, x):
        return jnp.tanh(p["t"] * x @ p["w"])

    def loss(p):
        return jnp.mean(apply(p, x) ** 2)

    def at(t):
        return {"w": jnp.full((3, 4), 0.3), "t": scalar(t)}

    hessian, ntk = hessian_tracker(1), ntk_tracker(1)
    h_state, n_state = hessian.init(at(1.0), KEY), ntk.init(apply, at(1.0), x, KEY)
    _, h_state = hessian.update(loss, at(1.0), h_state)
    _, n_state = ntk.update(apply, at(1.0), x, n_state)
    moved, other_x = at(1.3), x * 1.1
    with compilations() as seen:
        hessian.update(loss, moved, h_state)
        ntk.update(apply, moved, other_x, n_state)
    assert seen == []


def test_too_many_arguments_are_the_functions_own_error():
    loss, params, _ = _problem(width=3)
    with pytest.raises(TypeError, match="positional argument"):
        hvp(loss, params, params, params)


def test_functions_this_project_makes_are_not_repeats(recwarn):
    # A model's apply is made per problem (runs differing in learning rate): not the user's
    # to rebuild, so no warning about it.
    config = TrainConfig(hidden_widths=(5,), points_per_class=8)
    for eta in (1.0, 0.5, 0.25):
        problem = build(config.replace(learning_rate=eta))
        params = initial_state(problem)[0]
        labels = jnp.asarray(problem.data.y_train)
        x = jnp.asarray(problem.data.x_train)
        loss_ntk(problem.model.apply, params, x, labels, loss="ce")
    assert not [w for w in recwarn if "compiled programs for" in str(w.message)]
