"""``dynloss sweep`` and ``dynloss phase``: registered on the main parser by :func:`register`.

A grid file is TOML with a ``[base]`` table of ``TrainConfig`` fields, a ``[grid]`` table of
lists (keys are ``TrainConfig`` fields or ``width``) and an optional ``[sweep]`` table of
:func:`analysis.sweep` options (``summary_every``, ``batch_size``, ``lanes``,
``stop_last_period``)::

    [base]
    loss = "dce"
    steps = 3000
    [grid]
    amplitude = [1, 5, 10, 30]
    period = [50, 200, 1000]
    seed = [0, 1, 2, 3, 4]
    [sweep]
    stop_last_period = true
"""

from __future__ import annotations

import argparse
import shlex
import tomllib
from pathlib import Path
from typing import Any

from analysis._cli import _examples
from training import TrainConfig

SWEEP_OPTIONS = ("summary_every", "batch_size", "lanes", "stop_last_period")


def read_grid_file(path: str | Path) -> tuple[TrainConfig, dict[str, list], dict[str, Any]]:
    """``(base_config, grid, sweep_options)`` from a grid TOML file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {str(path)!r} does not exist; see examples/*.toml.")
    tables = tomllib.loads(path.read_text())
    unknown = sorted(set(tables) - {"base", "grid", "sweep"})
    if unknown:
        raise ValueError(
            f"grid file {str(path)!r} has unknown table(s) {unknown}; allowed tables are "
            "[base], [grid] and [sweep]."
        )
    if "grid" not in tables or not tables["grid"]:
        raise ValueError(f"grid file {str(path)!r} needs a non-empty [grid] table of lists.")
    options = dict(tables.get("sweep", {}))
    bad = sorted(set(options) - set(SWEEP_OPTIONS))
    if bad:
        raise ValueError(
            f"[sweep] table has unknown option(s) {bad}; allowed are {list(SWEEP_OPTIONS)}."
        )
    return TrainConfig.from_dict(tables.get("base", {})), dict(tables["grid"]), options


def _command(args: argparse.Namespace) -> str:
    """The ``dynloss sweep`` command line these arguments stand for (recorded in the attrs)."""
    words = ["dynloss", "sweep", args.grid]
    for name in (
        "output",
        "run_files",
        "workers",
        "scheduler",
        "batch_size",
        "summary_every",
        "lanes",
    ):
        value = getattr(args, name)
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    flags = ["--overwrite"] if args.overwrite else []
    return shlex.join(words + flags + (["--quiet"] if args.quiet else []))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells whether ``path`` was written: (inode, size, mtime), None if absent."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _cmd_sweep(args: argparse.Namespace) -> int:
    from analysis._phase import STAT, seed_statistics
    from analysis._sweep import check_grid, run_file_paths, sweep

    base, grid, options = read_grid_file(args.grid)
    for name in ("summary_every", "batch_size", "lanes"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.output is None:
        args.output = str(Path("sweeps") / f"{Path(args.grid).stem}.nc")
    output = args.output
    # What this call writes is reported from the files themselves: an existing output of the
    # same sweep and run files already complete are left as they are.
    targets = [Path(output)]
    if args.run_files:
        targets += run_file_paths(check_grid(base, grid), args.run_files)
    before = {path: _stamp(path) for path in targets}
    ds = sweep(
        base,
        grid,
        output=output,
        run_files=args.run_files,
        overwrite=args.overwrite,
        scheduler=args.scheduler,
        workers=args.workers,
        progress=not args.quiet,
        command=_command(args),
        **options,
    )
    written = {path for path in targets if _stamp(path) not in (None, before[path])}
    runs = int(ds["diverged"].size)
    print(f"{runs} runs, {int(ds['diverged'].sum())} diverged")
    keep = [d for d in ds["final_val_accuracy"].dims if d != "seed"]
    stats = seed_statistics(ds, "val_accuracy", keep) if keep else None
    if stats is not None and stats.sel({STAT: "mean"}).size <= 40:
        table = stats.sel({STAT: "mean"}).to_dataframe().reset_index()
        print("final val accuracy, seed mean:")
        print(table.drop(columns=[STAT]).to_string(index=False))
    if args.run_files:
        folder = args.run_files.rstrip("/") + "/"
        count = len(written - {Path(output)})
        if count == 0:
            print(f"{folder} already holds the {runs} finished run files; left unchanged")
        elif count < runs:
            print(f"wrote {folder} ({count} of {runs} run files; the others were finished already)")
        else:
            print(f"wrote {folder} ({count} run files)")
    if Path(output) in written:
        print(f"wrote {output}")
    else:
        print(f"{output} already holds this sweep; left unchanged")
    return 0


def _cmd_phase(args: argparse.Namespace) -> int:
    import xarray as xr

    from analysis._phase import format_phase_table, phase_diagram, plot_phase_diagram

    if not Path(args.sweep).is_file():
        raise FileNotFoundError(
            f"sweep file {args.sweep!r} does not exist; make one with `dynloss sweep GRID.toml`."
        )
    with xr.open_dataset(args.sweep) as ds:
        ds = ds.load()
    selection = {}
    for item in args.sel or ():
        key, sep, value = item.partition("=")
        if not sep or key not in ds.coords:
            raise ValueError(f"--sel must be DIM=VALUE with DIM a sweep dimension (got {item!r}).")
        kind = ds[key].dtype.kind
        try:
            chosen = value if kind in "OUS" else ds[key].dtype.type(value)
        except ValueError:
            chosen = None
        if chosen is None or chosen not in ds[key].values:
            raise ValueError(
                f"--sel {item!r}: {value!r} is not a value of {key!r}; its values are "
                f"{ds[key].values.tolist()}."
            )
        selection[key] = chosen
    if selection:
        ds = ds.sel(selection)
    phase = phase_diagram(ds, args.metric, args.x, args.y)
    print(format_phase_table(phase))
    if args.output:
        fig = plot_phase_diagram(phase)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.output, dpi=120)
        print(f"wrote {args.output}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` and ``phase`` subcommands to the ``dynloss`` parser."""
    raw = argparse.RawDescriptionHelpFormatter
    sw = subparsers.add_parser(
        "sweep",
        help="train every combination of a grid of configurations",
        description="Train every combination of the [grid] table of GRID.toml on top of its "
        "[base] table and write one netCDF dataset (dims = grid keys) of final metrics, "
        "divergence flags and per-step summaries. Re-running an interrupted sweep skips the "
        "batches already done (kept in OUTPUT.parts/). Existing run files of the same runs, "
        "finished, are kept; files of other runs are refused unless --overwrite.",
        formatter_class=raw,
        epilog=_examples("""
            dynloss sweep examples/sweep_laptop.toml --output sweeps/laptop.nc
            dynloss sweep examples/sweep_laptop.toml --workers 2
            dynloss sweep examples/sweep_width_2025.toml --run-files runs/width/
            dynloss sweep examples/sweep_phase_2021.toml --scheduler tcp://scheduler-host:8786
        """),
    )
    sw.add_argument("grid", help="grid file (.toml) with [base], [grid] and optional [sweep]")
    sw.add_argument("--output", default=None, help="sweep dataset (default sweeps/GRID.nc)")
    sw.add_argument("--run-files", default=None, help="folder for every run's own run file")
    sw.add_argument("--workers", type=int, default=None, help="local dask worker processes")
    sw.add_argument("--scheduler", default=None, help="dask scheduler address (tcp://host:port)")
    sw.add_argument("--batch-size", type=int, default=None, help="runs per batch (default 50)")
    sw.add_argument("--summary-every", type=int, default=None, help="steps between summaries")
    sw.add_argument("--lanes", type=int, default=None, help="runs vmapped in lockstep (1)")
    sw.add_argument(
        "--overwrite",
        action="store_true",
        help="replace run files of other runs in --run-files and an --output of another sweep",
    )
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=_cmd_sweep)

    ph = subparsers.add_parser(
        "phase",
        help="phase diagram (seed mean ± sem) of a sweep",
        description="Average a final metric of a sweep over seeds on the (Y, X) grid, print "
        "the table of mean ± standard error, and draw it with --output.",
        formatter_class=raw,
        epilog=_examples("""
            dynloss phase data/sweep_laptop.nc
            dynloss phase data/sweep_laptop.nc --metric train_accuracy --output phase.png
            dynloss phase sweeps/width.nc --x width --y loss
            dynloss phase sweeps/big.nc --sel width=100 --output fig3.png
        """),
    )
    ph.add_argument("sweep", help="sweep dataset (.nc) written by dynloss sweep")
    ph.add_argument("--metric", default="val_accuracy", help="final metric (val_accuracy)")
    ph.add_argument("--x", default="period", help="dimension across (default period)")
    ph.add_argument("--y", default="amplitude", help="dimension down (default amplitude)")
    ph.add_argument("--sel", nargs="+", default=None, help="DIM=VALUE selections first")
    ph.add_argument("--output", default=None, help="figure path (.png, .pdf)")
    ph.set_defaults(func=_cmd_phase)
