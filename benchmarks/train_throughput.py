"""Steps/s of the recorded trainer vs a bare jitted ``lax.scan`` of the update.

Spiral, full batch, float32, every per-step record on (the trainer's own step function).
Targets (issue 3): >= 15,000 recorded steps/s at width 100 on a 2-core machine, and
recorded / bare >= 0.75.

    .venv/bin/python benchmarks/train_throughput.py [--steps 20000] [--widths 100 1000]
        [--tracking]

``--tracking`` adds the cost of online tracking inside ``training.train`` (Hessian top-3 alone,
with the gradient projection, and every 10th step with ``track_every=10``; NTK λ_max) as a
multiple of the same run untracked (issue 4 target: Hessian top-3 tracking <= 3x a training
step).
"""

from __future__ import annotations

import argparse
import contextlib
import time

# First, as benchmarks/curvature.py would shadow the curvature package (see _unshadow.py);
# dask's worker processes and `python -m` run without this folder on the path.
with contextlib.suppress(ModuleNotFoundError):
    import _unshadow  # noqa: F401
import jax
import jax.numpy as jnp
import optax

from training import TrainConfig, build, initial_state, make_step, train

TARGET_STEPS_PER_S = 15_000
TARGET_RATIO = 0.75


def _bare_step(problem):
    x = jnp.asarray(problem.data.x_train, problem.dtype)
    y = jnp.asarray(problem.data.y_train)

    def step_fn(carry, step):
        params, opt_state, key, states, hyper = carry
        gamma = problem.schedule(step).astype(problem.dtype)
        grads = jax.grad(lambda p: problem.loss(problem.model.apply(p, x), y, gamma))(params)
        updates, opt_state = problem.optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key, states, hyper), None

    return step_fn


def _rate(step_fn, carry, steps: int, repeats: int) -> float:
    run = jax.jit(lambda c: jax.lax.scan(step_fn, c, jnp.arange(steps)))
    jax.block_until_ready(run(carry))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(carry))
        best = min(best, time.perf_counter() - t0)
    return steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--tracking", action="store_true", help="also time online tracking")
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.steps} steps, best of "
        f"{args.repeats}"
    )
    header = (
        f"{'width':>6} {'recorded steps/s':>17} {'bare steps/s':>13} {'ratio':>6} "
        f"{'vs 15k target':>14} {'vs 0.75 ratio':>14}"
    )
    print(header)
    print("-" * len(header))
    for width in args.widths:
        problem = build(TrainConfig(hidden_widths=(width,), steps=args.steps))
        carry = (*initial_state(problem), (), problem.hyper)
        recorded = _rate(make_step(problem), carry, args.steps, args.repeats)
        bare = _rate(_bare_step(problem), carry, args.steps, args.repeats)
        ratio = recorded / bare
        print(
            f"{width:>6} {recorded:>17,.0f} {bare:>13,.0f} {ratio:>6.2f} "
            f"{recorded / TARGET_STEPS_PER_S:>14.2f} {ratio / TARGET_RATIO:>14.2f}"
        )
    if args.tracking:
        tracking_table(args.widths)


def _steady_seconds(config: TrainConfig) -> float:
    """Seconds per ``config.steps`` steps of ``train`` after compilation.

    Both lengths are run once first (``train`` keeps compiled loops of recent configurations),
    then the cost of the steps is the difference between a run of 2·steps and one of steps
    (same chunk length; file creation and other per-call costs cancel), best of two.
    """
    longer = config.replace(steps=2 * config.steps)
    _wall(config)
    _wall(longer)
    return min(_wall(longer) - _wall(config) for _ in range(2))


def _wall(config: TrainConfig) -> float:
    t0 = time.perf_counter()
    train(config)
    return time.perf_counter() - t0


def tracking_table(widths: list[int]) -> None:
    header = f"{'width':>6} {'tracked':>23} {'steps/s':>9} {'x untracked':>12} {'vs 3x':>6}"
    print()
    print(header)
    print("-" * len(header))
    for width in widths:
        steps = 4000 if width <= 100 else 800
        base = TrainConfig(
            hidden_widths=(width,),
            steps=steps,
            amplitude=70.0,
            period=2000.0,
            chunk_steps=steps // 4,
            checkpoint_every=steps,
        )
        plain = _steady_seconds(base)
        for label, changes in (
            ("hessian top-3", {"hessian_top_k": 3}),
            ("hessian top-3 + proj.", {"hessian_top_k": 3, "projection": True}),
            ("hessian top-3 every 10", {"hessian_top_k": 3, "track_every": 10}),
            ("ntk lambda_max", {"ntk_top_k": 1}),
        ):
            seconds = _steady_seconds(base.replace(**changes))
            ratio = seconds / plain
            print(
                f"{width:>6} {label:>23} {steps / seconds:>9,.0f} {ratio:>12.1f} {ratio / 3:>6.1f}"
            )


if __name__ == "__main__":
    main()
