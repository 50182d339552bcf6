"""The MLP: shapes, initialisation statistics, trainable biases, parameterisations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training import mlp


def test_shapes_and_trainable_biases():
    model = mlp((16, 8), 3)
    params = model.init(jax.random.key(0), (2,))
    assert [(p["w"].shape, p["b"].shape) for p in params] == [
        ((2, 16), (16,)),
        ((16, 8), (8,)),
        ((8, 3), (3,)),
    ]
    x = jax.random.normal(jax.random.key(1), (5, 2))
    assert model.apply(params, x).shape == (5, 3)
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2))(params)
    for layer in grads:  # every bias receives a gradient: none is silently dropped
        assert np.any(np.asarray(layer["b"]) != 0)


def test_lecun_standard_statistics():
    params = mlp((4000,), 3).init(jax.random.key(0), (50,))
    w0, w1 = np.asarray(params[0]["w"]), np.asarray(params[1]["w"])
    np.testing.assert_allclose(w0.std(), 1 / np.sqrt(50), rtol=0.02)
    np.testing.assert_allclose(w1.std(), 1 / np.sqrt(4000), rtol=0.05)
    assert np.all(np.asarray(params[0]["b"]) == 0)


def test_glorot_and_bias_std():
    params = mlp((2000,), 3, init="glorot").init(jax.random.key(0), (100,))
    b = np.asarray(params[0]["b"])
    np.testing.assert_allclose(b.std(), 0.01, rtol=0.1)
    w = np.asarray(params[0]["w"])
    np.testing.assert_allclose(w.std(), np.sqrt(2 / 2100), rtol=0.05)  # truncated normal, same var


def test_ntk_parameterisation_matches_standard_function():
    """NTK parameterisation with W ~ N(0,1) scaled by 1/sqrt(fan_in) equals the standard net."""
    ntk = mlp((32,), 3, parameterization="ntk", b_std=0.5)
    std = mlp((32,), 3)
    p = ntk.init(jax.random.key(0), (2,))
    p_std = [{"w": layer["w"] / np.sqrt(layer["w"].shape[0]), "b": 0.5 * layer["b"]} for layer in p]
    x = jax.random.normal(jax.random.key(1), (7, 2))
    np.testing.assert_allclose(ntk.apply(p, x), std.apply(p_std, x), rtol=1e-5, atol=1e-6)


def test_float64_params(x64):
    params = mlp((8,), 3, dtype=jnp.float64).init(jax.random.key(0), (2,))
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (((0,), 3), {}, "hidden_widths must be integers >= 1"),
        (((10,), 3), {"parameterization": "mup"}, "parameterization must be one of"),
        (((10,), 3), {"init": "he"}, "init must be one of"),
        (((10,), 3), {"parameterization": "ntk", "b_std": 0.0}, "would silently remove"),
        (((10,), 3), {"parameterization": "ntk", "init": "glorot"}, "standard parameterisation"),
        (((10,), 3), {"w_std": 0.0}, "w_std must be > 0"),
    ],
)
def test_bad_input(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mlp(*args, **kwargs)
