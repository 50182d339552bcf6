"""Tests of curvature/_ntk_spectrum.py: exact and matrix-free NTK spectra, stability factors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvature import (
    REGIME_NAMES,
    empirical_ntk,
    ntk_matrix,
    ntk_spectrum,
    ntk_top_k,
    stability_factors,
    top_k_eigh,
)


def mlp(key, width=12, classes=3):
    """One-hidden-layer ReLU MLP, standard parameterisation, trainable biases."""
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


@pytest.fixture
def problem(x64):
    params, apply = mlp(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (10, 2))  # N*C = 30 < P = 75
    return params, apply, x


def test_ntk_spectrum_is_eigh_of_the_matrix(problem):
    params, apply, x = problem
    kernel = empirical_ntk(apply, params, x)
    matrix = ntk_matrix(kernel)
    spectrum = ntk_spectrum(kernel, eigenvectors=True)
    assert spectrum.eigenvalues.shape == (30,)
    assert spectrum.eigenvectors.shape == (30, 30)
    assert bool(jnp.all(jnp.diff(spectrum.eigenvalues) <= 0))
    np.testing.assert_allclose(
        spectrum.eigenvalues, np.linalg.eigvalsh(np.asarray(matrix))[::-1], rtol=1e-10, atol=1e-12
    )
    residual = matrix @ spectrum.eigenvectors.T - spectrum.eigenvectors.T * spectrum.eigenvalues
    assert float(jnp.max(jnp.abs(residual))) <= 1e-10 * float(spectrum.eigenvalues[0])
    # 2-D input (the matrix itself, or a traced kernel) works too; eigenvectors optional.
    again = ntk_spectrum(matrix)
    assert again.eigenvectors is None
    np.testing.assert_allclose(again.eigenvalues, spectrum.eigenvalues, rtol=1e-12, atol=1e-12)
    traced = ntk_spectrum(empirical_ntk(apply, params, x, trace_axes=(-1,)))
    assert traced.eigenvalues.shape == (10,)


@pytest.mark.parametrize("method", ["lanczos", "lobpcg"])
def test_ntk_top_k_agrees_with_ntk_spectrum(problem, method):
    params, apply, x = problem
    exact = ntk_spectrum(empirical_ntk(apply, params, x), eigenvectors=True)
    top = ntk_top_k(apply, params, x, 3, method=method)
    assert top.eigenvalues.shape == (3,)
    assert top.eigenvectors.shape == (3, 30)
    np.testing.assert_allclose(top.eigenvalues, exact.eigenvalues[:3], rtol=1e-9)
    scale = float(exact.eigenvalues[0])
    assert float(jnp.max(top.residuals)) <= 1e-6 * scale
    gaps = -jnp.diff(exact.eigenvalues[:4])
    for i in range(3):  # eigenvectors only where the eigenvalue is separated from both sides
        if gaps[i] > 1e-3 * scale and (i == 0 or gaps[i - 1] > 1e-3 * scale):
            overlap = abs(float(top.eigenvectors[i] @ exact.eigenvectors[i]))
            assert overlap == pytest.approx(1.0, abs=1e-8)


def test_top_k_eigh_on_a_known_spectrum(x64):
    """The shared Krylov core on a matrix with a prescribed spectrum."""
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (40, 40)))
    values = jnp.concatenate([jnp.array([10.0, 7.0, 5.0]), jnp.linspace(1.0, 0.0, 37)])
    matrix = (q * values) @ q.T
    v0 = jax.random.normal(jax.random.PRNGKey(1), (40,))
    for method in ("lanczos", "lobpcg"):
        solve = jax.jit(lambda a, v, m=method: top_k_eigh(lambda u: a @ u, v, 3, method=m))
        result = solve(matrix, v0)
        np.testing.assert_allclose(result.eigenvalues, [10.0, 7.0, 5.0], rtol=1e-10)
        assert float(jnp.max(result.residuals)) <= 1e-8


def test_lanczos_deeper_than_the_rank(x64):
    """A rank-4 operator and 30 Lanczos steps: the recurrence restarts, no spurious values."""
    u = jax.random.normal(jax.random.PRNGKey(2), (30, 4))
    matrix = u @ u.T
    exact = np.sort(np.linalg.eigvalsh(np.asarray(matrix)))[::-1]
    result = top_k_eigh(lambda v: matrix @ v, jnp.ones(30), 6, num_iterations=30)
    np.testing.assert_allclose(result.eigenvalues[:4], exact[:4], rtol=1e-10)
    np.testing.assert_allclose(result.eigenvalues[4:], 0.0, atol=1e-10)
    assert float(jnp.max(result.residuals)) <= 1e-10


@pytest.mark.parametrize(
    ("k", "method", "message"),
    [
        (0, "lanczos", r"k must be in \[1, 30\] for a kernel of size 30 \(got 0\)"),
        (31, "lanczos", r"k must be in \[1, 30\] for a kernel of size 30 \(got 31\)"),
        (6, "lobpcg", r"k must be in \[1, 5\].*LOBPCG needs 5\*k < N\*C"),
        (2.0, "lanczos", r"k must be a positive integer \(got 2.0\)"),
        (2, "power", r"method must be one of 'lanczos', 'lobpcg' \(got 'power'\)"),
    ],
)
def test_ntk_top_k_rejects_bad_k_and_method(problem, k, method, message):
    params, apply, x = problem
    with pytest.raises(ValueError, match=message):
        ntk_top_k(apply, params, x, k, method=method)


def test_ntk_top_k_rejects_bad_iterations(problem):
    params, apply, x = problem
    with pytest.raises(ValueError, match=r"num_iterations must be None or an integer in \[3, 30\]"):
        ntk_top_k(apply, params, x, 3, num_iterations=2)
    with pytest.raises(ValueError, match=r"num_iterations must be None or an integer in >= 1"):
        ntk_top_k(apply, params, x, 3, method="lobpcg", num_iterations=0)


def test_ntk_spectrum_rejects_non_square():
    with pytest.raises(ValueError, match=r"untraced NTK \(N, N, C, C\) or a square matrix"):
        ntk_spectrum(jnp.ones((3, 4)))


def test_stability_factors_values_and_boundaries():
    # eta = 1, N = 4: factor = 1 - lambda / 4. Chosen lambdas hit each boundary exactly.
    eigenvalues = jnp.array([-4.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    result = stability_factors(eigenvalues, 1.0, 4)
    np.testing.assert_array_equal(result.factors, [2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5])
    names = [REGIME_NAMES[int(r)] for r in result.regime]
    assert names == [
        "growing",
        "smooth",
        "smooth",
        "smooth",
        "oscillating",
        "marginal",
        "divergent",
    ]
    assert result.regime.dtype == jnp.int32


def test_stability_factors_use_num_samples_not_matrix_size():
    # The spiral: N = 300 samples, 900x900 kernel; eta = 1 puts the edge at lambda = 600.
    result = stability_factors(jnp.array([599.0, 600.0, 601.0]), 1.0, 300)
    assert [REGIME_NAMES[int(r)] for r in result.regime] == [
        "oscillating",
        "marginal",
        "divergent",
    ]


def test_stability_regimes_do_not_depend_on_rounding_of_the_factor():
    # -1e-30 leaves the factor at exactly 1.0 in float32, yet the mode grows; eta = 0.1 puts
    # the edge at lambda = 6000 for N = 300, where 0.1 * 6000 rounds to 600 = 2N.
    values = jnp.array([-1e-30, jnp.nan, jnp.inf, 6000.0])
    result = stability_factors(values, 0.1, 300, zero_tolerance=0.0)
    assert float(result.factors[0]) == 1.0
    assert [REGIME_NAMES[int(r)] for r in result.regime] == [
        "growing",
        "divergent",
        "divergent",
        "marginal",
    ]


GROWING = REGIME_NAMES.index("growing")


def test_stability_zero_modes_of_a_psd_kernel_are_not_growing():
    # A rank-20 PSD matrix of size 60: eigh in float32 returns its 40 exact zeros as values of
    # either sign, of order M * eps * lambda_max; by default they are zero modes (smooth).
    factor = jax.random.normal(jax.random.key(0), (60, 20), jnp.float32)
    values = ntk_spectrum(factor @ factor.T).eigenvalues
    assert int(jnp.sum(values < 0)) > 0
    regimes = stability_factors(values, 1.0, 10_000).regime
    assert int(jnp.sum(regimes == GROWING)) == 0
    strict = stability_factors(values, 1.0, 10_000, zero_tolerance=0.0).regime
    assert int(jnp.sum(strict == GROWING)) == int(jnp.sum(values < 0))
    # A clearly negative eigenvalue among them still grows.
    regimes = stability_factors(values.at[-1].set(-1e-2 * values[0]), 1.0, 10_000).regime
    assert int(regimes[-1]) == GROWING


def test_stability_zero_tolerance_is_per_row():
    # The default tolerance is M eps max|lambda| of each row (last axis): 3 * 1.2e-7 * 1e6
    # = 0.36 in row 0, 3.6e-7 in row 1, whose -1e-3 is then a growing mode; row 0's -1e-3
    # is a zero mode (smooth).
    values = jnp.asarray([[1e6, 1.0, -1e-3], [1.0, 0.5, -1e-3]], jnp.float32)
    regimes = stability_factors(values, 1e-6, 10).regime
    names = [[REGIME_NAMES[int(r)] for r in row] for row in regimes]
    assert names == [["smooth", "smooth", "smooth"], ["smooth", "smooth", "growing"]]


def test_stability_factors_of_an_empty_spectrum():
    assert stability_factors(jnp.zeros((2, 0)), 1.0, 3).regime.shape == (2, 0)


def test_stability_factors_accept_traced_learning_rates():
    rates = jnp.array([0.5, 1.0, 2.0])
    factors = jax.jit(jax.vmap(lambda eta: stability_factors(jnp.array([2.0]), eta, 2).factors))
    np.testing.assert_allclose(factors(rates)[:, 0], [0.5, 0.0, -1.0])


@pytest.mark.parametrize(
    ("learning_rate", "num_samples", "message"),
    [
        (0.0, 10, r"learning_rate must be > 0 \(got 0.0\)"),
        (-1.0, 10, r"learning_rate must be > 0 \(got -1.0\)"),
        (np.array([1.0, -2.0]), 10, r"learning_rate must be > 0"),
        (1.0, 0, r"num_samples must be a positive integer.*\(got 0\)"),
        (1.0, -3, r"num_samples must be a positive integer.*\(got -3\)"),
        (1.0, 300.0, r"num_samples must be a positive integer.*not N\*C\) \(got 300.0\)"),
    ],
)
def test_stability_factors_reject_bad_inputs(learning_rate, num_samples, message):
    with pytest.raises(ValueError, match=message):
        stability_factors(jnp.ones(3), learning_rate, num_samples)


def test_stability_factors_reject_a_negative_zero_tolerance():
    with pytest.raises(ValueError, match=r"zero_tolerance must be >= 0 or None \(got -1.0\)"):
        stability_factors(jnp.ones(3), 1.0, 3, zero_tolerance=-1.0)


@pytest.mark.parametrize("scale", [1e-10, 1e9])
def test_lobpcg_top_k_at_any_kernel_scale_in_float32(scale):
    # Outputs scaled by s scale the kernel by s^2 (1e-20, 1e18). JAX's LOBPCG sums plain
    # squares: unscaled it returned the start vectors' Rayleigh quotients there.
    params, apply = mlp(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (20, 2))
    scaled = lambda p, z: scale * apply(p, z)  # noqa: E731
    reference = ntk_top_k(apply, params, x, 3, method="lobpcg")
    eig = ntk_top_k(scaled, params, x, 3, method="lobpcg")
    np.testing.assert_allclose(eig.eigenvalues / scale**2, reference.eigenvalues, rtol=1e-5)
    np.testing.assert_allclose(
        eig.residuals / eig.eigenvalues, reference.residuals / reference.eigenvalues, atol=1e-5
    )
