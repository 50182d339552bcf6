"""Gradient split along eigenvectors: components and remainder in quadrature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvature import gradient_projection, hessian_top_k


def test_components_sum_in_quadrature(x64):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((12, 12)))
    a = a + a.T
    x = jnp.asarray(rng.standard_normal(12))
    loss = lambda z: 0.5 * z @ a @ z + jnp.sum(jnp.cos(z))  # noqa: E731
    eig = hessian_top_k(loss, x, 3, num_matvecs=12)
    proj = gradient_projection(loss, x, eig.eigenvectors)
    g = jax.grad(loss)(x)
    np.testing.assert_allclose(proj.grad_norm, jnp.linalg.norm(g), rtol=1e-14)
    np.testing.assert_allclose(proj.components, eig.eigenvectors @ g, rtol=1e-12)
    np.testing.assert_allclose(
        np.sum(proj.components**2) + (proj.perpendicular * proj.grad_norm) ** 2,
        proj.grad_norm**2,
        rtol=1e-12,
    )
    np.testing.assert_allclose(np.sum(proj.normalized**2) + proj.perpendicular**2, 1.0, rtol=1e-12)


def test_gradient_inside_span_has_no_perpendicular_part(x64):
    params = {"u": jnp.asarray([1.0, 2.0]), "v": jnp.asarray([3.0])}
    loss = lambda p: jnp.sum(p["u"] ** 2)  # noqa: E731  gradient (2, 4, 0)
    basis = jnp.eye(3)[:2]
    proj = gradient_projection(loss, params, basis)
    np.testing.assert_allclose(proj.components, [2.0, 4.0])
    assert float(proj.perpendicular) < 1e-15


def test_normalized_components_are_magnitudes(x64):
    # normalized_i = |g . v_i| / |g|, also for a negative component: g = (-3, 4, 0), |g| = 5.
    loss = lambda z: jnp.asarray([-3.0, 4.0, 0.0]) @ z  # noqa: E731
    proj = gradient_projection(loss, jnp.zeros(3), jnp.eye(3)[:2])
    np.testing.assert_allclose(proj.components, [-3.0, 4.0], rtol=1e-15)
    np.testing.assert_allclose(proj.grad_norm, 5.0, rtol=1e-15)
    np.testing.assert_allclose(proj.normalized, [0.6, 0.8], rtol=1e-15)
    np.testing.assert_allclose(proj.perpendicular, 0.0, atol=1e-15)


def test_wrong_eigenvector_shape_message():
    with pytest.raises(ValueError, match=r"shape \(k, P\) with P = 3.*got shape \(2, 4\)"):
        gradient_projection(lambda z: jnp.sum(z**2), jnp.zeros(3), jnp.zeros((2, 4)))


def test_tiny_gradients_keep_their_norm_and_split_in_float32():
    # Gradients of 1e-25: plain float32 norms flush to zero and the split read 0 / 0 = NaN.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(40), jnp.float32)
    loss = lambda z: jnp.sum(jnp.cos(z))  # noqa: E731
    vectors = jnp.asarray(np.linalg.qr(rng.standard_normal((40, 3)))[0].T, jnp.float32)
    reference = gradient_projection(loss, x, vectors)
    tiny = gradient_projection(lambda z: 1e-25 * loss(z), x, vectors)
    np.testing.assert_allclose(tiny.grad_norm / 1e-25, reference.grad_norm, rtol=1e-5)
    np.testing.assert_allclose(tiny.perpendicular, reference.perpendicular, rtol=1e-5)
    np.testing.assert_allclose(tiny.normalized, reference.normalized, rtol=1e-4)
