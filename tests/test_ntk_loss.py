"""Tests of curvature/_ntk_loss.py: the loss-weighted NTK is the Gauss-Newton matrix.

The losses are written here again (mean over samples, SCIENCE.md) so that ``curvature`` stays
independent of ``schedules``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvature import (
    empirical_ntk,
    loss_ntk,
    ntk_matrix,
    ntk_spectrum,
    output_hessian,
    stability_factors,
)

LOSSES = ("mse", "ce", "dce", "dmse1", "dmse2")
GAMMA = jnp.array([2.5, 0.25, 0.25])  # sums to C = 3, as a normalised schedule does


def mean_loss(outputs, labels, loss, gamma):
    """F = (1/N) sum_j l_j for the five losses (Gamma ignored by the static ones)."""
    onehot = jax.nn.one_hot(labels, outputs.shape[1], dtype=outputs.dtype)
    if loss in ("ce", "dce"):
        nll = -jnp.sum(onehot * jax.nn.log_softmax(outputs), axis=1)
        return jnp.mean(gamma[labels] * nll if loss == "dce" else nll)
    sq = (outputs - onehot) ** 2
    if loss == "mse":
        return 0.5 * jnp.mean(jnp.sum(sq, axis=1))
    if loss == "dmse1":
        return 0.5 * jnp.mean(gamma[labels] * jnp.sum(sq, axis=1))
    return 0.5 * jnp.mean(jnp.sum(gamma * sq, axis=1))


def weights_for(loss):
    return GAMMA if loss in ("dce", "dmse1", "dmse2") else None


def mlp(key, width=12, classes=3):
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "w1": jax.random.normal(k1, (2, width)) / jnp.sqrt(2.0),
        "b1": 0.1 * jax.random.normal(k2, (width,)),
        "w2": jax.random.normal(k3, (width, classes)) / jnp.sqrt(width),
        "b2": 0.1 * jax.random.normal(k3, (classes,)),
    }

    def apply(p, x):
        return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    return params, apply


def linear_model(key, features=10, classes=3):
    """f = phi(x) W + b with fixed random features: linear in its parameters."""
    k1, k2, k3 = jax.random.split(key, 3)
    proj = jax.random.normal(k1, (2, features))
    params = {
        "w": jax.random.normal(k2, (features, classes)) / jnp.sqrt(features),
        "b": 0.1 * jax.random.normal(k3, (classes,)),
    }

    def apply(p, x):
        return jnp.tanh(x @ proj) @ p["w"] + p["b"]

    return params, apply


def data(n=6, classes=3):
    x = jax.random.normal(jax.random.PRNGKey(11), (n, 2))
    labels = jnp.arange(n) % classes
    return x, labels


@pytest.mark.parametrize("loss", LOSSES)
def test_output_hessian_is_the_block_diagonal_of_the_loss_hessian(x64, loss):
    outputs = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    labels = jnp.array([0, 1, 2, 0, 1])
    full = jax.hessian(mean_loss)(outputs, labels, loss, GAMMA)  # (N, C, N, C)
    h = output_hessian(outputs, labels, loss=loss, weights=weights_for(loss))
    assert h.shape == (5, 3, 3)
    expected = jnp.einsum("jk,jab->jakb", jnp.eye(5), h) / 5
    np.testing.assert_allclose(full, expected, atol=1e-14)


def test_mse_loss_ntk_is_the_plain_ntk(x64):
    params, apply = mlp(jax.random.PRNGKey(1))
    x, labels = data()
    plain = empirical_ntk(apply, params, x)
    np.testing.assert_allclose(loss_ntk(apply, params, x, labels), plain, rtol=1e-12, atol=1e-12)
    # Passing the kernel skips its computation and gives the same result.
    dmse1 = loss_ntk(apply, params, x, labels, loss="dmse1", weights=GAMMA)
    again = loss_ntk(apply, params, x, labels, loss="dmse1", weights=GAMMA, kernel=plain)
    np.testing.assert_allclose(again, dmse1, rtol=1e-13)


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_ntk_spectrum_is_the_parameter_hessian_of_a_linear_model(x64, loss):
    """f linear in theta: the loss Hessian IS the Gauss-Newton matrix J^T H J / N."""
    params, apply = linear_model(jax.random.PRNGKey(2))  # P = 33 > N*C = 18
    x, labels = data()
    n = x.shape[0]
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    hessian = jax.hessian(lambda w: mean_loss(apply(unravel(w), x), labels, loss, GAMMA))(flat)
    param_eigs = np.linalg.eigvalsh(np.asarray(hessian))[::-1]
    kernel = loss_ntk(apply, params, x, labels, loss=loss, weights=weights_for(loss))
    fn_eigs = np.asarray(ntk_spectrum(kernel).eigenvalues) / n
    scale = param_eigs[0]
    np.testing.assert_allclose(fn_eigs, param_eigs[: n * 3], atol=1e-11 * scale)
    np.testing.assert_allclose(param_eigs[n * 3 :], 0.0, atol=1e-11 * scale)


@pytest.mark.parametrize("loss", ["ce", "dce", "dmse2"])
def test_loss_ntk_shares_nonzero_spectrum_with_gauss_newton_of_mlp(x64, loss):
    """Nonlinear model: compare with J^T (d^2F/df^2) J built from jax.jacrev / jax.hessian."""
    params, apply = mlp(jax.random.PRNGKey(3))  # P = 75 > N*C = 18
    x, labels = data()
    n = x.shape[0]
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = jax.jacrev(lambda w: apply(unravel(w), x).reshape(-1))(flat)  # (N*C, P)
    outputs = apply(params, x)
    h_out = jax.hessian(lambda f: mean_loss(f.reshape(n, 3), labels, loss, GAMMA))(
        outputs.reshape(-1)
    )
    gauss_newton = jac.T @ h_out @ jac
    gn_eigs = np.linalg.eigvalsh(np.asarray(gauss_newton))[::-1]
    kernel = loss_ntk(apply, params, x, labels, loss=loss, weights=weights_for(loss))
    fn_eigs = np.asarray(ntk_spectrum(kernel).eigenvalues) / n
    np.testing.assert_allclose(fn_eigs, gn_eigs[: n * 3], atol=1e-11 * gn_eigs[0])


@pytest.mark.parametrize("loss", ["mse", "dmse1", "dmse2"])
def test_one_gradient_step_contracts_residuals_by_the_stability_factors(x64, loss):
    """Linear model + MSE-type loss: delta' = (I - eta/N Theta H) delta holds exactly, and
    the eigenvalues of Theta H are those of loss_ntk."""
    params, apply = linear_model(jax.random.PRNGKey(4))
    x, labels = data()
    n, eta = x.shape[0], 0.3
    target = jax.nn.one_hot(labels, 3)
    grad = jax.grad(lambda p: mean_loss(apply(p, x), labels, loss, GAMMA))(params)
    stepped = jax.tree_util.tree_map(lambda p, g: p - eta * g, params, grad)
    before = (apply(params, x) - target).reshape(-1)
    after = (apply(stepped, x) - target).reshape(-1)
    theta = ntk_matrix(empirical_ntk(apply, params, x))
    h = output_hessian(apply(params, x), labels, loss=loss, weights=weights_for(loss))
    h_big = jax.scipy.linalg.block_diag(*h)
    np.testing.assert_allclose(after, before - eta / n * theta @ h_big @ before, atol=1e-12)
    if loss == "mse":  # symmetric case: each eigen-component is multiplied by its factor
        spectrum = ntk_spectrum(theta, eigenvectors=True)
        factors = stability_factors(spectrum.eigenvalues, eta, n).factors
        np.testing.assert_allclose(
            spectrum.eigenvectors @ after, factors * (spectrum.eigenvectors @ before), atol=1e-12
        )
    kernel = loss_ntk(apply, params, x, labels, loss=loss, weights=weights_for(loss))
    nonsym = np.sort(np.linalg.eigvals(np.asarray(theta @ h_big)).real)[::-1]
    np.testing.assert_allclose(ntk_spectrum(kernel).eigenvalues, nonsym, atol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "hinge"}, r"loss must be one of 'mse', 'ce', 'dce', 'dmse1', 'dmse2'"),
        ({"loss": "ce", "weights": GAMMA}, r"weights are used only by loss='dce', 'dmse1'"),
        ({"loss": "mse", "weights": GAMMA}, r"got weights with loss='mse'"),
        ({"loss": "dce", "weights": jnp.ones(4)}, r"weights must have shape \(C,\) = \(3,\)"),
        (
            {"loss": "dce", "weights": jnp.array([1.0, -1.0, 3.0])},
            r"weights must be >= 0",
        ),
        ({"labels": jnp.zeros(5, jnp.int32)}, r"labels must have shape \(N,\) = \(6,\)"),
        ({"labels": jnp.zeros(6)}, r"labels must be integers in \[0, C\)"),
        ({"kernel": jnp.ones((6, 6))}, r"kernel must be the untraced NTK of x with shape"),
    ],
)
def test_loss_ntk_rejects_bad_inputs(kwargs, message):
    params, apply = mlp(jax.random.PRNGKey(5))
    x, labels = data()
    kwargs = {"labels": labels, **kwargs}
    with pytest.raises(ValueError, match=message):
        loss_ntk(apply, params, x, **kwargs)


def test_output_hessian_rejects_non_matrix_outputs():
    with pytest.raises(ValueError, match=r"outputs must have shape \(N, C\) \(got \(6,\)\)"):
        output_hessian(jnp.ones(6), jnp.zeros(6, jnp.int32))


@pytest.mark.parametrize("loss", ["ce", "dce"])
def test_softmax_loss_ntk_in_float32_is_accurate_to_rounding(x64, loss):
    # The softmax Hessian has the exact null vector (1, 1, 1); eigh leaves its eigenvalue at
    # ~eps ||h||, and its square root put sqrt(eps) noise into K (1.6e-4 relative in float32).
    params, apply = mlp(jax.random.PRNGKey(3))
    x, labels = data(n=12)
    weights = weights_for(loss)

    def kernel(dtype):
        p = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
        w = None if weights is None else weights.astype(dtype)
        return np.asarray(
            ntk_matrix(loss_ntk(apply, p, x.astype(dtype), labels, loss=loss, weights=w)),
            np.float64,
        )

    exact = kernel(jnp.float64)
    error = np.max(np.abs(kernel(jnp.float32) - exact)) / np.max(np.abs(exact))
    assert error < 2e-6
    # The null direction of each sample's block is exactly that of its output Hessian.
    blocks = exact.reshape(12, 3, 12, 3)
    np.testing.assert_allclose(blocks.sum(axis=1), 0.0, atol=1e-13 * np.max(np.abs(exact)))


@pytest.mark.parametrize("loss", ["ce", "dce"])
def test_output_hessian_of_confident_samples_in_float32(x64, loss):
    # Margins of 8..15: 1 - p_y down to 1e-6, where diag(p) - p p^T cancelled (1e-2 relative
    # error at 1 - p_y = 2e-4 in float32). Compare each block with float64, relative to it.
    rng = np.random.default_rng(4)
    labels = jnp.arange(12) % 3
    outputs = rng.standard_normal((12, 3)) + np.linspace(8, 15, 12)[:, None] * np.eye(3)[labels]
    weights = weights_for(loss)

    def blocks(dtype):
        w = None if weights is None else weights.astype(dtype)
        h = output_hessian(jnp.asarray(outputs, dtype), labels, loss=loss, weights=w)
        return np.asarray(h, np.float64)

    exact = blocks(jnp.float64)
    error = np.abs(blocks(jnp.float32) - exact).max(axis=(1, 2)) / np.abs(exact).max(axis=(1, 2))
    assert error.max() < 2e-6
