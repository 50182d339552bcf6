"""Cost of the small dense operations a warm eigensolver makes at every step, per call.

Run:  .venv/bin/python benchmarks/small_ops.py [--steps 2000] [--p 6003]

Each row is one operation chained through a jitted ``lax.scan`` of ``--steps`` iterations (its
output feeds the next iteration, so nothing is hoisted), minus the same scan doing only the
cheap chaining arithmetic: the marginal µs of one call inside a training step. On CPU these
are LAPACK calls of a few µs; on a GPU every factorisation is a solver library call and every
``while_loop`` / ``cond`` reads its predicate back to the host, which is what makes a
hand-written warm tracker with small loops slow there (README "Hessian tracking cost").
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


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

    def nudge(a, b):
        return a + 1e-9 * b

    rows = {
        "chaining only": (lambda a: nudge(a, a), sym(9)),
        "eigh 3x3": (lambda a: nudge(a, jnp.linalg.eigh(a)[1][:3, :3].sum() * jnp.eye(3)), sym(3)),
        "eigh 6x6": (lambda a: nudge(a, jnp.linalg.eigh(a)[1]), sym(6)),
        "eigh 9x9": (lambda a: nudge(a, jnp.linalg.eigh(a)[1]), sym(9)),
        "cholesky 6x6": (lambda a: nudge(a, jnp.linalg.cholesky(a)), sym(6)),
        f"qr ({args.p}, 3)": (
            lambda x: nudge(x, jnp.linalg.qr(x.T)[0].T),
            jax.random.normal(key, (3, args.p)),
        ),
        f"gram (3, {args.p})": (
            lambda x: nudge(x, (x @ x.T) @ x),
            jax.random.normal(key, (3, args.p)),
        ),
        "while_loop, 1 trip": (
            lambda a: jax.lax.while_loop(
                lambda c: c[1] < 1 + (c[0][0, 0] > 1e30),
                lambda c: (nudge(c[0], c[0]), c[1] + 1),
                (a, 0),
            )[0],
            sym(9),
        ),
        "cond": (
            lambda a: jax.lax.cond(a[0, 0] > 0, lambda b: nudge(b, b), lambda b: b - 1e-9, a),
            sym(9),
        ),
    }
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, float32, {args.steps} steps")
    base = None
    for label, (body, carry) in rows.items():
        seconds = _per_step(body, carry, args.steps)
        base = seconds if base is None else base
        extra = "" if label == "chaining only" else f"{(seconds - base) * 1e6:>9.1f}"
        print(f"{label:<22} {seconds * 1e6:>9.1f} us/step {extra} us/call", flush=True)


if __name__ == "__main__":
    main()
