"""Cost of Hessian top-3 tracking per training step, as a multiple of a plain GD step.

Run:  .venv/bin/python benchmarks/hessian.py [--widths 100 1000] [--dtype float32]

Builds its own spiral (3 arms x 100 points, 2-D), 1-hidden-layer ReLU MLP and class-weighted
cross-entropy (Gamma = (2.5, 0.25, 0.25)), full-batch optax.sgd at lr 1. For each width it
times, inside one jitted ``lax.scan`` of S steps:
  plain   one training step (forward + backward + update)
  warm    training step + ``hessian_tracker(3).update`` for each warm method
  cold    training step + ``hessian_top_k(loss, p, 3)`` (Lanczos from scratch every step)
and, on a 100-checkpoint GD trajectory, top-3 by the tracker (sequential, warm) and by
independent cold Lanczos runs. Prints multiples of the plain step and the ratio to the
3x target, plus restart counts and the worst relative residual.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from curvature import hessian_top_k, hessian_tracker

GAMMA = (2.5, 0.25, 0.25)
TARGET = 3.0


def problem(width: int, dtype):
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for j in range(3):
        r = np.linspace(0.0, 1.0, 100)
        t = np.linspace(2 * np.pi / 3 * j, 2 * np.pi / 3 * j + 4 * np.pi, 100)
        xs.append(np.stack([r * np.cos(t), r * np.sin(t + 0.2 * rng.standard_normal(100))], 1))
        ys.append(np.full(100, j))
    x = jnp.asarray(np.concatenate(xs), dtype)
    y = jnp.asarray(np.concatenate(ys))
    w = jnp.asarray(GAMMA, dtype)[y]

    def loss(p):
        out = jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return jnp.mean(w * -jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], 1)[:, 0])

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (2, width), dtype) / np.sqrt(2.0),
        "b1": jnp.zeros(width, dtype),
        "w2": jax.random.normal(k2, (width, 3), dtype) / np.sqrt(width),
        "b2": jnp.zeros(3, dtype),
    }
    return loss, params


def timed(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best, out


def scan_cost(loss, params, steps, extra=None, tracker=None):
    opt = optax.sgd(1.0)

    @jax.jit
    def run(p, ts):
        def body(c, _):
            p, s, ts = c
            out = jnp.zeros(3, p["b2"].dtype), jnp.zeros((), bool)
            if tracker is not None:
                eig, ts = tracker.update(loss, p, ts)
                out = eig.residuals / jnp.abs(eig.eigenvalues), ts.restarted
            elif extra is not None:
                eig = extra(p)
                out = eig.residuals / jnp.abs(eig.eigenvalues), jnp.ones((), bool)
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s, ts), out

        return jax.lax.scan(body, (p, opt.init(p), ts), None, length=steps)

    ts = tracker.init(params, jax.random.key(1)) if tracker is not None else ()
    seconds, (_, (relres, restarted)) = timed(run, params, ts)
    return seconds / steps, np.asarray(relres), np.asarray(restarted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--steps", type=int, default=200, help="scan length per timing")
    parser.add_argument("--tol", type=float, default=None, help="tracker tol (default: its own)")
    args = parser.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.dtype(args.dtype)
    print(f"dtype={args.dtype} steps={args.steps} tol={args.tol} device={jax.devices()[0]}")
    header = f"{'width':>6} {'what':<28} {'us/step':>10} {'x plain':>8} {'/target':>8} "
    print(header + f"{'restarts':>9} {'max relres':>11}")
    for width in args.widths:
        measure(width, dtype, args)


def measure(width: int, dtype, args: argparse.Namespace) -> None:
    """Print the table rows of one width."""
    loss, params = problem(width, dtype)
    plain, _, _ = scan_cost(loss, params, args.steps)
    rows = [("plain GD step", plain, None, None)]
    for method, iters in [("block", 4), ("jax_lobpcg", 4), ("lanczos", 8)]:
        tracker = hessian_tracker(3, method=method, num_iterations=iters, tol=args.tol)
        cost, relres, restarted = scan_cost(loss, params, args.steps, tracker=tracker)
        rows.append((f"warm {method}({iters})", cost, relres, restarted))
    cost, relres, restarted = scan_cost(
        loss, params, max(args.steps // 10, 5), extra=lambda p: hessian_top_k(loss, p, 3)
    )
    rows.append(("cold lanczos(64)", cost, relres, restarted))
    for name, cost, relres, restarted in rows:
        extra = ""
        if relres is not None:
            extra = f"{int(restarted.sum()):>9d} {float(np.max(relres[1:])):>11.2e}"
        ratio = cost / plain
        print(
            f"{width:>6} {name:<28} {cost * 1e6:>10.1f} {ratio:>8.2f} "
            f"{ratio / TARGET:>8.2f} {extra}"
        )
    # 100 checkpoints of a GD run: tracker over them vs independent cold runs.
    opt = optax.sgd(1.0)

    @jax.jit
    def checkpoints(p):
        def body(c, _):
            p, s = c
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), p

        return jax.lax.scan(body, (p, opt.init(p)), None, length=100)[1]

    states = checkpoints(params)
    tracker = hessian_tracker(3, num_iterations=4, tol=args.tol)

    @jax.jit
    def track_all(states):
        def body(ts, p):
            eig, ts = tracker.update(loss, p, ts)
            return ts, eig.eigenvalues

        ts = tracker.init(params, jax.random.key(2))
        return jax.lax.scan(body, ts, states)

    t_track, (ts, _) = timed(track_all, states, repeats=2)
    t_cold, _ = timed(
        jax.jit(lambda s: jax.lax.map(lambda p: hessian_top_k(loss, p, 3).eigenvalues, s)),
        states,
        repeats=1,
    )
    print(
        f"{width:>6} 100 checkpoints: tracker {t_track:.3f} s "
        f"({t_track / 100 / plain:.2f}x plain step each, {int(ts.num_restarts)} restarts), "
        f"cold Lanczos {t_cold:.3f} s ({t_cold / 100 / plain:.2f}x each)"
    )


if __name__ == "__main__":
    main()
