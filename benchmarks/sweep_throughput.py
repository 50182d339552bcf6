"""Run-steps per second of sweeps: one run alone vs batched layouts vs dask worker processes.

Spiral, full batch, float32, DCE, every per-step record on (the trainer's own step function).
Target (issue 7): >= 50,000 run-steps/s at width 100 on 2 cores (the 2021 phase diagram,
5,000 runs x 35,000 steps = 175 million run-steps, in under an hour).

    .venv/bin/python benchmarks/sweep_throughput.py [--steps 1000] [--widths 100 1000]
        [--runs 10 50 500] [--lanes 1 10] [--dask-runs 40]

Layouts: "alone" is one run per compiled call (``training.train``'s loop); "lanes=L" is a batch
of R runs in one compiled program, L runs vmapped in lockstep and R/L such groups one after the
other (``training._batched.train_batch``; L = R is a plain vmap of the whole batch). "dask 2w"
is ``analysis.sweep`` on a ``LocalCluster`` of 2 worker processes, 1 thread each, one batch per
task: "cold" is timed end to end (process start and compilation in each worker included),
"warm" is a second sweep of as many runs on the same compiled workers (the steady state of a
long sweep). The load average
is printed with each row: other processes share the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

# First, as benchmarks/curvature.py would shadow the curvature package (see _unshadow.py);
# dask's worker processes and `python -m` run without this folder on the path.
with contextlib.suppress(ModuleNotFoundError):
    import _unshadow  # noqa: F401
import jax
import jax.numpy as jnp

from training import TrainConfig, build, initial_state, make_step
from training._batched import train_batch

TARGET = 50_000


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def alone(width: int, steps: int) -> float:
    problem = build(TrainConfig(hidden_widths=(width,), steps=steps))
    step = make_step(problem)
    run = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(steps)))
    carry = (*initial_state(problem), (), problem.hyper)
    jax.block_until_ready(run(carry))
    t0 = time.perf_counter()
    jax.block_until_ready(run(carry))
    return steps / (time.perf_counter() - t0)


def batched(width: int, steps: int, runs: int, lanes: int) -> float:
    base = TrainConfig(hidden_widths=(width,), steps=steps, chunk_steps=steps, eval_every=100)
    configs = [base.replace(seed=i, amplitude=1.0 + i % 10) for i in range(runs)]
    train_batch(configs, summary_every=100 * max(1, steps // 1000), lanes=lanes)  # compile
    t0 = time.perf_counter()
    train_batch(configs, summary_every=100 * max(1, steps // 1000), lanes=lanes)
    return runs * steps / (time.perf_counter() - t0)


def dask_sweep(width: int, steps: int, runs: int, workers: int) -> tuple[float, float]:
    """(end to end, steady state) run-steps/s of ``sweep`` on a LocalCluster of ``workers``.

    End to end counts process start and each worker's compilation; steady state is a second
    sweep (other seeds) on the same, already compiled workers.
    """
    from dask.distributed import LocalCluster

    from analysis._sweep import sweep

    base = TrainConfig(hidden_widths=(width,), steps=steps, chunk_steps=steps, eval_every=100)
    options = dict(
        batch_size=max(1, runs // (2 * workers)), summary_every=100 * max(1, steps // 1000)
    )
    rates = []
    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster:
        for first in (0, runs):
            sweep(
                base,
                {"seed": range(first, first + runs)},
                scheduler=cluster.scheduler_address,
                **options,
            )
            rates.append(runs * steps / (time.perf_counter() - t0))
            t0 = time.perf_counter()
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--widths", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--runs", type=int, nargs="+", default=[10, 50, 500])
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--dask-runs", type=int, default=40)
    parser.add_argument(
        "--max-run-steps",
        type=float,
        default=2e6,
        help="skip rows above this many run-steps at width 1000 (time)",
    )
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores, "
        f"{args.steps} steps per run, float32, full batch"
    )
    header = (
        f"{'width':>6} {'layout':>14} {'runs':>5} {'run-steps/s':>12} {'/target':>8} {'load':>5}"
    )
    print(header)
    print("-" * len(header))

    def row(width, layout, runs, rate):
        ratio = f"{rate / TARGET:8.2f}" if width == 100 else f"{'':>8}"
        print(f"{width:>6} {layout:>14} {runs:>5} {rate:>12,.0f} {ratio} {_load():>5}", flush=True)

    for width in args.widths:
        row(width, "alone", 1, alone(width, args.steps))
        for runs in args.runs:
            for lanes in sorted({*args.lanes, runs}):
                if lanes > runs or runs % lanes:
                    continue
                if width >= 1000 and runs * args.steps > args.max_run_steps:
                    print(
                        f"{width:>6} {'lanes=' + str(lanes):>14} {runs:>5} {'skipped':>12}"
                        " (time budget; memory allows: 500 x width 1000 ≈ 36 MB of params)"
                    )
                    continue
                name = "vmap (all)" if lanes == runs else f"lanes={lanes}"
                row(width, name, runs, batched(width, args.steps, runs, lanes))
        if args.dask_runs:
            cold, warm = dask_sweep(width, args.steps, args.dask_runs, 2)
            row(width, "dask 2w (cold)", args.dask_runs, cold)
            row(width, "dask 2w (warm)", args.dask_runs, warm)


if __name__ == "__main__":
    main()
