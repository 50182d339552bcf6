"""The ``dynloss`` command line: one command, one subcommand per job.

Every subcommand has ``--help`` with examples; the ones that write files print their paths.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from training import TrainConfig, open_run, train

DEMO_CONFIG = TrainConfig(
    hidden_widths=(100,),
    loss="dce",
    amplitude=70.0,
    period=5000.0,
    steps=70_000,
    stop_after=65_000,
    checkpoint_every=1000,
    eval_every=100,
    chunk_steps=5000,
)
"""The 2021 paper's Fig. 4 run: width 100, DCE, A = 70, T = 5000, last period static."""


def _progress(description: str, total: int) -> tuple[Callable, Callable[[], None]]:
    """A rich progress bar with steps/s and the latest loss; returns (callback, close)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} steps/s  loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    task = bar.add_task(description, total=total, rate="-", loss="-")
    start = time.perf_counter()
    bar.start()

    def callback(done: int, total_steps: int, latest: dict[str, float]) -> None:
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.update(
            task,
            completed=done,
            total=total_steps,
            rate=f"{done / elapsed:,.0f}",
            loss=f"{latest.get('loss', float('nan')):.4g}",
        )

    return callback, bar.stop


def _run_training(config: TrainConfig, *, overwrite: bool, quiet: bool):
    if quiet:
        return train(config, overwrite=overwrite)
    callback, close = _progress("training", config.steps)
    try:
        return train(config, overwrite=overwrite, progress=callback)
    finally:
        close()


# ---------------------------------------------------------------------------------- train
def _field_parser(field: dataclasses.Field) -> tuple[Callable[[str], object], dict]:
    hint = typing.get_type_hints(TrainConfig)[field.name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if field.name == "hidden_widths":
        return int, {"nargs": "+"}

    def convert(text: str) -> object:
        if optional and text.lower() == "none":
            return None
        return base(text)

    convert.__name__ = getattr(base, "__name__", "value")
    return convert, {}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (TrainConfig fields; 'none' for None)")
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        convert, extra = _field_parser(field)
        default = getattr(defaults, field.name)
        group.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            type=convert,
            default=argparse.SUPPRESS,
            help=f"default: {default!r}",
            **extra,
        )


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if hasattr(args, f.name)
    }
    if "hidden_widths" in changes:
        changes["hidden_widths"] = tuple(changes["hidden_widths"])
    return base.replace(**changes)


def _cmd_train(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    if config.output is None:
        config = config.replace(output="runs/run.nc")
    ds = _run_training(config, overwrite=args.overwrite, quiet=args.quiet)
    print(f"status: {ds.attrs['status']} (last complete step {ds.attrs['last_complete_step']})")
    print(f"wrote {config.output}")
    return 0 if ds.attrs["status"] == "complete" else 3


# ----------------------------------------------------------------------------------- info
def _last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else float("nan")


def _cmd_info(args: argparse.Namespace) -> int:
    ds = open_run(args.run)
    config = TrainConfig.from_json(ds.attrs["config"])
    print(f"run file        {args.run}")
    print(
        f"status          {ds.attrs['status']}"
        + (f" ({ds.attrs['error']})" if "error" in ds.attrs else "")
    )
    print(
        f"steps recorded  {ds.sizes.get('step', 0)} of {config.steps} "
        f"(last complete step {ds.attrs['last_complete_step']})"
    )
    print(
        f"dynloss         {ds.attrs.get('dynloss_version')} (format {ds.attrs['format_version']})"
    )
    print(
        f"model           {config.model} widths {list(config.hidden_widths)} "
        f"({ds.sizes.get('param', 0)} parameters, {config.parameterization}, {config.init})"
    )
    print(
        f"loss            {config.loss}, schedule {config.schedule} A={config.amplitude:g} "
        f"T={config.period:g} stop_after={config.stop_after}"
    )
    print(
        f"optimizer       {config.optimizer} lr={config.learning_rate:g}"
        + (f" momentum={config.momentum:g}" if config.optimizer != "gd" else "")
    )
    print(
        f"data            {config.dataset}, batch {config.batch_size or 'full'}, "
        f"seed {config.seed}, {config.dtype}"
    )
    ckpts = ds["checkpoint_step"].values if "checkpoint_step" in ds else np.array([])
    if ckpts.size:
        print(f"checkpoints     {ckpts.size}: steps {int(ckpts[0])} … {int(ckpts[-1])}")
    if ds.sizes.get("step", 0):
        print("final metrics:")
        for name in ("loss", "static_loss", "train_accuracy", "val_accuracy", "val_loss"):
            if name in ds:
                print(f"  {name:<15} {_last_finite(ds[name].values):.6g}")
    print("variables       " + ", ".join(sorted(ds.data_vars)))
    return 0


# ----------------------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from analysis._plots import plot_run

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_path = out_dir / "demo.nc"
    config = DEMO_CONFIG.replace(output=str(run_path))
    if args.steps is not None:
        stop = max(args.steps - int(config.period), 0)
        config = config.replace(steps=args.steps, stop_after=stop)
    print(
        f"demo: spiral, width {config.hidden_widths[0]}, {config.loss.upper()} "
        f"A={config.amplitude:g} T={config.period:g}, {config.steps} steps of GD "
        f"(lr {config.learning_rate:g}); oscillations stop at step {config.stop_after}"
    )
    ds = _run_training(config, overwrite=True, quiet=args.quiet)
    fig = plot_run(ds)
    figure_path = out_dir / "demo.png"
    fig.savefig(figure_path, dpi=110)
    print(
        f"final train accuracy {_last_finite(ds['train_accuracy'].values):.3f}, "
        f"val accuracy {_last_finite(ds['val_accuracy'].values):.3f}"
    )
    print(f"wrote {run_path}")
    print(f"wrote {figure_path}")
    return 0


# ------------------------------------------------------------------------------------ map
def load_function(spec: str) -> Callable:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` -> the function."""
    import importlib
    import importlib.util

    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"function must be given as module:function or file.py:function (got {spec!r})."
        )
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise FileNotFoundError(f"file {module_name!r} (from {spec!r}) does not exist.")
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise ValueError(f"{module_name!r} has no attribute {attr!r} (from {spec!r}).")
    return getattr(module, attr)


def parse_steps(tokens: Sequence[str] | None, saved: np.ndarray) -> list[int] | None:
    """Steps from ``--steps``: integers and ``start:stop[:stride]`` ranges over saved steps."""
    if not tokens:
        return None
    chosen: list[int] = []
    for token in tokens:
        if ":" in token:
            parts = [int(p) if p else None for p in token.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError(f"--steps range must be start:stop[:stride] (got {token!r}).")
            start, stop = parts[0] or 0, parts[1] if parts[1] is not None else int(saved.max()) + 1
            stride = parts[2] if len(parts) == 3 and parts[2] else 1
            chosen += [int(s) for s in saved if start <= s < stop and (s - start) % stride == 0]
        else:
            chosen.append(int(token))
    return sorted(set(chosen))


def _cmd_map(args: argparse.Namespace) -> int:
    from analysis._map import map_checkpoints

    fn = load_function(args.function)
    ds = open_run(args.run)
    steps = parse_steps(args.steps, ds["checkpoint_step"].values)
    name = args.name or args.function.rpartition(":")[2]
    result = map_checkpoints(
        args.run, fn, steps=steps, batch=args.batch, name=name, append=True, progress=not args.quiet
    )
    print(
        f"{name}: {result.sizes['step']} checkpoint(s), variables "
        + ", ".join(sorted(result.data_vars))
    )
    from training import sibling_path

    print(f"wrote {sibling_path(args.run, name)}")
    return 0


# ----------------------------------------------------------------------------------- main
def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynloss",
        description="Train with dynamical loss functions and diagnose the loss landscape.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples("""
            dynloss demo
            dynloss train --loss dce --amplitude 10 --period 200 --output runs/a.nc
            dynloss info runs/a.nc
        """),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    demo = sub.add_parser(
        "demo",
        help="train the 2021 Fig. 4 spiral run and draw it",
        description="Train the spiral DCE run of the 2021 paper's Fig. 4 (width 100, A=70, "
        "T=5000, 70,000 steps, last period static) and draw Γ, F, ΔF and accuracy.",
        formatter_class=raw,
        epilog=_examples("""
            dynloss demo
            dynloss demo --steps 20000 --output-dir /tmp/demo
        """),
    )
    demo.add_argument("--output-dir", default="runs/demo", help="default: runs/demo")
    demo.add_argument("--steps", type=int, default=None, help="shorter run (default 70000)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)

    tr = sub.add_parser(
        "train",
        help="train one run and write its run file",
        description="Train one run. Options override the TOML file given with --config, "
        "which overrides the defaults (TrainConfig()).",
        formatter_class=raw,
        epilog=_examples("""
            dynloss train --output runs/dce.nc
            dynloss train --loss ce --hidden-widths 1000 --steps 35000 --output runs/ce.nc
            dynloss train --config my_run.toml --seed 3 --output runs/seed3.nc
            dynloss train --dtype float64 --optimizer nesterov --momentum 0.9 --output r.nc
        """),
    )
    tr.add_argument("--config", default=None, help="TOML file of TrainConfig fields")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_options(tr)
    tr.set_defaults(func=_cmd_train)

    info = sub.add_parser(
        "info",
        help="summarise a run file",
        description="Print a run file's status, configuration, checkpoints and final metrics.",
        formatter_class=raw,
        epilog=_examples("dynloss info runs/demo/demo.nc"),
    )
    info.add_argument("run", help="run file (.nc)")
    info.set_defaults(func=_cmd_info)

    mp = sub.add_parser(
        "map",
        help="evaluate a user diagnostic at saved checkpoints",
        description="Call FUNCTION(ctx) at saved checkpoints of RUN (ctx: params, apply_fn, "
        "loss_fn, static_loss_fn, grads, x, y, data, step, gamma, learning_rate, config) and "
        "write the results next to the run as RUN.<name>.nc (merged by open_run).",
        formatter_class=raw,
        epilog=_examples("""
            dynloss map runs/demo/demo.nc examples/diagnostics.py:grad_cosine
            dynloss map runs/demo/demo.nc mypackage.diag:margin --steps 0:70000:5000
            dynloss map runs/a.nc diag.py:per_class_accuracy --steps 0 1000 2000 --name pca
        """),
    )
    mp.add_argument("run", help="run file (.nc)")
    mp.add_argument("function", help="module:function or path/to/file.py:function")
    mp.add_argument(
        "--steps",
        nargs="+",
        default=None,
        help="checkpoint steps: integers or start:stop[:stride] (default: all)",
    )
    mp.add_argument("--name", default=None, help="variable name (default: the function's)")
    mp.add_argument("--batch", type=int, default=None, help="checkpoints per vmapped batch")
    mp.add_argument("--quiet", action="store_true", help="no progress bar")
    mp.set_defaults(func=_cmd_map)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError) as error:
        print(f"dynloss {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
