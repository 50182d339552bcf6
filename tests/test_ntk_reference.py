"""Native empirical_ntk against kernels computed by neural-tangents 0.6.5 itself.

The reference file comes from data/nt_reference/make_reference.py, run in a separate venv
(neural-tangents does not import on current JAX); see data/nt_reference/README.md.
"""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from curvature import empirical_ntk

REFERENCE = pathlib.Path(__file__).resolve().parents[1] / "data" / "nt_reference" / "nt_mlp.npz"

CASES = {
    "untraced": ({}, False),
    "traced": ({"trace_axes": (-1,)}, False),
    "cross_untraced": ({}, True),
    "cross_traced": ({"trace_axes": (-1,)}, True),
    "diag_batch": ({"diagonal_axes": (0,)}, False),
    "diag_output": ({"diagonal_axes": (-1,)}, False),
}


def stax_mlp(ref, parameterization):
    """Plain-JAX copy of stax.serial(Dense, Relu, Dense) in either parameterisation."""
    w_std, b_std = float(ref["w_std"]), float(ref["b_std"])

    def dense(x, w, b):
        if parameterization == "standard":
            return x @ w + b
        return w_std / jnp.sqrt(x.shape[-1]) * (x @ w) + b_std * b

    def apply(params, x):
        w1, b1, w2, b2 = params
        return dense(jnp.maximum(dense(x, w1, b1), 0.0), w2, b2)

    names = ("W1", "b1", "W2", "b2")
    params = tuple(jnp.asarray(ref[f"{parameterization}_{n}"]) for n in names)
    return params, apply


@pytest.mark.parametrize("implementation", ["jacobian", "ntvp"])
@pytest.mark.parametrize("parameterization", ["standard", "ntk"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_native_kernel_matches_neural_tangents(x64, implementation, parameterization, case):
    ref = np.load(REFERENCE)
    params, apply = stax_mlp(ref, parameterization)
    axes, cross = CASES[case]
    x2 = jnp.asarray(ref["x2"]) if cross else None
    mine = empirical_ntk(
        apply, params, jnp.asarray(ref["x1"]), x2, implementation=implementation, **axes
    )
    expected = ref[f"{parameterization}_{case}"]
    assert mine.shape == expected.shape
    assert float(np.max(np.abs(mine - expected)) / np.max(np.abs(expected))) <= 1e-10
