"""Stochastic Lanczos quadrature against the exact eigenvalue distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import wasserstein_distance
from test_lanczos import _least_squares, spiral_problem

from curvature import broaden, hessian_eigh, spectral_density


def test_slq_matches_exact_distribution_on_mlp(x64):
    loss, (params,) = spiral_problem(100, jnp.float64, steps=(200,))
    exact = np.asarray(hessian_eigh(loss, params).eigenvalues)
    # The defaults: 8 probes, min(80, P) Lanczos steps, key 0.
    dens = jax.jit(lambda p: spectral_density(loss, p))(params)
    assert dens.ritz_values.shape == (8, 80) and dens.ritz_weights.shape == (8, 80)
    np.testing.assert_allclose(np.sum(dens.ritz_weights, axis=1), 1.0, atol=1e-12)
    w1 = wasserstein_distance(
        np.ravel(dens.ritz_values), exact, u_weights=np.ravel(dens.ritz_weights)
    )
    assert w1 < 0.01 * (exact.max() - exact.min())
    np.testing.assert_allclose(np.trapezoid(dens.density, dens.grid), 1.0, atol=1e-12)


def test_diagonal_density_and_rebroadening(x64):
    values = jnp.asarray(np.repeat([-1.0, 2.0], [30, 10]))
    loss = lambda z: 0.5 * jnp.sum(values * z**2)  # noqa: E731
    dens = spectral_density(
        loss, jnp.zeros(40), num_probes=20, num_matvecs=4, sigma=0.05, key=jax.random.key(1)
    )
    # Two atoms: the quadrature weights estimate their fractions 0.75 / 0.25.
    mass_high = np.sum(np.where(dens.ritz_values > 0.5, dens.ritz_weights, 0.0)) / 20
    assert abs(mass_high - 0.25) < 0.1
    grid = jnp.linspace(-3.0, 4.0, 701)
    wide = broaden(dens.ritz_values, dens.ritz_weights, grid, 0.3)
    np.testing.assert_allclose(np.trapezoid(wide, grid), 1.0, atol=1e-12)
    assert float(grid[jnp.argmax(wide)]) == pytest.approx(-1.0, abs=0.05)
    # The default depth is capped at P = 40.
    assert spectral_density(loss, jnp.zeros(40)).ritz_values.shape == (8, 40)


def test_low_rank_density_puts_all_mass_on_the_spectrum(x64):
    # Rank 5 (95 zero eigenvalues): each probe's Krylov space is exhausted after 6 steps.
    loss, w, a = _least_squares()
    exact = np.linalg.eigvalsh(a)
    dens = spectral_density(loss, w, num_probes=4, num_matvecs=30, key=jax.random.key(0))
    assert np.all(np.isfinite(dens.density))
    values, weights = np.asarray(dens.ritz_values), np.asarray(dens.ritz_weights)
    assert values.max() <= exact.max() * (1 + 1e-12) and values.min() >= -1e-12
    w1 = wasserstein_distance(values.ravel(), exact, u_weights=weights.ravel())
    assert w1 < 0.05 * exact.max()


@pytest.mark.parametrize(("num_probes", "num_matvecs"), [(1, 1), (2, 4)])
def test_a_single_repeated_eigenvalue_has_a_finite_normalised_density(num_probes, num_matvecs):
    # H = 4 I away from 0: every Ritz value is 4, so the spread is 0; the width must still be
    # large enough for the grid around 4 to resolve it.
    loss = lambda z: 2.0 * jnp.sum(z**2)  # noqa: E731
    dens = spectral_density(
        loss, jnp.ones(10), num_probes=np.int64(num_probes), num_matvecs=num_matvecs
    )
    assert np.all(np.isfinite(dens.density)) and np.all(np.diff(dens.grid) > 0)
    assert float(jnp.trapezoid(dens.density, dens.grid)) == pytest.approx(1.0, abs=1e-4)
    assert float(dens.grid[jnp.argmax(dens.density)]) == pytest.approx(4.0, rel=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_probes": 0}, r"num_probes must be a positive integer \(got 0\)"),
        ({"num_matvecs": 0}, r"1 <= num_matvecs <= P = 5.*got 0"),
        ({"num_matvecs": 6}, r"1 <= num_matvecs <= P = 5.*got 6"),
        ({"reortho": "half"}, r"reortho must be 'full'"),
        ({"sigma": -1.0}, r"sigma must be > 0 \(got -1.0\)"),
        ({"num_points": 1}, r"num_points must be an integer >= 2 \(got 1\)"),
    ],
)
def test_bad_inputs_are_rejected(kwargs, message):
    options = {"num_probes": 2, "num_matvecs": 3, "key": jax.random.key(0), **kwargs}
    with pytest.raises(ValueError, match=message):
        spectral_density(lambda z: jnp.sum(z**2), jnp.zeros(5), **options)


def test_broadening_weights_the_nodes(x64):
    # Two nodes 0 and 1 with weights 3/4 and 1/4, sigma << 1: the mass on each side of the
    # midpoint is the node's weight, and the peak heights are in the ratio of the weights.
    grid = jnp.linspace(-0.5, 1.5, 2001)
    density = np.asarray(broaden(jnp.asarray([0.0, 1.0]), jnp.asarray([0.75, 0.25]), grid, 0.02))
    g = np.asarray(grid)
    left, right = g <= 0.5, g >= 0.5
    assert np.trapezoid(density[left], g[left]) == pytest.approx(0.75, abs=1e-6)
    assert np.trapezoid(density[right], g[right]) == pytest.approx(0.25, abs=1e-6)
    assert density[left].max() / density[right].max() == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize(
    ("spectrum", "sigma"), [((-1.0, 2.0), 0.01 * 3.0), ((99.99, 100.01), 1e-3 * 100.01)]
)
def test_default_sigma_and_grid(x64, spectrum, sigma):
    # sigma = max(1% of the Ritz-value range, 1e-3 max |Ritz value|); the grid spans the Ritz
    # values extended by 5 sigma. Two atoms: one Lanczos step per atom makes the nodes exact.
    values = jnp.asarray(np.repeat(spectrum, [6, 4]))
    loss = lambda z: 0.5 * jnp.sum(values * z**2)  # noqa: E731
    dens = spectral_density(loss, jnp.zeros(10), num_probes=3, num_matvecs=2, num_points=64)
    ritz = np.asarray(dens.ritz_values)
    np.testing.assert_allclose([ritz.min(), ritz.max()], spectrum, rtol=1e-12)
    np.testing.assert_allclose(dens.grid[0], ritz.min() - 5 * sigma, rtol=1e-9)
    np.testing.assert_allclose(dens.grid[-1], ritz.max() + 5 * sigma, rtol=1e-9)
    expected = broaden(dens.ritz_values, dens.ritz_weights, dens.grid, sigma)
    np.testing.assert_allclose(dens.density, expected, rtol=1e-9, atol=1e-12)


# Each scale is a constant of its own loss function on purpose (it is the subject of the test),
# so the warning about loss functions rebuilt at every call is expected on the third scale.
@pytest.mark.filterwarnings("ignore:spectral_density compiled programs for 3")
@pytest.mark.parametrize("scale", [1e-20, 1e-10, 1e10])
def test_default_density_scales_with_the_hessian_in_float32(scale):
    # The default sigma and grid are relative: the density of s H is that of H stretched by s
    # (an absolute floor of sqrt(tiny) = 1e-19 had widened it 100x at s = 1e-20).
    values = jnp.asarray(np.linspace(-1.0, 3.0, 30), jnp.float32)
    loss = lambda z: 0.5 * jnp.sum(values * z**2)  # noqa: E731
    tiny = lambda z: scale * loss(z)  # noqa: E731
    options = {"num_probes": 4, "num_matvecs": 12, "num_points": 64}
    ref = spectral_density(loss, jnp.zeros(30, jnp.float32), **options)
    dens = spectral_density(tiny, jnp.zeros(30, jnp.float32), **options)
    np.testing.assert_allclose(dens.ritz_values / scale, ref.ritz_values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dens.grid / scale, ref.grid, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dens.density * scale, ref.density, rtol=1e-3, atol=1e-5)


def test_zero_hessian_gets_a_unit_width(x64):
    dens = spectral_density(lambda z: 0.0 * jnp.sum(z), jnp.zeros(5), num_matvecs=2)
    np.testing.assert_allclose([dens.grid[0], dens.grid[-1]], [-5.0, 5.0])
    assert np.all(np.isfinite(dens.density))
