"""Cost of the small dense operations a warm eigensolver makes at every step, per call.

Run:  .venv/bin/python benchmarks/small_ops.py [--steps 2000] [--p 6003]

Each row is one operation chained through a jitted ``lax.scan`` of ``--steps`` iterations (its
output feeds the next iteration, so nothing is hoisted); "us/call" subtracts the same scan
doing only the cheap chaining arithmetic on a carry of the same shape: the marginal µs of one
call inside a training step. Matrix products run at full precision, as in the trackers. A
``while_loop`` row includes the predicate checks on entry and exit; the difference between the
2-trip and 1-trip rows is the cost of one more trip. On CPU these
are LAPACK calls of a few µs; on a GPU every factorisation is a solver library call and every
``while_loop`` / ``cond`` reads its predicate back to the host, which is what makes a
hand-written warm tracker with small loops slow there (README "Hessian tracking cost"). The
"(arrays)" rows do the same work in element-wise operations alone (``curvature._small``:
unrolled parallel Jacobi, Gram-Schmidt twice), the tracker's ``SMALL_LINALG = "arrays"``.
"""

from __future__ import annotations

import argparse
import contextlib
import time

# First, as benchmarks/curvature.py would shadow the curvature package (see _unshadow.py).
with contextlib.suppress(ModuleNotFoundError):
    import _unshadow  # noqa: F401
import jax
import jax.numpy as jnp
import numpy as np

from curvature._small import gram_schmidt_rows, jacobi_eigh


def _per_step(body, carry, steps: int) -> float:
    run = jax.jit(lambda c: jax.lax.scan(lambda c, _: (body(c), None), c, None, length=steps)[0])
    jax.block_until_ready(run(carry))
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(run(carry))
        best = min(best, time.perf_counter() - t0)
    return best / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--p", type=int, default=6003, help="vector length (parameters)")
    args = parser.parse_args()
    key = jax.random.key(0)

    def sym(n):
        a = jax.random.normal(key, (n, n))
        return a @ a.T + n * jnp.eye(n)

    matrix, block = sym(9), jax.random.normal(key, (3, args.p))
    rows = {
        "eigh 3x3": (lambda a: nudge(a, jnp.linalg.eigh(a)[1]), sym(3)),
        "eigh 6x6": (lambda a: nudge(a, jnp.linalg.eigh(a)[1]), sym(6)),
        "eigh 9x9": (lambda a: nudge(a, jnp.linalg.eigh(a)[1]), matrix),
        "jacobi 3x3 (arrays)": (lambda a: nudge(a, jacobi_eigh(a)[1]), sym(3)),
        "jacobi 6x6 (arrays)": (lambda a: nudge(a, jacobi_eigh(a)[1]), sym(6)),
        "jacobi 9x9 (arrays)": (lambda a: nudge(a, jacobi_eigh(a)[1]), matrix),
        "cholesky 6x6": (lambda a: nudge(a, jnp.linalg.cholesky(a)), sym(6)),
        f"qr ({args.p}, 3)": (lambda x: nudge(x, jnp.linalg.qr(x.T)[0].T), block),
        f"gram-schmidt (3, {args.p})": (lambda x: nudge(x, gram_schmidt_rows(x)), block),
        f"gram (3, {args.p})": (lambda x: nudge(x, (x @ x.T) @ x), block),
        "while_loop, 1 trip": (lambda a: _while(a, 1), matrix),
        "while_loop, 2 trips": (lambda a: _while(a, 2), matrix),
        "cond": (
            lambda a: jax.lax.cond(a[0, 0] > 0, lambda b: nudge(b, b), lambda b: b - 1e-9, a),
            matrix,
        ),
    }
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, float32, {args.steps} steps")
    print(f"{'operation':<22} {'us/step':>9} {'us/call':>9}   (us/call: minus the chaining alone)")
    baselines = {}
    with jax.default_matmul_precision("highest"):
        for label, (body, carry) in rows.items():
            if carry.shape not in baselines:
                baselines[carry.shape] = _per_step(lambda a: nudge(a, a), carry, args.steps)
            seconds = _per_step(body, carry, args.steps)
            extra = seconds - baselines[carry.shape]
            print(f"{label:<22} {seconds * 1e6:>9.1f} {extra * 1e6:>9.1f}", flush=True)


def nudge(a: jax.Array, b: jax.Array) -> jax.Array:
    """Chain ``b`` into the carry ``a`` (a change too small to matter, unknown to XLA)."""
    return a + 1e-9 * b


def _while(a: jax.Array, trips: int) -> jax.Array:
    """A while_loop whose trip count XLA cannot know (it depends on the carry)."""

    def cond(c):
        return c[1] < trips + (c[0][0, 0] > 1e30)

    return jax.lax.while_loop(cond, lambda c: (nudge(c[0], c[0]), c[1] + 1), (a, 0))[0]


if __name__ == "__main__":
    main()
