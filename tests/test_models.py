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


def test_ntk_parameterisation_matches_standard_function(x64):
    """NTK parameterisation with W ~ N(0,1) scaled by 1/sqrt(fan_in) equals the standard net."""
    ntk = mlp((32, 16), 3, parameterization="ntk", b_std=0.5, w_std=1.5, dtype=jnp.float64)
    std = mlp((32, 16), 3, dtype=jnp.float64)
    p = ntk.init(jax.random.key(0), (2,))
    p_std = [
        {"w": 1.5 * layer["w"] / np.sqrt(layer["w"].shape[0]), "b": 0.5 * layer["b"]} for layer in p
    ]
    x = jax.random.normal(jax.random.key(1), (7, 2), jnp.float64)
    out = ntk.apply(p, x)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, std.apply(p_std, x), rtol=1e-13, atol=1e-15)


def test_ntk_default_bias_scale_is_0_1(x64):
    # b_std=None with parameterization="ntk" means b_std = 0.1 (h = xW/√fan_in + 0.1·b)
    default = mlp((8,), 3, parameterization="ntk", dtype=jnp.float64)
    explicit = mlp((8,), 3, parameterization="ntk", b_std=0.1, dtype=jnp.float64)
    p = default.init(jax.random.key(0), (2,))
    p = [{"w": layer["w"], "b": layer["b"] + 1.0} for layer in p]  # make the biases matter
    x = jax.random.normal(jax.random.key(1), (5, 2), jnp.float64)
    np.testing.assert_allclose(default.apply(p, x), explicit.apply(p, x), rtol=1e-14)
    other = mlp((8,), 3, parameterization="ntk", b_std=1.0, dtype=jnp.float64)
    assert not np.allclose(default.apply(p, x), other.apply(p, x))


def test_apply_is_relu_hidden_layers_and_linear_readout(x64):
    # h1 = relu(x W1 + b1), h2 = relu(h1 W2 + b2), out = h2 W3 + b3 (no ReLU on the readout)
    model = mlp((16, 8), 3, b_std=0.3, dtype=jnp.float64)
    p = model.init(jax.random.key(0), (2,))
    x = np.asarray(jax.random.normal(jax.random.key(1), (9, 2), jnp.float64))
    h = x
    for i, layer in enumerate(p):
        h = h @ np.asarray(layer["w"]) + np.asarray(layer["b"])
        if i < len(p) - 1:
            h = np.maximum(h, 0.0)
    out = np.asarray(model.apply(p, x))
    np.testing.assert_allclose(out, h, rtol=1e-13, atol=1e-15)
    assert (out < 0).any()  # the readout is linear


@pytest.mark.parametrize("init", ["lecun", "glorot"])
def test_w_std_scales_the_initial_weights(x64, init):
    # same key: W(w_std) = w_std·W(1), biases unchanged
    one = mlp((8,), 3, init=init, dtype=jnp.float64).init(jax.random.key(0), (2,))
    two = mlp((8,), 3, init=init, w_std=2.5, dtype=jnp.float64).init(jax.random.key(0), (2,))
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(b["w"], 2.5 * a["w"], rtol=1e-14)
        np.testing.assert_array_equal(b["b"], a["b"])


def test_float64_params(x64):
    params = mlp((8,), 3, dtype=jnp.float64).init(jax.random.key(0), (2,))
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (((0,), 3), {}, "hidden_widths must be integers >= 1"),
        (((True,), 3), {}, "hidden_widths must be integers >= 1"),
        (((10,), True), {}, r"num_classes must be an integer >= 1 \(got True\)"),
        (((10,), 2.0), {}, r"num_classes must be an integer >= 1 \(got 2.0\)"),
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
