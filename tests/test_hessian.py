"""Hessian-vector products and the dense Hessian: identities on quadratic forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvature import hessian_eigh, hessian_exact, hvp, unravel_eigenvectors


def _spd(n, seed):
    m = np.random.default_rng(seed).standard_normal((n, n))
    return jnp.asarray(m + m.T)


def test_hessian_of_quadratic_form_is_a(x64):
    a = _spd(7, 0)
    x = jnp.arange(7.0)
    loss = lambda z: 0.5 * z @ a @ z  # noqa: E731
    np.testing.assert_allclose(hessian_exact(loss, x), a, rtol=0, atol=1e-13)
    np.testing.assert_allclose(hessian_exact(loss, x, chunk_size=3), a, rtol=0, atol=1e-13)
    v = jnp.linspace(-1.0, 1.0, 7)
    np.testing.assert_allclose(hvp(loss, x, v), a @ v, rtol=0, atol=1e-13)


def test_pytree_params_follow_ravel_order(x64):
    a = _spd(5, 1)
    params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(1)}
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def loss(p):
        z = jax.flatten_util.ravel_pytree(p)[0]
        return 0.5 * z @ a @ z + jnp.sum(z**3)

    h = hessian_exact(loss, params)
    expected = a + jnp.diag(6.0 * flat)
    np.testing.assert_allclose(h, expected, atol=1e-12)
    v = unravel(jnp.arange(5.0))
    out = jax.flatten_util.ravel_pytree(hvp(loss, params, v))[0]
    np.testing.assert_allclose(out, expected @ jnp.arange(5.0), atol=1e-12)


def test_hessian_eigh_sorted_descending_with_small_residuals(x64):
    a = _spd(6, 2)
    eig = hessian_eigh(lambda z: 0.5 * z @ a @ z, jnp.zeros(6))
    np.testing.assert_allclose(eig.eigenvalues, np.sort(np.linalg.eigvalsh(a))[::-1], atol=1e-12)
    assert np.all(np.diff(eig.eigenvalues) <= 0)
    assert eig.eigenvectors.shape == (6, 6)
    assert np.max(eig.residuals) < 1e-12
    tree = unravel_eigenvectors(eig.eigenvectors[:2], {"x": jnp.zeros(6)})
    assert tree["x"].shape == (2, 6)


def test_hessian_exact_matches_jax_hessian_for_nonquadratic_loss(x64):
    # Symmetric by construction, and equal to the Hessian by automatic differentiation.
    x = jnp.asarray(np.random.default_rng(3).standard_normal(8))
    loss = lambda z: jnp.sum(jnp.sin(z) * jnp.roll(z, 1)) ** 2  # noqa: E731
    h = hessian_exact(loss, x)
    np.testing.assert_array_equal(h, h.T)
    np.testing.assert_allclose(h, jax.hessian(loss)(x), rtol=1e-12, atol=1e-12)
    params = {"w": x[:6].reshape(2, 3), "b": x[6:]}
    tree_loss = lambda p: loss(jnp.concatenate([p["w"].ravel(), p["b"]]))  # noqa: E731
    # ravel_pytree puts "b" first: the flat Hessian is x's with (b, w) blocks reordered.
    order = np.r_[6:8, 0:6]
    expected = np.asarray(jax.hessian(loss)(x))[np.ix_(order, order)]
    np.testing.assert_allclose(hessian_exact(tree_loss, params), expected, rtol=1e-12, atol=1e-12)


def test_hessian_eigh_residuals_are_those_of_the_returned_pairs(x64):
    # residual_i = ||H v_i - lambda_i v_i|| of the returned pairs, recomputed in NumPy: a few
    # eps ||H|| for eigh's pairs of a generic matrix.
    a = _spd(20, 4)
    loss = lambda z: 0.5 * z @ a @ z + jnp.sum(jnp.cos(z))  # noqa: E731
    x = jnp.linspace(-1.0, 1.0, 20)
    eig = hessian_eigh(loss, x)
    h = np.asarray(hessian_exact(loss, x))
    values, vectors = np.asarray(eig.eigenvalues), np.asarray(eig.eigenvectors)
    expected = np.linalg.norm(vectors @ h - values[:, None] * vectors, axis=1)
    scale = np.finfo(np.float64).eps * np.linalg.norm(h, 2)
    residuals = np.asarray(eig.residuals)
    # Rounding noise, so equal only to its size (here the two agree to about 10 %), and not
    # all exactly zero (a residual that is never computed).
    assert residuals.max() > 0 and np.all(residuals < 100 * scale)
    np.testing.assert_allclose(residuals, expected, atol=10 * scale)


def test_memory_refusal_names_p_bytes_and_budget():
    x = jnp.zeros(100, jnp.float32)
    with pytest.raises(ValueError, match=r"P = 100 .*40,000 bytes.*max_bytes = 1,000 bytes"):
        hessian_exact(lambda z: jnp.sum(z**2), x, max_bytes=1000)
    with pytest.raises(ValueError, match="Pass a larger max_bytes"):
        hessian_eigh(lambda z: jnp.sum(z**2), x, max_bytes=1000)


def test_bad_chunk_size_message():
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        hessian_exact(lambda z: jnp.sum(z**2), jnp.zeros(3), chunk_size=0)


def test_hessian_exact_follows_float32():
    h = hessian_exact(lambda z: jnp.sum(z**2), jnp.zeros(3, jnp.float32))
    assert h.dtype == jnp.float32
