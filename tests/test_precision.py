"""Every matrix product traced by the curvature functions asks for full precision.

On GPUs float32 products default to TF32 (about 1e-3 relative error); the curvature functions
trace under ``jax.default_matmul_precision("highest")``. On CPU the effect is invisible in the
numbers, so these tests read the traced programs instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import ClosedJaxpr, Jaxpr

from curvature import (
    _hessian,
    broaden,
    empirical_ntk,
    gradient_projection,
    hessian_eigh,
    hessian_operator,
    hessian_top_k,
    hessian_tracker,
    hvp,
    ntk_top_k,
    ntk_tracker,
    spectral_density,
)


def _dot_precisions(jaxpr: Jaxpr) -> list:
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if isinstance(sub, ClosedJaxpr):
                    found += _dot_precisions(sub.jaxpr)
                elif isinstance(sub, Jaxpr):
                    found += _dot_precisions(sub)
    return found


def _all_highest(fn, *args) -> None:
    precisions = _dot_precisions(jax.make_jaxpr(fn)(*args).jaxpr)
    assert precisions, "the traced program has no matrix product to check"
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    assert all(p == highest for p in precisions), precisions


def _model():
    key = jax.random.key(0)
    params = {
        "w1": jax.random.normal(key, (2, 8)),
        "w2": jax.random.normal(jax.random.key(1), (8, 3)),
    }
    x = jax.random.normal(jax.random.key(2), (5, 2))

    def apply_fn(p, inputs):
        return jnp.tanh(inputs @ p["w1"]) @ p["w2"]

    def loss_fn(p):
        return jnp.mean(apply_fn(p, x) ** 2)

    return params, x, apply_fn, loss_fn


@pytest.mark.parametrize(
    "name", ["hvp", "operator", "top_k", "density", "broaden", "eigh", "projection", "tracker"]
)
def test_hessian_functions_trace_full_precision(name):
    params, _, _, loss_fn = _model()
    if name == "hvp":
        _all_highest(lambda p: hvp(loss_fn, p, p), params)
    elif name == "operator":
        _all_highest(lambda p: hessian_operator(loss_fn, p).matmat(jnp.ones((2, 40))), params)
    elif name == "top_k":
        _all_highest(lambda p: hessian_top_k(loss_fn, p, 2, num_matvecs=10), params)
    elif name == "density":
        _all_highest(
            lambda p: spectral_density(
                loss_fn, p, num_probes=2, num_matvecs=8, num_points=16, key=jax.random.key(4)
            ),
            params,
        )
    elif name == "broaden":
        _all_highest(
            lambda v: broaden(v, jnp.ones(3) / 3, jnp.linspace(0.0, 2.0, 8), 0.1), jnp.arange(3.0)
        )
    elif name == "eigh":
        _all_highest(lambda p: hessian_eigh(loss_fn, p), params)
    elif name == "projection":
        _all_highest(lambda p: gradient_projection(loss_fn, p, jnp.eye(2, 40)), params)
    else:
        tracker = hessian_tracker(2)
        state = tracker.init(params, jax.random.key(3))
        _all_highest(lambda p, s: tracker.update(loss_fn, p, s), params, state)


def test_ntk_functions_trace_full_precision():
    params, x, apply_fn, _ = _model()
    _all_highest(lambda p: empirical_ntk(apply_fn, p, x), params)
    _all_highest(lambda p: ntk_top_k(apply_fn, p, x, 2), params)
    tracker = ntk_tracker(2)
    state = tracker.init(apply_fn, params, x, jax.random.key(0))
    _all_highest(lambda p, s: tracker.update(apply_fn, p, x, s), params, state)


@pytest.mark.parametrize("rows", [3, 11])
def test_vmapped_and_sequential_products_agree(x64, monkeypatch, rows):
    """The vmapped path (the default off CPU; in chunks of 8 above 8 rows) equals the loop."""
    params, _, _, loss_fn = _model()
    vectors = jax.random.normal(jax.random.key(5), (rows, 40), jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    out = {}
    for vmapped in (False, True):
        monkeypatch.setattr(_hessian, "VMAP_PRODUCTS", vmapped)
        out[vmapped] = hessian_operator(loss_fn, params).matmat(vectors)
    dense = hessian_eigh(loss_fn, params)
    h = (dense.eigenvectors.T * dense.eigenvalues) @ dense.eigenvectors
    np.testing.assert_allclose(out[True], out[False], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[True], vectors @ h, rtol=1e-9, atol=1e-9)


def test_outside_precision_setting_is_restored():
    params, _, _, loss_fn = _model()
    hvp(loss_fn, params, params)
    assert jax.config.jax_default_matmul_precision is None


def test_training_step_traces_at_full_precision():
    """The step that ``train``, ``train_batch`` and the sweeps scan (``make_step``), and the
    loss gradient of ``context`` (under ``training.precision`` as the map runs it), use full
    float32 products: the model asks for them, so a float32 run on a GPU is not TF32."""
    from training import TrainConfig, build, context, initial_state, make_step, precision

    problem = build(TrainConfig(hidden_widths=(8,)))
    carry = (*initial_state(problem), (), problem.hyper)
    _all_highest(make_step(problem), carry, jnp.asarray(0))

    def step_gradient(p):
        return jax.grad(context(problem, p, 0).loss_fn)(p)

    with precision("float32"):
        _all_highest(step_gradient, carry[0])
