"""The ``dynloss`` command line: one command, one subcommand per job.

Every subcommand has ``--help`` with examples; the ones that write files print their paths.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import textwrap
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from training import TrainConfig, open_run, sibling_files, train
from training._runfile import READ_ATTEMPTS, READ_RETRY_SECONDS

DEMO_CONFIG = TrainConfig(
    hidden_widths=(100,),
    loss="dce",
    amplitude=70.0,
    period=2000.0,
    steps=28_000,
    stop_after=26_000,
    checkpoint_every=1000,
    eval_every=100,
    chunk_steps=2000,
    hessian_top_k=3,
)
"""The 2021 paper's Fig. 4 protocol (width 100, DCE, A = 70, 14 periods, last period static) at
T = 2000 instead of 5000 so it runs in about a minute, with Hessian λ1..λ3 tracked every step."""


def _progress(description: str, total: int) -> tuple[Callable, Callable[[], None]]:
    """A progress bar with steps/s and the latest loss; returns (callback, close)."""
    from analysis._progress import start_bar

    bar, task = start_bar(
        description,
        total,
        detail="{task.fields[rate]} steps/s  loss {task.fields[loss]}",
        rate="-",
        loss="-",
    )
    start = time.perf_counter()

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
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise argparse.ArgumentTypeError(f"expected true or false (got {text!r})")
            return text.lower() in ("true", "1", "yes")
        return base(text)

    convert.__name__ = getattr(base, "__name__", "value")
    return convert, {}


DEFAULT_OUTPUT = "runs/run.nc"
"""Where ``dynloss train`` writes when neither ``--output`` nor the ``--config`` file names a
path (``TrainConfig().output`` is None: in Python, ``train`` then writes no file)."""


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (TrainConfig fields; 'none' for None)")
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        convert, extra = _field_parser(field)
        default = getattr(defaults, field.name)
        if field.name == "output":
            help_text = (
                f"run file to write (default: the --config file's output, else "
                f"{DEFAULT_OUTPUT}; 'none' is refused)"
            )
        else:
            help_text = f"default: {default!r}"
        group.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            type=convert,
            default=argparse.SUPPRESS,
            help=help_text,
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
    if hasattr(args, "output") and args.output is None:
        raise ValueError(
            "--output must be a file path (got 'none'): dynloss train always writes its run "
            f"file; leave --output out to write {DEFAULT_OUTPUT}."
        )
    config = _config_from_args(args)
    if config.output is None:
        config = config.replace(output=DEFAULT_OUTPUT)
    ds = _run_training(config, overwrite=args.overwrite, quiet=args.quiet)
    print(f"status: {ds.attrs['status']} (last complete step {ds.attrs['last_complete_step']})")
    print(f"wrote {config.output}")
    return 0 if ds.attrs["status"] == "complete" else 3


# ----------------------------------------------------------------------------------- info
def _last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else float("nan")


def _info_snapshot(path: str) -> dict[str, typing.Any]:
    """What ``dynloss info`` prints, read eagerly from one opening of the run file (its
    variables' names also from the post-hoc results merged beside it)."""
    with open_run(path, siblings=False) as ds:
        snapshot = {
            "attrs": dict(ds.attrs),
            "recorded": ds.sizes.get("step", 0),  # trained steps only
            "params": ds.sizes.get("param", 0),
            "checkpoints": ds["checkpoint_step"].values if "checkpoint_step" in ds else [],
            "final": {
                name: _last_finite(ds[name].values)
                for name in ("loss", "static_loss", "train_accuracy", "val_accuracy", "val_loss")
                if name in ds and ds.sizes.get("step", 0)
            },
        }
    with open_run(path) as merged:
        snapshot["variables"] = sorted(merged.data_vars)
    return snapshot


def _read_info(path: str) -> tuple[dict[str, typing.Any], bool]:
    """A snapshot of the run, and whether it is consistent. A running trainer may append
    while the file is read (HDF5 has no concurrent reader/writer guarantee): a read that fails
    or sees records and ``last_complete_step`` disagree is retried, 0.2 s apart."""
    for attempt in range(READ_ATTEMPTS):
        try:
            snapshot = _info_snapshot(path)
        except RuntimeError:  # "NetCDF: HDF error" in the middle of an append
            if attempt == READ_ATTEMPTS - 1:
                raise
        else:
            attrs = snapshot["attrs"]
            if attrs.get("status") != "running":
                return snapshot, True
            if snapshot["recorded"] == int(attrs["last_complete_step"]) + 1:
                return snapshot, True
            if attempt == READ_ATTEMPTS - 1:
                return snapshot, False
        time.sleep(READ_RETRY_SECONDS)
    raise AssertionError("unreachable")


def _cmd_info(args: argparse.Namespace) -> int:
    snapshot, consistent = _read_info(args.run)
    attrs = snapshot["attrs"]
    config = TrainConfig.from_json(attrs["config"])
    print(f"run file        {args.run}")
    error = f" ({attrs['error']})" if "error" in attrs else ""
    print(f"status          {attrs['status']}{error}")
    print(
        f"steps recorded  {snapshot['recorded']} of {config.steps} "
        f"(last complete step {attrs['last_complete_step']})"
        + ("" if consistent else "; read while the trainer was writing, ask again")
    )
    print(f"dynloss         {attrs.get('dynloss_version')} (format {attrs['format_version']})")
    print(
        f"model           {config.model} widths {list(config.hidden_widths)} "
        f"({snapshot['params']} parameters, {config.parameterization}, {config.init})"
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
    ckpts = snapshot["checkpoints"]
    if len(ckpts):
        print(f"checkpoints     {len(ckpts)}: steps {int(ckpts[0])} … {int(ckpts[-1])}")
    if "diverged_at_step" in attrs:
        print(
            f"diverged at     step {attrs['diverged_at_step']} (non-finite loss); the final "
            "metrics below are the last finite values before it"
        )
    if snapshot["final"]:
        print("final metrics:")
        for name, value in snapshot["final"].items():
            print(f"  {name:<15} {value:.6g}")
    print("variables       " + ", ".join(snapshot["variables"]))
    return 0


# ----------------------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from analysis._onsets import detect_onsets
    from analysis._plots import plot_run
    from analysis._threshold import threshold
    from analysis._trajectories import ntk_trajectory

    out_dir = Path(args.output_dir)  # created with the run file, once the options are checked
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
    ds = _run_training(config, overwrite=args.overwrite, quiet=args.quiet)
    ntk = ntk_trajectory(
        run_path, k=1, append=True, overwrite=args.overwrite, progress=not args.quiet
    )
    ds = open_run(run_path)  # with the NTK sibling merged
    onsets = detect_onsets(ds)
    print(
        f"final train accuracy {_last_finite(ds['train_accuracy'].values):.3f}, "
        f"val accuracy {_last_finite(ds['val_accuracy'].values):.3f}; NTK λ_max at the end "
        f"{float(ntk['ntk_eigenvalues'].values[-1, 0]):.4g}"
    )
    print(f"{onsets.sizes['onset']} instabilities detected (alternation of ΔF):")
    if onsets.sizes["onset"]:
        print(_onset_table(onsets))
        th = threshold(onsets)
        eta = config.learning_rate
        print(
            f"threshold λ_th = {th.mean:.4g} ± {th.std:.2g} (mean λ1 at the {th.count} onsets; "
            f"median {np.median(th.values):.4g}); edge of stability 2/η = {2 / eta:.4g}"
        )
    fig = plot_run(ds, onsets=onsets)
    figure_path = out_dir / "demo.png"
    fig.savefig(figure_path, dpi=110)
    print(f"wrote {run_path}")
    print(f"wrote {run_path.with_name('demo.ntk.nc')}")
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
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(
                f"cannot import module {module_name!r} (from {spec!r}): {error}; give an "
                "importable module or a path to a .py file."
            ) from error
    if not hasattr(module, attr):
        raise ValueError(f"{module_name!r} has no attribute {attr!r} (from {spec!r}).")
    return getattr(module, attr)


def parse_steps(tokens: Sequence[str] | None, saved: np.ndarray) -> list[int] | None:
    """Steps from ``--steps``: integers and ``start:stop[:stride]`` ranges over saved steps."""
    if not tokens:
        return None
    chosen: list[int] = []
    for token in tokens:
        try:
            parts = [int(p) if p else None for p in token.split(":")]
            if parts == [None]:
                raise ValueError(token)
        except ValueError:
            raise ValueError(
                f"--steps takes integers and start:stop[:stride] ranges (got {token!r})."
            ) from None
        if len(parts) == 1 and parts[0] is not None:
            chosen.append(parts[0])
            continue
        if len(parts) not in (2, 3):
            raise ValueError(f"--steps range must be start:stop[:stride] (got {token!r}).")
        start, stop = parts[0] or 0, parts[1] if parts[1] is not None else int(saved.max()) + 1
        stride = parts[2] if len(parts) == 3 and parts[2] is not None else 1
        if stride < 1:
            raise ValueError(f"--steps stride must be a positive integer (got {token!r}).")
        chosen += [int(s) for s in saved if start <= s < stop and (s - start) % stride == 0]
    if not chosen:
        raise ValueError(
            f"--steps {' '.join(tokens)} selects no saved checkpoint; saved steps are "
            f"{saved.tolist()[:8]}{' …' if saved.size > 8 else ''}."
        )
    return sorted(set(chosen))


def _add_overwrite_option(parser: argparse.ArgumentParser, target: str) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {target} as a whole: every earlier step in it is discarded, "
        "whatever its shape or options, and only the steps computed now are kept (default: "
        "merge into results of the same shape and options, steps computed again replaced, "
        "the others kept; refuse results of another shape or options)",
    )


def _check_writable(run: str) -> None:
    """Refuse before computing when the post-hoc result could not be written next to ``run``."""
    folder = Path(run).resolve().parent
    if folder.is_dir() and not os.access(folder, os.W_OK):
        raise PermissionError(
            f"cannot write results next to {run!r}: folder {str(folder)!r} is not writable; "
            "copy the run file to a writable folder first."
        )


def _cmd_map(args: argparse.Namespace) -> int:
    from analysis._map import map_checkpoints

    fn = load_function(args.function)
    _check_writable(args.run)
    ds = open_run(args.run)
    steps = parse_steps(args.steps, ds["checkpoint_step"].values)
    name = args.name or args.function.rpartition(":")[2]
    result = map_checkpoints(
        args.run,
        fn,
        steps=steps,
        batch=args.batch,
        name=name,
        append=True,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        f"{name}: {result.sizes['step']} checkpoint(s), variables "
        + ", ".join(sorted(result.data_vars))
    )
    from training import sibling_path

    print(f"wrote {sibling_path(args.run, name)}")
    return 0


# -------------------------------------------------------------------------- hessian / ntk
def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _eigen_table(result, variable: str, index_dim: str, limit: int = 12) -> str:
    values = result[variable]
    steps = result["step"].values
    header = ["step", *[f"λ{i}" for i in values[index_dim].values]]
    shown = np.unique(np.linspace(0, len(steps) - 1, min(limit, len(steps))).astype(int))
    rows = [[str(steps[i]), *[f"{v:.5g}" for v in values.values[i]]] for i in shown]
    return _table(rows, header)


def _each_run(
    args: argparse.Namespace, check: Callable[[str, list[int] | None], object]
) -> list[tuple[str, list[int] | None]]:
    """The runs named on the command line with their selected steps, every one checked
    before any is analysed: its folder, its steps (saved checkpoints) and ``check(run,
    steps)``, the analysis's own checks of options and earlier results. Post-hoc result files
    of runs among them (a glob's ``RUN.hessian.nc``) are skipped. With several runs, errors
    name the run."""
    from analysis._map import select_steps

    runs = _without_results(args.runs)
    selected = []
    for run in runs:
        _check_writable(run)
        try:
            with open_run(run, siblings=False) as ds:
                steps = parse_steps(args.steps, ds["checkpoint_step"].values)
                if steps is not None:
                    select_steps(ds, steps)
            check(run, steps)
        except (ValueError, FileExistsError) as error:
            if len(runs) == 1:
                raise
            raise type(error)(f"{run}: {error}") from None
        selected.append((run, steps))
    return selected


def _run_header(selected: list, run: str) -> None:
    if len(selected) > 1:
        print(f"\n{run}")


def _cmd_hessian(args: argparse.Namespace) -> int:
    from analysis._trajectories import hessian_request, hessian_trajectory
    from training import sibling_path

    options = {
        "k": args.k,
        "warm": not args.cold,
        "projection": not args.no_projection,
        "density": args.density,
        "append": True,
        "overwrite": args.overwrite,
    }
    selected = _each_run(args, lambda run, steps: hessian_request(run, steps=steps, **options))
    for run, steps in selected:
        result = hessian_trajectory(run, steps=steps, progress=not args.quiet, **options)
        _run_header(selected, run)
        print(_eigen_table(result, "hessian_eigenvalues", "eigen_index"))
        worst = float(np.nanmax(result["hessian_residuals"].values))
        print(f"largest residual ||Hv - λv||: {worst:.3g}")
        print(f"wrote {sibling_path(run, 'hessian')}")
    return 0


def _cmd_ntk(args: argparse.Namespace) -> int:
    from analysis._trajectories import ntk_request, ntk_trajectory
    from training import sibling_path

    if args.k < 1:
        raise ValueError(f"--k must be a positive integer (got {args.k}).")
    options = {
        "k": args.k,
        "full": args.full,
        "eigenvectors": args.eigenvectors,
        "subset": args.subset,
        "append": True,
        "overwrite": args.overwrite,
    }
    selected = _each_run(args, lambda run, steps: ntk_request(run, **options))
    for run, steps in selected:
        result = ntk_trajectory(run, steps=steps, progress=not args.quiet, **options)
        _run_header(selected, run)
        if args.full:
            shown = result[["ntk_spectrum"]].isel(ntk_mode=slice(0, args.k))
            print(_eigen_table(shown, "ntk_spectrum", "ntk_mode"))
            factors = result["ntk_stability_factors"].values
            print(
                f"modes with factor 1 - ηλ/N below -1 (divergent) at the last step: "
                f"{int(np.sum(factors[-1] < -1))} of {factors.shape[-1]}"
            )
        else:
            print(_eigen_table(result, "ntk_eigenvalues", "ntk_eigen_index"))
        print(f"wrote {sibling_path(run, 'ntk')}")
    return 0


# ---------------------------------------------------------------------- detect / fit / plot
def _detect_options(args: argparse.Namespace) -> dict:
    if getattr(args, "tolerance", None) is not None and args.method != "lambda_jump":
        raise ValueError(
            f"--tolerance is the lambda_jump detector's threshold; it has no effect with "
            f"--method {args.method} (use --method lambda_jump, or drop --tolerance)."
        )
    options = {"method": args.method}
    for name in ("window", "tolerance", "variable"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    return options


def _onset_table(onsets) -> str:
    rows = []
    has_lambda = "eigen_index" in onsets["lambda_at_onset"].dims
    for i in range(onsets.sizes["onset"]):
        lam = onsets["lambda_at_onset"].isel(onset=i)
        lam1 = float(lam.isel(eigen_index=0)) if has_lambda else float(lam)
        rows.append(
            [
                str(i),
                str(int(onsets["onset_step"][i])),
                str(int(onsets["end_step"][i])),
                str(int(onsets["period_index"][i])),
                f"{lam1:.4g}",
                str(int(onsets["branches"][i])),
            ]
        )
    return _table(rows, ["onset", "onset_step", "end_step", "period", "λ1 at onset", "branches"])


def _cmd_detect(args: argparse.Namespace) -> int:
    from analysis._onsets import detect_onsets
    from analysis._threshold import threshold
    from training import write_sibling

    ds = open_run(args.run)
    onsets = detect_onsets(ds, **_detect_options(args))
    # A detection describes the whole run: a new one replaces the last one of this method.
    # Written before anything is printed, so a closed pipe (`| head`) cannot lose it.
    path = write_sibling(args.run, f"onsets-{args.method}", onsets, overwrite=True)
    print(f"{onsets.sizes['onset']} instabilities detected ({args.method})")
    if onsets.sizes["onset"]:
        print(_onset_table(onsets))
    if "hessian_eigenvalues" in ds and onsets.sizes["onset"]:
        th = threshold(onsets)
        eta = float(TrainConfig.from_json(ds.attrs["config"]).learning_rate)
        print(
            f"threshold λ_th = {th.mean:.4g} ± {th.std:.2g} (n = {th.count}); "
            f"2/η = {2 / eta:.4g}; λ_th·η/2 = {th.mean * eta / 2:.3f}"
        )
    print(f"wrote {path}")
    return 0


def _without_results(paths: Sequence[str]) -> list[str]:
    """``paths`` without the post-hoc result files (``RUN.<kind>.nc``) of runs among them,
    which a glob such as ``runs/lr/*.nc`` also matches; says what it skips."""
    results = set()
    for path in paths:
        try:
            results.update(Path(sibling).resolve() for sibling in sibling_files(Path(path)))
        except (OSError, ValueError):  # not a readable run: open_run says so, clearly
            continue
    kept = [path for path in paths if Path(path).resolve() not in results]
    if len(kept) < len(paths):
        print(
            f"skipping {len(paths) - len(kept)} post-hoc result file(s) of the runs given "
            "(RUN.<kind>.nc; they are merged into their run)",
            file=sys.stderr,
        )
    return kept


def _cmd_fit(args: argparse.Namespace) -> int:
    import json

    from analysis._plots import plot_threshold_scaling
    from analysis._scaling import collect_thresholds, fit_threshold_scaling

    paths = _without_results(args.runs)
    runs = [open_run(path) for path in paths]
    options = _detect_options(args)
    method = options.pop("method")
    points = collect_thresholds(runs, method=method, **options)
    fit = fit_threshold_scaling(
        points.learning_rates,
        points.thresholds,
        groups=points.groups,
        optimizer=points.optimizer,
        momentum=points.momentum,
        num_bootstrap=args.bootstrap,
    )
    print(
        _table(
            [
                [
                    f"{fit.exponent:.3f}",
                    f"[{fit.ci_low:.3f}, {fit.ci_high:.3f}]",
                    f"{fit.prefactor:.4g}",
                    f"{fit.r2:.3f}",
                    f"{fit.eos_ratio:.3f}",
                    str(len(points.thresholds)),
                    str(len(paths)),
                ]
            ],
            ["exponent α", "95% CI", "prefactor c", "R²", "λ_th/limit", "points", "runs"],
        )
    )
    print(
        "fit: λ_th = c·η^α (bootstrap over runs); λ_th/limit is the median ratio to the "
        "optimizer's stability limit (2/η for gd)"
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        **{k: float(v) for k, v in fit._asdict().items()},
        "method": method,
        "runs": [str(p) for p in paths],
        "learning_rates": np.asarray(points.learning_rates).tolist(),
        "thresholds": np.asarray(points.thresholds).tolist(),
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")
    if args.figure:
        fig = plot_threshold_scaling(
            points.learning_rates,
            points.thresholds,
            fit,
            optimizer=points.optimizer,
            momentum=points.momentum,
            groups=[Path(paths[g]).name for g in points.groups],
        )
        fig.savefig(args.figure, dpi=110)
        print(f"wrote {args.figure}")
    return 0


PLOT_KINDS = ("run", "threshold", "density", "projection", "section")


def _cmd_plot(args: argparse.Namespace) -> int:
    from analysis import _plots
    from analysis._onsets import detect_onsets

    if args.kind != "threshold" and len(args.runs) != 1:
        raise ValueError(f"plot {args.kind} takes one run file (got {len(args.runs)}).")
    output = Path(args.output or f"{Path(args.runs[0]).with_suffix('')}.{args.kind}.png")
    if args.kind == "threshold":
        return _cmd_fit(
            argparse.Namespace(
                **{**vars(args), "figure": str(output), "output": str(output.with_suffix(".json"))}
            )
        )
    ds = open_run(args.runs[0])
    if args.kind == "run":
        onsets = detect_onsets(ds, **_detect_options(args))
        zoom = tuple(args.zoom) if args.zoom else None
        fig = _plots.plot_run(ds, onsets=onsets, zoom=zoom)
    elif args.kind == "projection":
        if "grad_projection" not in ds:
            raise ValueError(
                "this run has no grad_projection: train with --hessian-top-k 3 --projection "
                "true, or run `dynloss hessian RUN.nc` first."
            )
        fig = _plots.plot_gradient_projection(ds)
    elif args.kind == "density":
        from analysis._trajectories import hessian_trajectory

        step = _one_step(args, ds)
        dens = hessian_trajectory(ds, steps=[step], k=1, projection=False, density=True)
        config = TrainConfig.from_json(ds.attrs["config"])
        eta = config.learning_rate
        if "learning_rate" in ds and step in ds["step"].values:  # η of that step (schedules)
            eta = float(ds["learning_rate"].sel(step=step))
        fig = _plots.plot_spectral_density(
            dens["hessian_density_grid"].values[0],
            dens["hessian_density"].values[0],
            learning_rate=eta,
            optimizer=config.optimizer,
            momentum=config.momentum,
            label=f"step {step}",
        )
    else:
        from analysis._trajectories import checkpoint_section

        step = _one_step(args, ds)
        if args.near is not None and args.near < 0:
            raise ValueError(f"--near must be a number of steps >= 0 (got {args.near}).")
        section = checkpoint_section(ds, step, extent=args.extent, window=args.near)
        fig = _plots.plot_landscape_section(section.surface, section.path)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    print(f"wrote {output}")
    return 0


def _one_step(args: argparse.Namespace, ds) -> int:
    saved = ds["checkpoint_step"].values
    if args.step is None:
        return int(saved[len(saved) // 2])
    return int(args.step)


def _add_detect_options(parser: argparse.ArgumentParser) -> None:
    from analysis._onsets import METHODS

    parser.add_argument(
        "--method",
        default="alternation",
        choices=METHODS,
        help="onset detector (default: alternation)",
    )
    parser.add_argument("--window", type=int, default=None, help="detector window (steps)")
    parser.add_argument(
        "--tolerance", type=float, default=None, help="lambda_jump tolerance (default 0.1)"
    )
    parser.add_argument("--variable", default=None, help="series to analyse (default: loss)")


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
        description="Train the spiral DCE run of the 2021 paper's Fig. 4 protocol, "
        "shortened (width 100, A=70, T=2000 instead of 5000, 28,000 steps, last period "
        "static), tracking Hessian λ1..λ3 every step; compute the NTK λ_max at the "
        "checkpoints, detect the bifurcation onsets and the threshold, and draw Γ, F, ΔF, "
        "accuracy, λ1..λ3 with λ_th and 2/η, and the NTK λ_max.",
        formatter_class=raw,
        epilog=_examples("""
            dynloss demo
            dynloss demo --steps 20000 --output-dir /tmp/demo --overwrite
        """),
    )
    demo.add_argument("--output-dir", default="runs/demo", help="default: runs/demo")
    demo.add_argument("--steps", type=int, default=None, help="shorter run (default 28000)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing demo.nc and its post-hoc results (make demo does)",
    )
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
            dynloss map runs/demo/demo.nc mypackage.diag:margin --steps 0:28000:2000
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
    _add_overwrite_option(mp, "RUN.<name>.nc")
    mp.set_defaults(func=_cmd_map)

    steps_help = "checkpoint steps: integers or start:stop[:stride] (default: all)"
    several_runs = (
        "run file(s) (.nc); several runs of one study (learning rates, amplitudes) share "
        "their compiled programs, compiled once"
    )
    hs = sub.add_parser(
        "hessian",
        help="top-k Hessian eigenvalues (and density) at saved checkpoints",
        description="Top-k of the Hessian of the loss each checkpoint minimised (Γ of that "
        "step), with residuals and the gradient projection, each checkpoint warm-started from "
        "the previous one's eigenvectors (--cold: Lanczos from scratch at every checkpoint); "
        "written to RUN.hessian.nc (merged by open_run).",
        formatter_class=raw,
        epilog=_examples("""
            dynloss hessian runs/demo/demo.nc --k 3
            dynloss hessian runs/demo/demo.nc --steps 8000:16001:1000 --density
            dynloss hessian runs/lr/*.nc --k 1
        """),
    )
    hs.add_argument("runs", nargs="+", metavar="run", help=several_runs)
    hs.add_argument("--steps", nargs="+", default=None, help=steps_help)
    hs.add_argument("--k", type=int, default=3, help="number of eigenvalues (default 3)")
    hs.add_argument("--density", action="store_true", help="also the SLQ spectral density")
    hs.add_argument(
        "--cold", action="store_true", help="cold Lanczos at every checkpoint (no warm start)"
    )
    hs.add_argument("--no-projection", action="store_true", help="skip the gradient projection")
    hs.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_overwrite_option(hs, "RUN.hessian.nc")
    hs.set_defaults(func=_cmd_hessian)

    nk = sub.add_parser(
        "ntk",
        help="NTK eigenvalues (top-k or full spectrum) at saved checkpoints",
        description="Eigenvalues of the empirical NTK of the training inputs, an (N·C)×(N·C) "
        "matrix: matrix-free top-k by default, or the full spectrum with the per-mode "
        "stability factors 1 − ηλ/N (--full); written to RUN.ntk.nc.",
        formatter_class=raw,
        epilog=_examples("""
            dynloss ntk runs/demo/demo.nc --k 1 --steps 0:28000:4000
            dynloss ntk runs/demo/demo.nc --steps 20000 28000 --full --overwrite
            dynloss ntk runs/big.nc --full --subset 100
        """),
    )
    nk.add_argument("runs", nargs="+", metavar="run", help=several_runs)
    nk.add_argument("--steps", nargs="+", default=None, help=steps_help)
    nk.add_argument("--k", type=int, default=3, help="number of eigenvalues (default 3)")
    nk.add_argument("--full", action="store_true", help="form and diagonalise the whole kernel")
    nk.add_argument("--eigenvectors", action="store_true", help="with --full, store eigenvectors")
    nk.add_argument(
        "--subset",
        type=int,
        default=None,
        help="use N training samples evenly spaced through the training set",
    )
    nk.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_overwrite_option(nk, "RUN.ntk.nc")
    nk.set_defaults(func=_cmd_ntk)

    dt = sub.add_parser(
        "detect",
        help="detect bifurcation onsets and the curvature threshold",
        description="Detect the instabilities (period-doubling cascades) of a run, print onset "
        "and end steps, period, λ1 at onset and branch count, and the threshold λ_th when "
        "Hessian eigenvalues are present; written to RUN.onsets-METHOD.nc.",
        formatter_class=raw,
        epilog=_examples("""
            dynloss detect runs/demo/demo.nc
            dynloss detect runs/demo/demo.nc --method lambda_jump --tolerance 0.1
            dynloss detect runs/demo/demo.nc --method branches --variable train_accuracy
        """),
    )
    dt.add_argument("run", help="run file (.nc)")
    _add_detect_options(dt)
    dt.set_defaults(func=_cmd_detect)

    ft = sub.add_parser(
        "fit",
        help="fit the threshold's scaling with the learning rate across runs",
        description="Detect onsets in every run, take λ_th at each, and fit λ_th = c·η^α in "
        "log-log space with a bootstrap over runs; prints the fit and writes it as JSON.",
        formatter_class=raw,
        epilog=_examples("""
            dynloss fit runs/lr/*.nc
            dynloss fit runs/lr/*.nc --method lambda_jump --output fit.json --figure fit.png
        """),
    )
    ft.add_argument("runs", nargs="+", help="run files (.nc) at several learning rates")
    _add_detect_options(ft)
    ft.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    ft.add_argument("--output", default="threshold_fit.json", help="JSON file of the fit")
    ft.add_argument("--figure", default=None, help="also draw the log-log figure here")
    ft.set_defaults(func=_cmd_fit)

    pl = sub.add_parser(
        "plot",
        help="draw a figure: run, threshold, density, projection, section",
        description="run: the 2021 Fig. 4 panel set with onsets; threshold: λ_th vs η with the "
        "fit and 2/η (several runs); density: SLQ spectral density at a checkpoint; "
        "projection: gradient components along the top Hessian eigenvectors; section: the loss "
        "on the plane of the top-2 Hessian eigenvectors at a checkpoint, with the trajectory.",
        formatter_class=raw,
        epilog=_examples("""
            dynloss plot run runs/demo/demo.nc --zoom 11500 12500
            dynloss plot threshold runs/lr/*.nc --output threshold.png
            dynloss plot density runs/demo/demo.nc --step 12000
            dynloss plot section runs/demo/demo.nc --step 12000 --extent 0.5 --near 2000
        """),
    )
    pl.add_argument("kind", choices=PLOT_KINDS, help="which figure")
    pl.add_argument("runs", nargs="+", help="run file(s)")
    pl.add_argument("--output", default=None, help="PNG path (default: RUN.KIND.png)")
    pl.add_argument("--zoom", nargs=2, type=int, default=None, help="run: zoom on steps A B")
    pl.add_argument("--step", type=int, default=None, help="density/section: checkpoint step")
    pl.add_argument("--extent", type=float, default=1.0, help="section: half-width of the plane")
    pl.add_argument(
        "--near",
        type=int,
        default=None,
        help="section: project the checkpoints within this many steps",
    )
    pl.add_argument("--bootstrap", type=int, default=1000, help="threshold: bootstrap resamples")
    _add_detect_options(pl)
    pl.set_defaults(func=_cmd_plot)

    from analysis._sweep_cli import register

    register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from analysis._map import DiagnosticError

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: files are written first
        with contextlib.suppress(OSError, ValueError):  # no second error at Python's exit flush
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE
    except KeyboardInterrupt:
        print(
            f"\ndynloss {args.command}: interrupted; the files written before are intact (a run "
            "file records how far it got: dynloss info RUN.nc).",
            file=sys.stderr,
        )
        return 130
    except (ValueError, OSError, DiagnosticError) as error:
        # OSError: missing, existing, unreadable or unwritable files (the message names them).
        print(f"dynloss {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
