"""Tests of curvature/_ntk.py: the empirical NTK equals J J^T, in every implementation."""

import importlib.util
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import curvature
from curvature import _ntk, empirical_ntk, ntk_matrix, ntk_operator

NT_IMPORTS = importlib.util.find_spec("neural_tangents") is not None
if NT_IMPORTS:
    try:
        import neural_tangents  # noqa: F401
    except Exception:  # it fails with several error types on current JAX
        NT_IMPORTS = False

NATIVE = ("jacobian", "ntvp")


def mlp(key, sizes, parameterization="standard"):
    """Init and apply of a ReLU MLP with trainable biases.

    standard: W ~ N(0, 1/fan_in), f = x W + b. ntk: W ~ N(0, 1), f = x W / sqrt(fan_in) + b.
    Biases are drawn N(0, 0.1^2) so that they matter in the kernel.
    """
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        key, kw, kb = jax.random.split(key, 3)
        w = jax.random.normal(kw, (fan_in, fan_out))
        if parameterization == "standard":
            w = w / jnp.sqrt(fan_in)
        params.append({"w": w, "b": 0.1 * jax.random.normal(kb, (fan_out,))})

    def apply(ps, x):
        for i, layer in enumerate(ps):
            scale = 1.0 if parameterization == "standard" else 1.0 / jnp.sqrt(layer["w"].shape[0])
            x = scale * (x @ layer["w"]) + layer["b"]
            if i < len(ps) - 1:
                x = jax.nn.relu(x)
        return x

    return params, apply


def conv_net(key, channels=4, classes=3):
    """8x8x1 inputs, one 3x3 conv layer (SAME), ReLU, global average pool, dense."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "conv": jax.random.normal(k1, (3, 3, 1, channels)) / 3.0,
        "conv_b": 0.1 * jax.random.normal(k2, (channels,)),
        "dense": jax.random.normal(k3, (channels, classes)) / jnp.sqrt(channels),
        "dense_b": jnp.zeros((classes,)),
    }

    def apply(ps, x):
        h = jax.lax.conv_general_dilated(
            x, ps["conv"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jax.nn.relu(h + ps["conv_b"])
        return h.mean(axis=(1, 2)) @ ps["dense"] + ps["dense_b"]

    return params, apply


def jjt(apply, params, x1, x2=None):
    """Reference: J1 J2^T from jax.jacrev of the whole batch, as an (N1*C, N2*C) matrix."""
    x2 = x1 if x2 is None else x2

    def flat_jac(x):
        jac = jax.jacrev(apply)(params, x)
        n, c = apply(params, x).shape
        return jnp.concatenate(
            [leaf.reshape(n * c, -1) for leaf in jax.tree_util.tree_leaves(jac)], axis=1
        )

    return flat_jac(x1) @ flat_jac(x2).T


def rel_err(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("implementation", NATIVE)
@pytest.mark.parametrize("parameterization", ["standard", "ntk"])
@pytest.mark.parametrize("width", [10, 100, 1000])
def test_mlp_kernel_equals_jjt(x64, implementation, parameterization, width):
    params, apply = mlp(jax.random.PRNGKey(width), [2, width, 3], parameterization)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
    kernel = empirical_ntk(apply, params, x, implementation=implementation)
    assert kernel.shape == (4, 4, 3, 3)
    assert kernel.dtype == jnp.float64
    assert rel_err(ntk_matrix(kernel), jjt(apply, params, x)) <= 1e-10


@pytest.mark.parametrize("implementation", NATIVE)
def test_conv_kernel_equals_jjt(x64, implementation):
    params, apply = conv_net(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
    kernel = empirical_ntk(apply, params, x, implementation=implementation)
    assert rel_err(ntk_matrix(kernel), jjt(apply, params, x)) <= 1e-10


@pytest.mark.parametrize("implementation", NATIVE)
@pytest.mark.parametrize("batch_size", [3])
def test_blocked_and_cross_kernels(x64, implementation, batch_size):
    """Blocks (with padding when batch_size does not divide N) change nothing; x2 works."""
    params, apply = mlp(jax.random.PRNGKey(0), [2, 7, 3])
    x1 = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(2), (3, 2))
    train = empirical_ntk(apply, params, x1, implementation=implementation, batch_size=batch_size)
    assert rel_err(ntk_matrix(train), jjt(apply, params, x1)) <= 1e-10
    cross = empirical_ntk(
        apply, params, x1, x2, implementation=implementation, batch_size=batch_size
    )
    assert cross.shape == (5, 3, 3, 3)
    assert rel_err(ntk_matrix(cross), jjt(apply, params, x1, x2)) <= 1e-10


@pytest.mark.parametrize("implementation", NATIVE)
@pytest.mark.parametrize(("batch_size", "cross"), [(None, False), (2, True)])
def test_trace_and_diagonal_axes_match_full_kernel(x64, implementation, batch_size, cross):
    params, apply = mlp(jax.random.PRNGKey(3), [2, 6, 4])
    x1 = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(2), (5, 2)) if cross else None
    opts = {"implementation": implementation, "batch_size": batch_size}
    full = empirical_ntk(apply, params, x1, x2, **opts)
    idx = jnp.arange(5)

    def ntk(**axes):
        return empirical_ntk(apply, params, x1, x2, **opts, **axes)

    traced = ntk(trace_axes=(-1,))
    assert traced.shape == (5, 5)
    np.testing.assert_allclose(traced, jnp.trace(full, axis1=2, axis2=3) / 4, rtol=1e-12)
    np.testing.assert_allclose(ntk(trace_axes=(1,)), traced, rtol=1e-12)
    out_diag = ntk(diagonal_axes=(-1,))
    assert out_diag.shape == (5, 5, 4)
    np.testing.assert_allclose(out_diag, jnp.diagonal(full, axis1=2, axis2=3), rtol=1e-12)
    batch_diag = ntk(diagonal_axes=(0,))
    assert batch_diag.shape == (5, 4, 4)
    np.testing.assert_allclose(batch_diag, full[idx, idx], rtol=1e-12)
    both = ntk(diagonal_axes=(0, -1))
    assert both.shape == (5, 4)
    np.testing.assert_allclose(both, jnp.diagonal(full[idx, idx], axis1=1, axis2=2), rtol=1e-12)
    per_sample_trace = ntk(trace_axes=(-1,), diagonal_axes=(0,))
    assert per_sample_trace.shape == (5,)
    np.testing.assert_allclose(per_sample_trace, traced[idx, idx], rtol=1e-12)


def test_kernel_is_symmetric_psd_and_matrix_is_sample_major(x64):
    params, apply = mlp(jax.random.PRNGKey(4), [2, 5, 3])  # P = 33 > N*C = 18
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 2))
    kernel = empirical_ntk(apply, params, x)
    np.testing.assert_allclose(kernel, jnp.transpose(kernel, (1, 0, 3, 2)), rtol=1e-13)
    matrix = ntk_matrix(kernel)
    assert matrix.shape == (18, 18)
    assert matrix[2 * 3 + 1, 4 * 3 + 2] == kernel[2, 4, 1, 2]
    eigenvalues = jnp.linalg.eigvalsh(matrix)
    assert float(eigenvalues[0]) >= -1e-12 * float(eigenvalues[-1])


def test_ntk_operator_multiplies_by_the_matrix(x64):
    params, apply = mlp(jax.random.PRNGKey(5), [2, 8, 3])
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
    matrix = jjt(apply, params, x)
    v = jax.random.normal(jax.random.PRNGKey(2), (12,))
    block = jax.random.normal(jax.random.PRNGKey(3), (12, 3))
    products = jax.jit(lambda p, u, w: [ntk_operator(apply, p, x)(a) for a in (u, w)])
    single, multi = products(params, v, block)
    np.testing.assert_allclose(single, matrix @ v, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(multi, matrix @ block, rtol=1e-11, atol=1e-12)


def test_auto_picks_by_jacobian_memory(x64, monkeypatch):
    params, apply = mlp(jax.random.PRNGKey(6), [2, 4, 3])  # P = 27
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
    assert curvature.resolve_implementation("auto", params, 3, 4) == "jacobian"
    assert curvature.resolve_implementation("ntvp", params, 3, 4) == "ntvp"
    reference = empirical_ntk(apply, params, x, implementation="jacobian")
    # 4 samples * 3 outputs * 27 params * 8 bytes = 2592 bytes: just above and below the budget.
    monkeypatch.setattr(_ntk, "AUTO_JACOBIAN_MAX_BYTES", 2592)
    assert _ntk.resolve_implementation("auto", params, 3, 4) == "jacobian"
    monkeypatch.setattr(_ntk, "AUTO_JACOBIAN_MAX_BYTES", 2591)
    assert _ntk.resolve_implementation("auto", params, 3, 4) == "ntvp"
    np.testing.assert_allclose(empirical_ntk(apply, params, x), reference, rtol=1e-12)


def test_float32_inputs_give_float32_kernel():
    params, apply = mlp(jax.random.PRNGKey(7), [2, 4, 3])
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 2), dtype=jnp.float32)
    for implementation in NATIVE:
        assert empirical_ntk(apply, params, x, implementation=implementation).dtype == jnp.float32


@pytest.mark.skipif(not NT_IMPORTS, reason="neural-tangents does not import in this environment")
def test_neural_tangents_backend_matches_native(x64):
    params, apply = mlp(jax.random.PRNGKey(8), [2, 6, 3])
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
    for axes in [{}, {"trace_axes": (-1,)}, {"diagonal_axes": (0,)}]:
        nt_kernel = empirical_ntk(apply, params, x, implementation="neural_tangents", **axes)
        native = empirical_ntk(apply, params, x, implementation="jacobian", **axes)
        assert rel_err(nt_kernel, native) <= 1e-10


@pytest.mark.skipif(NT_IMPORTS, reason="neural-tangents imports here; the error path is unused")
def test_neural_tangents_backend_says_why_it_is_missing():
    params, apply = mlp(jax.random.PRNGKey(8), [2, 3, 3])
    x = jnp.ones((2, 2))
    with pytest.raises(ImportError, match=r"needs the optional neural-tangents package.*venv"):
        empirical_ntk(apply, params, x, implementation="neural_tangents")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"implementation": "svd"}, r"implementation must be one of 'auto', 'jacobian'.*'svd'"),
        ({"trace_axes": (0,)}, r"trace_axes may contain only the output axis.*\(0,\)"),
        ({"trace_axes": (2,)}, r"trace_axes entries must be axes of the \(N, C\) outputs"),
        ({"trace_axes": ("c",)}, r"trace_axes entries must be axes"),
        ({"trace_axes": "c"}, r"trace_axes must be a tuple of output axes"),
        ({"diagonal_axes": (3,)}, r"diagonal_axes entries must be axes"),
        (
            {"trace_axes": (-1,), "diagonal_axes": (1,)},
            r"an axis cannot be both traced and diagonal",
        ),
        ({"batch_size": 0}, r"batch_size must be a positive integer or None \(got 0\)"),
        ({"batch_size": 2.5}, r"batch_size must be a positive integer or None \(got 2.5\)"),
        (
            {"implementation": "neural_tangents", "batch_size": 2},
            r"batch_size is not supported with implementation='neural_tangents'",
        ),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    params, apply = mlp(jax.random.PRNGKey(0), [2, 3, 3])
    with pytest.raises(ValueError, match=message):
        empirical_ntk(apply, params, jnp.ones((2, 2)), **kwargs)


def test_bad_inputs_are_rejected():
    params, apply = mlp(jax.random.PRNGKey(0), [2, 3, 3])
    with pytest.raises(ValueError, match=r"x1 and x2 must have the same shape.*\(2, 2\).*\(2, 3\)"):
        empirical_ntk(apply, params, jnp.ones((2, 2)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"diagonal_axes=\(0,\) pairs x1\[n\] with x2\[n\]"):
        empirical_ntk(apply, params, jnp.ones((2, 2)), jnp.ones((3, 2)), diagonal_axes=(0,))
    with pytest.raises(ValueError, match=r"must return outputs of shape \(N, C\).*got \(6,\)"):
        empirical_ntk(lambda p, x: apply(p, x).reshape(-1), params, jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=r"x1 must have a leading batch axis"):
        empirical_ntk(apply, params, jnp.ones((0, 2)))
    # Inputs the model cannot take: the shape named, JAX's message kept.
    with pytest.raises(ValueError, match=r"failed for inputs x of shape \(4, 5\).*JAX said"):
        empirical_ntk(apply, params, jnp.ones((4, 5)))
    with pytest.raises(
        ValueError, match=r"kernel must be an untraced NTK of shape \(N1, N2, C, C\)"
    ):
        ntk_matrix(jnp.ones((2, 2)))
