"""Scripting custom diagnostics: the same user functions post hoc and during training.

Uses ``examples/diagnostics.py`` (the cosine between the gradients of the dynamical and the
static loss, and the per-class training accuracy):

1. post hoc, on the saved checkpoints of the demo run (``make demo`` first);
2. during a new run, evaluated inside the trainer's compiled loop every 10 steps;

then draws both. Run:

    .venv/bin/python examples/custom_diagnostics.py [--demo runs/demo/demo.nc]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).parent))
from diagnostics import grad_cosine, per_class_accuracy

from analysis import map_checkpoints
from training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="runs/demo/demo.nc")
    parser.add_argument("--output", default="runs/custom_diagnostics.png")
    args = parser.parse_args()

    post = map_checkpoints(args.demo, grad_cosine)  # one value per saved checkpoint
    post_acc = map_checkpoints(args.demo, per_class_accuracy)

    online = train(
        TrainConfig(amplitude=70, period=1000, steps=6000, track_every=10),
        metrics={"grad_cosine": grad_cosine, "per_class_accuracy": per_class_accuracy},
    )
    every = online["grad_cosine"].dropna("step")

    fig = Figure(figsize=(9, 6), layout="constrained")
    (a, b), (c, d) = fig.subplots(2, 2)
    a.plot(post["step"], post["grad_cosine"], "o-", ms=3)
    a.set(title="demo run, post hoc (checkpoints)", ylabel="cos(∇F, ∇F_static)")
    for i in range(post_acc.sizes["per_class_accuracy_dim_0"]):
        c.plot(post_acc["step"], post_acc["per_class_accuracy"][:, i], label=f"class {i}")
    c.set(xlabel="step", ylabel="per-class accuracy")
    c.legend(fontsize=7)
    b.plot(every["step"], every, lw=0.8)
    b.set(title="new run, online (every 10 steps)")
    acc = online["per_class_accuracy"].dropna("step", how="all")
    for i in range(acc.shape[1]):
        d.plot(acc["step"], acc[:, i], lw=0.8, label=f"class {i}")
    d.set(xlabel="step")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(
        f"cosine post hoc: min {np.nanmin(post['grad_cosine']):.3f}, online: min "
        f"{float(every.min()):.3f}"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
