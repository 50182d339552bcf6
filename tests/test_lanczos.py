"""Lanczos top-k against known spectra and against eigh of the dense Hessian."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from curvature import hessian_eigh, hessian_top_k, lanczos, unravel_eigenvectors

GAMMA = (2.5, 0.25, 0.25)


def _weighted_ce(p, *, x, y, weights):
    out = jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], 1)[:, 0]
    return jnp.mean(weights * nll)


def spiral_problem(width, dtype, steps=(0, 150, 300), seed=0):
    """Spiral (3 arms x 100 points), 1-hidden-layer ReLU MLP, class-weighted CE, GD at lr 1.

    Returns the loss and the parameter states reached after each number of ``steps``.
    """
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for j in range(3):
        r = np.linspace(0.0, 1.0, 100)
        t = np.linspace(2 * np.pi / 3 * j, 2 * np.pi / 3 * j + 4 * np.pi, 100)
        t = t + 0.2 * rng.standard_normal(100)
        xs.append(np.stack([r * np.cos(t), r * np.sin(t)], 1))
        ys.append(np.full(100, j))
    x = jnp.asarray(np.concatenate(xs), dtype)
    y = jnp.asarray(np.concatenate(ys))
    weights = jnp.asarray(GAMMA, dtype)[y]
    # The data as arrays of a Partial: every problem of one shape shares the compiled programs.
    loss = jax.tree_util.Partial(_weighted_ce, x=x, y=y, weights=weights)

    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "w1": jax.random.normal(k1, (2, width), dtype) / np.sqrt(2.0),
        "b1": jnp.zeros(width, dtype),
        "w2": jax.random.normal(k2, (width, 3), dtype) / np.sqrt(width),
        "b2": jnp.zeros(3, dtype),
    }
    opt = optax.sgd(1.0)

    @jax.jit
    def run(p, n):
        def body(_, c):
            p, s = c
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return optax.apply_updates(p, u), s

        return jax.lax.fori_loop(0, n, body, (p, opt.init(p)))[0]

    states, done = [], 0
    for s in steps:
        params = run(params, s - done)
        done = s
        states.append(params)
    return loss, states


def _quadratic(eigenvalues, seed=0):
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    a = jnp.asarray((q * np.asarray(eigenvalues)) @ q.T)
    return (lambda z: 0.5 * z @ a @ z), jnp.zeros(n), q


def test_diagonal_matrix_known_spectrum(x64):
    values = np.linspace(-2.0, 5.0, 40)
    a = jnp.diag(jnp.asarray(values))
    eig = hessian_top_k(lambda z: 0.5 * z @ a @ z, jnp.zeros(40), 4, num_matvecs=40)
    np.testing.assert_allclose(eig.eigenvalues, values[::-1][:4], rtol=1e-12)
    np.testing.assert_allclose(np.abs(eig.eigenvectors), np.eye(40)[::-1][:4], atol=1e-10)
    low = hessian_top_k(
        lambda z: 0.5 * z @ a @ z, jnp.zeros(40), 3, num_matvecs=40, which="smallest"
    )
    np.testing.assert_allclose(low.eigenvalues, [values[2], values[1], values[0]], rtol=1e-12)
    assert np.max(eig.residuals) < 1e-12 and np.max(low.residuals) < 1e-12


def test_random_orthogonal_with_repeated_and_clustered_eigenvalues(x64):
    # Top eigenvalue of multiplicity 2, then a tight cluster, then a bulk.
    spectrum = np.concatenate([[10.0, 10.0], [7.0, 7.0 + 1e-7, 7.0 - 1e-7], np.linspace(-1, 3, 45)])
    loss, x, q = _quadratic(spectrum, seed=1)
    eig = hessian_top_k(loss, x, 5, num_matvecs=50, key=jax.random.key(3))
    expected = np.sort(spectrum)[::-1][:5]
    np.testing.assert_allclose(eig.eigenvalues, expected, rtol=1e-10)
    assert np.max(eig.residuals) < 1e-9
    # Eigenvectors are only defined up to rotations inside each repeated/clustered group:
    # compare the projectors onto the subspaces.
    for rows, cols in [((0, 1), (0, 1)), ((2, 3, 4), (2, 3, 4))]:
        order = np.argsort(spectrum)[::-1]
        exact = q[:, order[list(cols)]]
        found = np.asarray(eig.eigenvectors)[list(rows)].T
        np.testing.assert_allclose(found @ found.T, exact @ exact.T, atol=1e-6)


def test_separated_eigenvectors_match(x64):
    spectrum = np.concatenate([[9.0, 6.0, 4.0], np.linspace(-1.0, 2.0, 57)])
    loss, x, q = _quadratic(spectrum, seed=2)
    eig = hessian_top_k(loss, x, 3, num_matvecs=40)
    np.testing.assert_allclose(eig.eigenvalues, [9.0, 6.0, 4.0], rtol=1e-12)
    cos = np.abs(np.sum(np.asarray(eig.eigenvectors) * q[:, :3].T, axis=1))
    assert np.all(cos > 1 - 1e-10)


def test_mlp_states_match_dense_eigh(x64):
    loss, states = spiral_problem(100, jnp.float64)
    top_k = jax.jit(lambda p: hessian_top_k(loss, p, 3))
    for params in states:
        exact = hessian_eigh(loss, params)
        eig = top_k(params)
        ref = np.asarray(exact.eigenvalues[:3])
        assert np.max(np.abs(eig.eigenvalues - ref) / np.abs(ref)) <= 1e-10
        gaps = np.abs(np.diff(np.asarray(exact.eigenvalues[:4])))
        separated = np.minimum(np.r_[np.inf, gaps[:2]], gaps) > 1e-3 * np.abs(ref)
        cos = np.abs(np.sum(np.asarray(eig.eigenvectors * exact.eigenvectors[:3]), axis=1))
        assert np.all(cos[separated] >= 1 - 1e-8)
        assert np.max(eig.residuals / np.abs(eig.eigenvalues)) < 1e-10
        tree = unravel_eigenvectors(eig.eigenvectors, params)
        assert tree["w1"].shape == (3, 2, 100)


def _least_squares(num_samples=5, p=100, seed=0):
    """Linear least squares with fewer samples than parameters: a Hessian of rank 5."""
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((num_samples, p)))
    return (lambda w: 0.5 * jnp.mean((x @ w) ** 2)), jnp.zeros(p), np.asarray(x.T @ x) / 5


@pytest.mark.parametrize("reortho", ["full", "none"])
def test_krylov_basis_stays_orthonormal_past_breakdown(x64, reortho):
    # The Krylov space of a rank-5 matrix is exhausted after 6 steps; 40 steps must restart
    # (plain Lanczos normalises rounding noise here: Ritz values far outside the spectrum).
    _, _, a = _least_squares()
    exact = np.linalg.eigvalsh(a)
    for v0 in (jax.random.normal(jax.random.key(0), (100,)), jnp.zeros(100)):
        basis, matrix = jax.jit(lanczos(40, reortho=reortho), static_argnums=0)(lambda u: a @ u, v0)
        ritz = np.linalg.eigvalsh(np.asarray(matrix))
        assert ritz.max() <= exact.max() * (1 + 1e-12) and ritz.min() >= -1e-12
        assert ritz.max() == pytest.approx(exact.max(), rel=1e-12)
        if reortho == "full":
            basis = np.asarray(basis)
            np.testing.assert_allclose(basis @ basis.T, np.eye(40), atol=1e-13)
            np.testing.assert_allclose(basis @ a @ basis.T, matrix, atol=1e-12)


def test_low_rank_and_scalar_hessians_match_eigh(x64):
    loss, w, a = _least_squares()
    eig = hessian_top_k(loss, w, 3)
    exact = np.sort(np.linalg.eigvalsh(a))[::-1]
    np.testing.assert_allclose(eig.eigenvalues, exact[:3], rtol=1e-12)
    assert np.max(eig.residuals) < 1e-12 * exact[0]
    low = hessian_top_k(loss, w, 2, which="smallest")
    np.testing.assert_allclose(low.eigenvalues, 0.0, atol=1e-12)
    for scale in (3.0, 0.0):
        flat = hessian_top_k(lambda z, c=scale: 0.5 * c * jnp.sum(z**2), jnp.zeros(30), 2)
        np.testing.assert_allclose(flat.eigenvalues, scale, atol=1e-12)
        assert np.all(np.isfinite(flat.eigenvectors))
    zero_start = hessian_top_k(loss, w, 3, v0=jnp.zeros(100))
    np.testing.assert_allclose(zero_start.eigenvalues, exact[:3], rtol=1e-12)
    # Without reorthogonalisation converged values come back as copies (documented), but they
    # stay eigenvalues: nothing outside the spectrum, the top one exact.
    plain = hessian_top_k(loss, w, 3, reortho="none", num_matvecs=np.int64(20))
    assert plain.eigenvalues[0] == pytest.approx(exact[0], rel=1e-10)
    assert np.max(plain.eigenvalues) <= exact[0] * (1 + 1e-10)


def test_lanczos_rejects_bad_depth():
    with pytest.raises(ValueError, match=r"num_matvecs must be a positive integer \(got 0\)"):
        lanczos(0)
    with pytest.raises(ValueError, match=r"num_matvecs must be <= P = 4.*\(got 5\)"):
        lanczos(5)(lambda u: u, jnp.ones(4))
    with pytest.raises(ValueError, match=r"reortho must be 'full'"):
        lanczos(3, reortho="partial")


def test_width_1000_is_matrix_free_with_small_residuals():
    loss, (params,) = spiral_problem(1000, jnp.float32, steps=(20,))
    eig = jax.jit(lambda p: hessian_top_k(loss, p, 3, num_matvecs=40))(params)
    assert eig.eigenvectors.shape == (3, 6003)
    assert np.all(np.diff(eig.eigenvalues) <= 0)
    assert np.max(eig.residuals / np.abs(eig.eigenvalues)) < 1e-3


def test_v0_pytree_and_flat_agree(x64):
    # A multi-leaf pytree start vector is the flat vector ravel_pytree gives ("b" before "w").
    # Four steps on ten parameters leave inexact Ritz pairs that depend on the start vector.
    loss, x, _ = _quadratic(np.linspace(1.0, 3.0, 10))
    _, unravel = ravel_pytree({"w": jnp.zeros((2, 3)), "b": jnp.zeros(4)})
    tree_loss = lambda p: loss(ravel_pytree(p)[0])  # noqa: E731
    v0 = jnp.arange(1.0, 11.0) ** 2
    top_k = jax.jit(lambda start: hessian_top_k(loss, x, 2, num_matvecs=4, v0=start))
    flat = top_k(v0)
    tree = hessian_top_k(tree_loss, unravel(x), 2, num_matvecs=4, v0=unravel(v0))
    np.testing.assert_allclose(tree.eigenvalues, flat.eigenvalues, rtol=1e-13)
    np.testing.assert_allclose(tree.eigenvectors, flat.eigenvectors, atol=1e-12)
    reversed_start = top_k(v0[::-1])
    assert np.max(np.abs(reversed_start.eigenvalues - flat.eigenvalues)) > 1e-6
    with pytest.raises(ValueError, match=r"v0 must be a flat vector of shape \(10,\)"):
        hessian_top_k(loss, x, 2, v0=jnp.ones(4))
    with pytest.raises(ValueError, match=r"v0 must be a flat vector .*got a flat shape \(9,\)"):
        hessian_top_k(tree_loss, unravel(x), 2, v0={"w": jnp.ones((2, 3)), "b": jnp.ones(3)})


def test_eigenvectors_have_their_largest_entry_positive(x64):
    # The sign convention of hessian_top_k: the largest-magnitude entry of each row is > 0.
    # Negating the start vector negates the Krylov basis, so one of the two starts would
    # return each row with a negative pivot if the signs were left as Lanczos gives them.
    spectrum = np.concatenate([[9.0, 6.0, 4.0], np.linspace(-1.0, 2.0, 27)])
    loss, x, _ = _quadratic(spectrum, seed=3)
    v0 = jax.random.normal(jax.random.key(1), (30,))
    top_k = jax.jit(lambda start: hessian_top_k(loss, x, 3, num_matvecs=20, v0=start))
    found = [top_k(start).eigenvectors for start in (v0, -v0)]
    for vectors in found:
        vectors = np.asarray(vectors)
        pivots = vectors[np.arange(3), np.argmax(np.abs(vectors), axis=1)]
        assert np.all(pivots > 0)
    np.testing.assert_allclose(found[0], found[1], atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, r"k must be an integer with 1 <= k <= P = 6.*got 0"),
        ({"k": 7}, r"k must be an integer with 1 <= k <= P = 6.*got 7"),
        ({"k": 3, "num_matvecs": 2}, r"num_matvecs must satisfy k <= num_matvecs <= P"),
        ({"k": 3, "num_matvecs": 7}, r"3 <= num_matvecs <= 6 \(got 7\)"),
        ({"k": 1, "which": "middle"}, r"which must be 'largest' .* or 'smallest'.*'middle'"),
        ({"k": 1, "reortho": "partial"}, r"reortho must be 'full' .* or 'none'.*'partial'"),
    ],
)
def test_bad_inputs_are_rejected_with_messages(kwargs, message):
    kwargs = dict(kwargs)
    k = kwargs.pop("k")
    with pytest.raises(ValueError, match=message):
        hessian_top_k(lambda z: jnp.sum(z**2), jnp.zeros(6), k, **kwargs)


def test_small_eigenvalues_beside_a_large_one_in_float32():
    """A spectrum spanning 1e4 in float32: no spurious restarts that would spoil the bulk."""
    values = np.concatenate(
        [[1000.0, 1.0, 0.5, -0.3], np.random.default_rng(0).uniform(-0.1, 0.1, 396)]
    ).astype(np.float32)
    a = jnp.asarray(values)
    _, matrix = lanczos(40)(lambda v: a * v, jnp.ones(400, jnp.float32))
    ritz = np.linalg.eigvalsh(np.asarray(matrix, np.float64))
    np.testing.assert_allclose(ritz[::-1][:3], [1000.0, 1.0, 0.5], rtol=1e-5)
    assert ritz.min() == pytest.approx(-0.3, rel=1e-4)


def test_plain_recurrence_restarts_below_sqrt_eps(x64):
    # A start vector in the span of e1, e2 and t e3 of diag(1..10): the second new vector has
    # length ~t ||A q_1||. Below sqrt(eps) ||A q_j|| (t = 1e-10) the recurrence restarts with
    # zero coupling; above it (t = 1e-6) it goes on. Either way the basis stays orthonormal
    # (up to the dropped coupling t) and the Ritz values inside the spectrum.
    d = jnp.arange(1.0, 11.0)
    for t, restarted in ((1e-6, False), (1e-10, True)):
        v0 = jnp.zeros(10).at[:3].set(jnp.asarray([1.0, 1.0, t]))
        basis, matrix = lanczos(6, reortho="none")(lambda u: d * u, v0)
        assert (float(matrix[1, 2]) == 0.0) == restarted
        basis = np.asarray(basis)
        np.testing.assert_allclose(basis @ basis.T, np.eye(6), atol=1e-8)
        ritz = np.linalg.eigvalsh(np.asarray(matrix))
        assert ritz.min() >= 1.0 - 1e-9 and ritz.max() <= 10.0 + 1e-9


@pytest.mark.parametrize("scale", [1e-15, 1e-20])
def test_tiny_hessians_keep_their_eigenvalues_and_residuals_in_float32(scale):
    # Late in cross-entropy training the Hessian shrinks with exp(-margin). Plain float32
    # norms of vectors below ~1e-19 flush to zero: Lanczos then broke down at every step
    # (wrong eigenvalues) and residuals read 0 (every answer "converged").
    loss, (params,) = spiral_problem(20, jnp.float32, steps=(50,))
    reference = hessian_top_k(loss, params, 3)
    eig = hessian_top_k(lambda p: scale * loss(p), params, 3)
    np.testing.assert_allclose(eig.eigenvalues / scale, reference.eigenvalues, rtol=1e-5)
    relative = np.asarray(eig.residuals / scale / reference.eigenvalues)
    assert np.all(relative > 0) and np.all(relative < 1e-4)
