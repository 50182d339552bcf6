"""Norms without underflow or overflow of the squares, against NumPy in float64."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from curvature import tree_norm
from curvature._norm import norm, power_of_two, unit


@pytest.mark.parametrize(
    ("dtype", "scales"),
    [
        (np.float32, [1e-33, 1e-20, 1.0, 1e20, 1e37]),
        (np.float64, [1e-300, 1e-160, 1.0, 1e160, 1e300]),
    ],
)
def test_norm_matches_numpy_at_every_scale(x64, dtype, scales):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((4, 50))
    rows[1, 7] = 30.0  # one dominant entry
    rows[2] = 0.0
    rows[3, ::2] = 0.0
    eps = np.finfo(dtype).eps
    for scale in scales:
        x = (rows * scale).astype(dtype)
        # Reference: float64 on the unscaled rows (the tolerance covers rounding x itself;
        # float32 stops at 1e-33, where the smallest entries are still normal numbers).
        expected = np.linalg.norm(rows, axis=1) * scale
        got = np.asarray(norm(jnp.asarray(x), axis=1), np.float64)
        np.testing.assert_allclose(got, expected, rtol=10 * eps, err_msg=f"scale {scale}")
        np.testing.assert_allclose(
            float(norm(jnp.asarray(x))), np.linalg.norm(rows) * scale, rtol=10 * eps
        )
        kept = norm(jnp.asarray(x), axis=1, keepdims=True)
        assert kept.shape == (4, 1)
        lengths = np.linalg.norm(np.asarray(unit(jnp.asarray(x), axis=1), np.float64), axis=1)
        np.testing.assert_allclose(lengths, [1.0, 1.0, 0.0, 1.0], atol=10 * eps)


def test_plain_norm_underflows_where_this_one_does_not():
    # The failure this module exists for: float32 squares of 1e-25 underflow to zero (1e-50 is
    # below the least subnormal, 1.4e-45, so on every backend, flushing subnormals or not).
    x = jnp.full((10,), 1e-25, jnp.float32)
    assert float(jnp.linalg.norm(x)) == 0.0
    np.testing.assert_allclose(float(norm(x)), np.sqrt(10) * 1e-25, rtol=1e-6)


def test_norm_of_zeros_infinities_and_nans():
    assert float(norm(jnp.zeros(5))) == 0.0
    assert float(norm(jnp.array([1.0, -jnp.inf, 2.0]))) == np.inf
    assert np.isnan(float(norm(jnp.array([1.0, jnp.nan, jnp.inf]))))
    np.testing.assert_array_equal(np.asarray(unit(jnp.zeros(3))), 0.0)
    np.testing.assert_allclose(np.asarray(unit(jnp.array([3.0, 4.0]))), [0.6, 0.8], rtol=1e-7)


def test_power_of_two_is_exact_and_in_range():
    sizes = jnp.asarray([3.0, 1.0, 0.75, 1e-30, 3e38, 0.0, jnp.inf, jnp.nan], jnp.float32)
    got = np.asarray(power_of_two(sizes), np.float64)
    assert list(got[:3]) == [2.0, 1.0, 0.5]
    assert got[3] == 2.0 ** np.floor(np.log2(1e-30))
    # Clamped so that its reciprocal is a normal float32 (XLA divides by multiplying).
    assert got[4] == 2.0**125 and 1.0 / got[4] >= np.finfo(np.float32).tiny
    assert list(got[5:]) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("scale", [1e-25, 1.0, 1e25])
def test_tree_norm_at_every_scale(scale):
    # float32 leaves of different shapes; at 1e-25 every plain square flushes to zero.
    rng = np.random.default_rng(1)
    leaves = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(5), "e": np.zeros(0)}
    tree = {name: jnp.asarray(leaf * scale, jnp.float32) for name, leaf in leaves.items()}
    expected = np.sqrt(sum(np.sum(leaf**2) for leaf in leaves.values())) * scale
    np.testing.assert_allclose(float(tree_norm(tree)), expected, rtol=1e-6)
    if scale == 1.0:
        np.testing.assert_allclose(float(tree_norm(tree)), float(optax.tree.norm(tree)), rtol=1e-7)
    else:
        assert not np.isclose(float(optax.tree.norm(tree)), expected, rtol=1e-2, atol=0)


def test_tree_norm_of_empty_trees_and_non_finite_leaves():
    assert float(tree_norm({})) == 0.0
    assert float(tree_norm({"a": jnp.zeros(3), "b": jnp.zeros((2, 2))})) == 0.0
    assert float(tree_norm([jnp.ones(2), jnp.array([jnp.inf])])) == np.inf
    assert np.isnan(float(tree_norm([jnp.ones(2), jnp.array([jnp.nan])])))
