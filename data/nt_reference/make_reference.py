"""Generate reference empirical NTKs with neural-tangents 0.6.5 (run ONLY in its own venv).

neural-tangents 0.6.5 does not import on current JAX, so this script runs in a separate
environment and writes ``data/nt_reference/nt_mlp.npz``, which ``tests/test_ntk_reference.py``
compares with the native ``curvature.empirical_ntk``:

    python3 -m venv /tmp/ntvenv
    /tmp/ntvenv/bin/pip install jax==0.4.38 jaxlib==0.4.38 neural-tangents==0.6.5 tf2jax==0.3.6
    /tmp/ntvenv/bin/python data/nt_reference/make_reference.py

Model: ``stax.serial(Dense(16), Relu(), Dense(3))`` with biases (``b_std=0.5``), once in the
standard and once in the NTK parameterisation, float64. The parameters are stored as plain
arrays (``{param}_W1, _b1, _W2, _b2`` with ``b`` of shape (1, out) as stax stores them).
The script also checks, in this venv, that ``curvature/_ntk.py`` (loaded by file path, it
imports only jax and numpy) with ``implementation="neural_tangents"`` returns neural-tangents'
own numbers, and that its native implementations agree with them.
"""

import importlib.util
import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
WIDTH, CLASSES, W_STD, B_STD = 16, 3, 1.5, 0.5


def main() -> None:
    key = jax.random.PRNGKey(2021)
    k_x1, k_x2, k_std, k_ntk = jax.random.split(key, 4)
    x1 = jax.random.normal(k_x1, (6, 2), dtype=jnp.float64)
    x2 = jax.random.normal(k_x2, (4, 2), dtype=jnp.float64)
    spec = importlib.util.spec_from_file_location("_ntk", HERE.parents[1] / "curvature" / "_ntk.py")
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)

    arrays = {"x1": np.asarray(x1), "x2": np.asarray(x2), "w_std": W_STD, "b_std": B_STD}
    for name, key_p in (("standard", k_std), ("ntk", k_ntk)):
        init_fn, apply_fn, _ = stax.serial(
            stax.Dense(WIDTH, W_std=W_STD, b_std=B_STD, parameterization=name),
            stax.Relu(),
            stax.Dense(CLASSES, W_std=W_STD, b_std=B_STD, parameterization=name),
        )
        _, params = init_fn(key_p, x1.shape)
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        (w1, b1), _, (w2, b2) = params
        arrays.update({f"{name}_W1": w1, f"{name}_b1": b1, f"{name}_W2": w2, f"{name}_b2": b2})
        cases = {
            "untraced": ((), (), None),
            "traced": ((-1,), (), None),
            "cross_untraced": ((), (), x2),
            "cross_traced": ((-1,), (), x2),
            "diag_batch": ((), (0,), None),
            "diag_output": ((), (-1,), None),
        }
        for case, (trace_axes, diagonal_axes, second) in cases.items():
            fn = nt.empirical_ntk_fn(
                apply_fn,
                trace_axes=trace_axes,
                diagonal_axes=diagonal_axes,
                vmap_axes=0,
                implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION,
            )
            ref = np.asarray(fn(x1, second, params))
            arrays[f"{name}_{case}"] = ref
            for impl in ("neural_tangents", "jacobian", "ntvp"):
                mine = np.asarray(
                    native.empirical_ntk(
                        apply_fn,
                        params,
                        x1,
                        second,
                        implementation=impl,
                        trace_axes=trace_axes,
                        diagonal_axes=diagonal_axes,
                    )
                )
                err = np.max(np.abs(mine - ref)) / np.max(np.abs(ref))
                print(f"{name:9s} {case:15s} {impl:16s} shape {ref.shape} rel.err {err:.2e}")
                assert err < 1e-12, (name, case, impl, err)
    out = HERE / "nt_mlp.npz"
    np.savez_compressed(out, **{k: np.asarray(v) for k, v in arrays.items()})
    print(f"wrote {out} ({out.stat().st_size} bytes) with neural-tangents {nt.__version__}")


if __name__ == "__main__":
    main()
