"""Seconds and XLA compilations of post-hoc curvature calls made from plain Python.

Run:  .venv/bin/python benchmarks/first_call.py [--width 32] [--steps 2000]

Trains one spiral DCE run (checkpoints every ``steps / 4``), then, in a fresh Python process
per mode, restores two of its checkpoints one after the other and calls at each
``restore``, ``hessian_top_k(k=3)``, ``spectral_density``, ``gradient_projection`` on the
top-3 vectors and ``landscape_section`` on the top-2 plane (21 x 21 points), as a user's
script or the CLI does. Modes: the curvature functions compiled as one program per call
(the default, ``curvature._compiled.compiled``), and run as written, op by op
(``curvature._compiled.ENABLED = False``; ``restore`` is the same in both). The first
checkpoint pays every compilation of a fresh process; at the second the loss function is a
new one (Γ of another step), so compiled calls compile again while op-by-op calls find their
primitives compiled. No target: it shows what compiling whole calls saves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# First, as benchmarks/curvature.py would shadow the curvature package (see _unshadow.py).
with contextlib.suppress(ModuleNotFoundError):
    import _unshadow  # noqa: F401

CALLS = ("restore", "hessian_top_k", "spectral_density", "gradient_projection", "section")

_CHILD = """
import json, sys, time
import jax
import curvature._compiled
from curvature import gradient_projection, hessian_top_k, landscape_section, spectral_density
from training import restore

curvature._compiled.ENABLED = {enabled}
compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **_: compiles.append(event)
    if event == "/jax/core/compile/backend_compile_duration" else None
)

def timed(name, fn):
    start, before = time.perf_counter(), len(compiles)
    out = jax.block_until_ready(fn())
    print(json.dumps([name, time.perf_counter() - start, len(compiles) - before]))
    return out

for step in {steps}:
    r = timed("restore", lambda: restore({run!r}, step))
    eig = timed("hessian_top_k", lambda: hessian_top_k(r.loss_fn, r.params, 3))
    timed("spectral_density", lambda: spectral_density(r.loss_fn, r.params))
    timed("gradient_projection", lambda: gradient_projection(r.loss_fn, r.params, eig.eigenvectors))
    timed("section", lambda: landscape_section(
        r.loss_fn, r.params, eig.eigenvectors[0], eig.eigenvectors[1], num_points=21
    ).surface.values)
"""


def _measure(run: Path, steps: list[int], enabled: bool) -> list[tuple[str, float, int]]:
    code = _CHILD.format(enabled=enabled, steps=steps, run=str(run))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return [tuple(json.loads(line)) for line in done.stdout.splitlines() if line.startswith("[")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32, help="hidden width (default 32)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    args = parser.parse_args()

    from training import TrainConfig, train

    every = max(args.steps // 4, 1)
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run.nc"
        config = TrainConfig(
            hidden_widths=(args.width,), steps=args.steps, checkpoint_every=every, output=str(run)
        )
        train(config)
        steps = [2 * every, 3 * every]
        compiled = _measure(run, steps, enabled=True)
        eager = _measure(run, steps, enabled=False)

    print(f"width {args.width}, checkpoints {steps[0]} then {steps[1]}, fresh process per mode")
    header = ("call", "checkpoint", "compiled s", "progs", "op by op s", "progs")
    print("{:<22}{:>11}{:>12}{:>7}{:>12}{:>7}".format(*header))
    for i, ((name, t_c, n_c), (_, t_e, n_e)) in enumerate(zip(compiled, eager, strict=True)):
        which = "first" if i < len(CALLS) else "second"
        print(f"{name:<22}{which:>11}{t_c:>12.2f}{n_c:>7}{t_e:>12.2f}{n_e:>7}")
    for which, part in (("first", slice(0, len(CALLS))), ("second", slice(len(CALLS), None))):
        total_c = sum(t for _, t, _ in compiled[part])
        total_e = sum(t for _, t, _ in eager[part])
        print(f"{'all five':<22}{which:>11}{total_c:>12.2f}{'':>7}{total_e:>12.2f}")


if __name__ == "__main__":
    main()
