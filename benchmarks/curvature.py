"""Cost of per-step Hessian top-3 tracking, as a multiple of one plain training step.

Run:  .venv/bin/python benchmarks/curvature.py [--widths 100 1000] [--steps 2000 400] [--k 3]
          [--start 0] [--rows block tol iter4 lobpcg lanczos seq vmap library arrays ...]
          [--no-post-hoc]

The trainer's own spiral problem (DCE, triangle Γ with amplitude 70 and period 2000, full-batch
GD at η = 1, float32 unless --dtype float64): the Hessian changes every step, as in the 2021
paper's runs. For each width, inside one jitted ``lax.scan`` over S steps from initialisation,
or from step N of the same run with ``--start N`` (trained there with plain steps first; later
in a run the network is at the edge of stability, the spectrum moves more from step to step
and warm starts need more expansions):

  plain              one training step (loss with Γ(step), gradient, update)
  floor: 3 HVPs      the step plus 3 fresh Hessian-vector products and nothing else: what any
                     tracker that reports true residuals of 3 vectors at every step must pay;
                     "seq." multiplies them one after the other, "vmap" as one vmapped product;
                     "2 rounds": two such batches, the second on the first's results (what a
                     tracker pays that expands by the residual at the new parameters)
  warm ...           the step plus ``hessian_tracker(3).update`` (--rows: default block method
                     and tolerance, a looser tolerance, the former cap of 4 expansions, the
                     other warm methods, the default with products forced sequential or
                     vmapped, see ``curvature._hessian.VMAP_PRODUCTS``, and with its small
                     eigh / QR as library calls or in array operations, see
                     ``curvature._tracking.SMALL_LINALG``)
  cold Lanczos(64)   the step plus ``hessian_top_k(loss, params, 3)`` from scratch (S/10 steps)

Columns: µs per step, the tracking cost (tracked step − plain step) in plain steps and its ratio
to the issue's 3× target, cold restarts, mean block expansions per step, median and largest
relative residual ‖Hv − λv‖/|λ|. Then the post-hoc path on a run file with 100 checkpoints (10
steps apart, from initialisation whatever --start says), as the CLI runs it:
``analysis.hessian_trajectory(run, k=3)`` warm-started from checkpoint to checkpoint (the
default) and with ``warm=False`` (cold Lanczos at each).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

# First, as benchmarks/curvature.py would shadow the curvature package (see _unshadow.py);
# dask's worker processes and `python -m` run without this folder on the path.
with contextlib.suppress(ModuleNotFoundError):
    import _unshadow  # noqa: F401
import jax
import jax.numpy as jnp
import numpy as np
import optax

from analysis import hessian_trajectory
from curvature import _hessian as curvature_hessian
from curvature import _tracking as curvature_tracking
from curvature import hessian_exact, hessian_operator, hessian_top_k, hessian_tracker
from training import TrainConfig, build, context, initial_state, train

TARGET = 3.0


def _timed(fn, *args):
    """Best of two runs after a warm-up (compilation excluded)."""
    jax.block_until_ready(fn(*args))
    best, out = np.inf, None
    for _ in range(2):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best, out


class Origin(NamedTuple):
    """Where a timed scan begins: the step number and (params, optimiser state) there."""

    step: int
    params: Any
    opt_state: Any


def _plain_update(problem, ctx, opt_state):
    """One plain training step from ``ctx`` (its gradient, the optimiser's update)."""
    updates, opt_state = problem.optimizer.update(ctx.grads, opt_state, ctx.params)
    return optax.apply_updates(ctx.params, updates), opt_state


def _origin(problem, start: int) -> Origin:
    """The run's state after ``start`` plain training steps from initialisation."""
    params, opt_state, _ = initial_state(problem)

    def body(carry, step):
        return _plain_update(problem, context(problem, carry[0], step), carry[1]), None

    run = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(start))[0])
    return Origin(start, *run((params, opt_state)))


def _scan_cost(problem, origin: Origin, steps: int, k: int, extra=None, state=()):
    """Seconds per step of training steps ``origin.step .. origin.step + steps``, each
    followed by ``extra(ctx, state)``.

    ``extra`` returns ``(row, state)`` with row = (relative residuals (k,), restarted,
    expansions); the rows of all steps come back as arrays.
    """
    dtype = problem.dtype

    def body(carry, step):
        params, opt_state, state = carry
        ctx = context(problem, params, step)
        row = (jnp.zeros((k,), dtype), jnp.zeros((), bool), jnp.zeros((), jnp.int32))
        if extra is not None:
            row, state = extra(ctx, state)
        return (*_plain_update(problem, ctx, opt_state), state), row

    steps_range = jnp.arange(origin.step, origin.step + steps)
    run = jax.jit(lambda c: jax.lax.scan(body, c, steps_range))
    seconds, (_, rows) = _timed(run, (origin.params, origin.opt_state, state))
    return seconds / steps, [np.asarray(r) for r in rows]


def _floor(ctx, vectors, batches=1):
    """``batches`` rounds of k fresh products, each round taken on the renormalised products
    of the one before (so the rounds are sequential, and the chain carries over from step to
    step so that it cannot be optimised away)."""
    op = hessian_operator(ctx.loss_fn, ctx.params)
    for _ in range(batches):
        products = op.matmat(vectors)
        vectors = products / jnp.linalg.norm(products, axis=1, keepdims=True)
    zeros = jnp.zeros((vectors.shape[0],), vectors.dtype)
    return (zeros, jnp.zeros((), bool), jnp.zeros((), jnp.int32)), vectors


# Two dependent rounds of k products: the fewest for a tracker that expands its warm start by
# the residual at the new parameters (the residual needs the first round).
_floor_two_rounds = functools.partial(_floor, batches=2)


@contextlib.contextmanager
def _forced(module, name: str, value):
    """Set a module's backend switch for the block (None: choose by backend, the default):
    ``curvature._hessian.VMAP_PRODUCTS`` (products vmapped or in sequence) or
    ``curvature._tracking.SMALL_LINALG`` (small eigh / QR as "library" calls or in "arrays")."""
    before = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, before)


def _tracked(tracker):
    def extra(ctx, state):
        eig, state = tracker.update(ctx.loss_fn, ctx.params, state)
        relres = eig.residuals / jnp.abs(eig.eigenvalues)
        return (relres, state.restarted, state.iterations), state

    return extra


def _cold(k):
    def extra(ctx, state):
        eig = hessian_top_k(ctx.loss_fn, ctx.params, k)
        relres = eig.residuals / jnp.abs(eig.eigenvalues)
        return (relres, jnp.ones((), bool), jnp.zeros((), jnp.int32)), state

    return extra


#: Warm rows: label -> (hessian_tracker options, products vmapped or not (None = default),
#: small dense work in "library" calls or "arrays" (None = default)).
WARM = {
    "block": ("warm block (default)", {}, None, None),
    "tol": ("warm block tol=1e-2", {"tol": 1e-2}, None, None),
    "iter4": ("warm block num_iter=4", {"num_iterations": 4}, None, None),
    "lobpcg": ("warm jax_lobpcg(8)", {"method": "jax_lobpcg"}, None, None),
    "lanczos": ("warm lanczos(8)", {"method": "lanczos"}, None, None),
    "seq": ("warm block, seq. HVPs", {}, False, None),
    "vmap": ("warm block, vmap HVPs", {}, True, None),
    "library": ("warm block, library", {}, None, "library"),
    "library-tol": ("warm library tol=1e-2", {"tol": 1e-2}, None, "library"),
    "arrays": ("warm block, arrays", {}, None, "arrays"),
    "arrays-tol": ("warm arrays tol=1e-2", {"tol": 1e-2}, None, "arrays"),
}


def measure(
    width: int, steps: int, dtype: str, k: int, rows_wanted: list[str], start: int = 0
) -> None:
    """Print the per-step rows of one width, each as soon as it is timed."""
    problem = build(TrainConfig(hidden_widths=(width,), amplitude=70.0, period=2000.0, dtype=dtype))
    params = initial_state(problem)[0]
    p = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    origin = _origin(problem, start)
    plain, _ = _scan_cost(problem, origin, steps, k)
    print(
        f"{width:>6} {'plain step':<22} {plain * 1e6:>9.1f} {'':>7} {'':>7}   (P = {p}, "
        f"steps {start}..{start + steps})"
    )

    def row(label, cost, relres, restarted, expansions):
        extra = (cost - plain) / plain
        stats = ""
        if label.startswith(("warm", "cold")):
            rel = relres[1:]
            stats = (
                f"{int(restarted.sum()):>9d} {expansions[1:].mean():>6.2f} "
                f"{np.median(rel):>9.1e} {rel.max():>9.1e}"
            )
        print(
            f"{width:>6} {label:<22} {cost * 1e6:>9.1f} {extra:>7.2f} {extra / TARGET:>7.2f} "
            f"{stats}",
            flush=True,
        )

    vectors = jax.random.normal(jax.random.key(1), (k, p), problem.dtype)
    for label, vmapped in (("seq.", False), ("vmap", True)):
        with _forced(curvature_hessian, "VMAP_PRODUCTS", vmapped):
            cost, stats = _scan_cost(problem, origin, steps, k, _floor, vectors)
        row(f"floor: {k} HVPs {label}", cost, *stats)
    cost, stats = _scan_cost(problem, origin, steps, k, _floor_two_rounds, vectors)
    row(f"floor: 2 rounds of {k}", cost, *stats)
    for name in rows_wanted:
        label, options, vmapped, small = WARM[name]
        tracker = hessian_tracker(k, **options)
        state = tracker.init(params, jax.random.key(2))
        with (
            _forced(curvature_hessian, "VMAP_PRODUCTS", vmapped),
            _forced(curvature_tracking, "SMALL_LINALG", small),
        ):
            cost, stats = _scan_cost(problem, origin, steps, k, _tracked(tracker), state)
        row(label, cost, *stats)
    cost, stats = _scan_cost(problem, origin, max(steps // 10, 10), k, _cold(k))
    row("cold Lanczos(64)", cost, *stats)


def post_hoc(width: int, checkpoints: int, dtype: str, k: int) -> None:
    """Top-3 at every checkpoint of a saved run: ``hessian_trajectory`` wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.nc"
        train(
            TrainConfig(
                hidden_widths=(width,),
                steps=10 * checkpoints,
                checkpoint_every=10,
                amplitude=70.0,
                period=2000.0,
                dtype=dtype,
                output=str(path),
            )
        )
        for warm in (True, False):
            t0 = time.perf_counter()
            result = hessian_trajectory(path, k=k, projection=False, warm=warm)
            seconds = time.perf_counter() - t0
            restarts = int(result["hessian_restarted"].sum()) if warm else result.sizes["step"]
            print(
                f"{width:>6} hessian_trajectory(warm={warm}), {result.sizes['step']} "
                f"checkpoints, top-{k}: {seconds:.2f} s, compilation included "
                f"({restarts} cold starts)"
            )


def exact_chunks(width: int, dtype: str) -> None:
    """Seconds to build the dense Hessian (``hessian_exact``) for several ``chunk_size``."""
    problem = build(TrainConfig(hidden_widths=(width,), dtype=dtype))
    params = initial_state(problem)[0]
    loss_fn = context(problem, params, 0).loss_fn
    for chunk in (1, 8, 64):
        fn = jax.jit(lambda p, c=chunk: hessian_exact(loss_fn, p, chunk_size=c))
        compiled = fn.lower(params).compile()
        t0 = time.perf_counter()
        matrix = jax.block_until_ready(compiled(params))
        seconds = time.perf_counter() - t0
        print(
            f"{width:>6} hessian_exact chunk_size={chunk:<3} {seconds:8.2f} s "
            f"({matrix.shape[0]}x{matrix.shape[1]}, {matrix.dtype}, compilation excluded)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[2000, 400], help="scan length per width"
    )
    parser.add_argument(
        "--start",
        type=int,
        default=0,
        help="time steps START..START+S of the run (trained to START with plain steps first)",
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--checkpoints", type=int, default=100)
    parser.add_argument(
        "--k", type=int, default=3, help="eigenpairs tracked (default 3; 1 = λ_max alone)"
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=list(WARM),
        default=["block", "tol", "iter4", "lobpcg", "lanczos"],
        help="warm rows to time (seq/vmap: default block with products forced one way)",
    )
    parser.add_argument("--no-post-hoc", action="store_true", help="skip the run-file timing")
    parser.add_argument(
        "--exact", action="store_true", help="also time hessian_exact's chunk sizes"
    )
    args = parser.parse_args()
    if args.start < 0:
        parser.error(f"--start must be a step number >= 0 (got {args.start}).")
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    steps = (args.steps + [args.steps[-1]] * len(args.widths))[: len(args.widths)]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.dtype}")
    print(
        f"{'width':>6} {'what':<22} {'us/step':>9} {'cost':>7} {'/3x':>7} "
        f"{'restarts':>9} {'expan.':>6} {'med relres':>9} {'max relres':>9}"
    )
    for width, n in zip(args.widths, steps, strict=True):
        measure(width, n, args.dtype, args.k, args.rows, args.start)
    for width in [] if args.no_post_hoc else args.widths:
        post_hoc(width, args.checkpoints, args.dtype, args.k)
    if args.exact:
        for width in args.widths:
            exact_chunks(width, args.dtype)


if __name__ == "__main__":
    main()
