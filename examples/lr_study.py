"""Learning-rate study of the curvature threshold (2021 paper, Fig. 5a): λ_th ∝ η^α.

For each learning rate η (and width), train the spiral DCE run with the 2021 protocol rescaled
by η, T = T0/η and steps = S0/η, the last period static, tracking Hessian λ1..λ3 at every step;
detect the instability onsets; fit λ_th = c·η^α over all runs (bootstrap over runs) and draw
λ_th against η with the fit and the edge of stability 2/η.

The paper's protocol is T0 = 5000, S0 = 70,000, A = 70 (``--paper``): about 70,000/η tracked
steps per run, hours on a laptop. The default is a reduced protocol (T0 = 1000, S0 = 8000,
A = 70) that shows the same scaling in a few minutes on 2 cores:

    .venv/bin/python examples/lr_study.py --etas 0.5 1 2 --seeds 0 1 2 --output-dir runs/lr
    .venv/bin/python examples/lr_study.py --paper --etas 0.25 0.5 1 2 4 --widths 100 1000

A run already on disk with the same configuration and finished is reused, so an interrupted
study continues where it stopped (an unfinished run is trained again); a file holding another
configuration (another protocol in the same folder) is refused: choose another --output-dir.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis import collect_thresholds, fit_threshold_scaling, plot_threshold_scaling
from training import TrainConfig, open_run, train


def _finished(path: Path, config: TrainConfig) -> bool:
    """Whether ``path`` holds this run, finished; refuses a file of another configuration."""
    if not path.exists():
        return False
    with open_run(path, siblings=False) as ds:
        stored, status = TrainConfig.from_json(ds.attrs["config"]), ds.attrs["status"]
    if stored.replace(output=None) != config.replace(output=None):
        raise FileExistsError(
            f"{path} holds a run of another configuration (another protocol or amplitude in "
            "this folder?); choose another --output-dir."
        )
    return status in ("complete", "diverged")


def run_study(etas, widths, *, period0, steps0, amplitude, output_dir, seeds=(0,), quiet=False):
    output_dir = Path(output_dir)
    paths = []
    for width, eta, seed in ((w, e, s) for w in widths for e in etas for s in seeds):
        period = period0 / eta
        steps = round(steps0 / eta)
        path = output_dir / f"w{width}_eta{eta:g}_seed{seed}.nc"
        config = TrainConfig(
            hidden_widths=(width,),
            loss="dce",
            amplitude=amplitude,
            period=period,
            steps=steps,
            stop_after=int(steps - period),
            learning_rate=eta,
            hessian_top_k=3,
            checkpoint_every=max(steps // 20, 1),
            seed=seed,
            output=str(path),
        )
        if not _finished(path, config):
            if not quiet:
                print(
                    f"training width {width}, η = {eta:g}, seed {seed}: T = {period:g}, "
                    f"{steps} steps"
                )
            train(config, overwrite=path.exists())  # an unfinished run of this config
        paths.append(path)
    runs = [open_run(p) for p in paths]
    points = collect_thresholds(runs)
    fit = fit_threshold_scaling(
        points.learning_rates,
        points.thresholds,
        groups=points.groups,
        optimizer=points.optimizer,
        momentum=points.momentum,
    )
    return paths, points, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etas", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--widths", type=int, nargs="+", default=[100])
    parser.add_argument("--paper", action="store_true", help="T0 = 5000, S0 = 70000")
    parser.add_argument("--amplitude", type=float, default=70.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir", default="runs/lr")
    args = parser.parse_args()
    period0, steps0 = (5000.0, 70_000) if args.paper else (1000.0, 8000)
    paths, points, fit = run_study(
        args.etas,
        args.widths,
        period0=period0,
        steps0=steps0,
        amplitude=args.amplitude,
        output_dir=args.output_dir,
        seeds=args.seeds,
    )
    print(f"{len(points.thresholds)} onsets in {len(paths)} runs")
    print(
        f"λ_th = {fit.prefactor:.3g}·η^{fit.exponent:.3f}, 95% CI of the exponent "
        f"[{fit.ci_low:.3f}, {fit.ci_high:.3f}], R² = {fit.r2:.3f}, "
        f"median λ_th·η/2 = {fit.eos_ratio:.3f}"
    )
    figure = Path(args.output_dir) / "threshold_scaling.png"
    plot_threshold_scaling(
        points.learning_rates, points.thresholds, fit, groups=points.groups
    ).savefig(figure, dpi=110)
    print(f"wrote {figure}")


if __name__ == "__main__":
    main()
