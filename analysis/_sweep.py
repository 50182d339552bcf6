"""Sweeps: every combination of a grid of ``TrainConfig`` values, as one tidy ``xarray.Dataset``.

``sweep(base, grid)`` expands the grid (keys are ``TrainConfig`` field names; ``"width"`` is
shorthand for ``hidden_widths=(w,)``), groups the runs that share a shape (they may differ only
in ``training._batched.BATCHED_FIELDS``), cuts each group into batches of ``batch_size`` runs and
trains each batch with ``training._batched.train_batch`` — in this process, or as one
``dask.distributed`` task per batch on a cluster. The batches are the same on both paths, so the
two give identical datasets.

Restarting: with ``output`` (or ``run_files``) given, every finished batch is written to
``OUTPUT.parts/`` (``RUN_FILES/sweep.parts/``); a re-run of the same sweep skips the batches whose
part file exists and merges everything at the end. A part's name hashes its runs' configurations
and every option that changes its content (``summary_every``, ``lanes``, whether run files are
written), so a re-run with other options recomputes instead of mixing. The part folder is
removed once the merged dataset is written.

Run files: a run's file that already holds that run, finished (same configuration, status
``complete`` or ``diverged``), is kept as it is; one left ``running`` or ``failed`` by an
interrupted batch of the same run is written again; any other existing file is refused with
``FileExistsError`` (checked for every run before anything runs) unless ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from curvature._checks import integer_at_least
from training import TrainConfig
from training._batched import (
    DEFAULT_LANES,
    FINAL_VARIABLES,
    SUMMARY_VARIABLES,
    BatchResult,
    check_batch,
    default_summary_every,
    shape_key,
    train_batch,
)
from training._runfile import STEP_VARIABLES, host, package_version, write_atomic

KEPT_STATUSES = ("complete", "diverged")
"""Run-file statuses of a finished run: a sweep keeps such a file of the same run as it is."""

SUMMARY_STEP = "summary_step"
WIDTH = "width"
SEED = "seed"
DEFAULT_BATCH_SIZE = 50
"""Runs per batch (one compiled program, one dask task, one restart unit); see the README."""

SweepProgress = Callable[[int, int], None]
"""``progress(runs_done, runs_total)``."""

_FINAL_ATTRS = {
    "final_loss": "loss minimised at the end (dynamical, Γ of step `steps`) of the final params",
    "final_static_loss": "static training loss of the final parameters",
    "final_train_accuracy": "training accuracy of the final parameters",
    "final_val_loss": "static validation loss of the final parameters",
    "final_val_accuracy": "validation accuracy of the final parameters",
}


class _Batch(NamedTuple):
    index: int
    runs: list[int]  # flat indices into the grid
    configs: list[TrainConfig]
    run_files: list[Path | None] | None  # None entries: the run's file is kept as it is
    name: str


def _values(key: str, values: Any) -> list:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValueError(
            f"grid[{key!r}] must be a list of values (got {values!r}); write [{values!r}] for "
            "a single value."
        )
    values = list(values)
    if not values:
        raise ValueError(f"grid[{key!r}] must hold at least one value (got an empty list).")
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"grid[{key!r}] has repeated values {values}; each value must be unique.")
    return values


def check_grid(base: TrainConfig, grid: Mapping[str, Any]) -> dict[str, list]:
    """Validate a grid against ``base``; returns ``{key: values}`` in the given key order."""
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base_config must be a TrainConfig (got {type(base).__name__}).")
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(
            "grid must be a non-empty mapping {field: [values, ...]} (got "
            f"{grid!r}); e.g. {{'amplitude': [1, 10], 'seed': range(5)}}."
        )
    fields = set(base.to_dict())
    out = {}
    for key, values in grid.items():
        if key == "hidden_widths" and WIDTH in grid:
            raise ValueError(
                "grid keys 'width' and 'hidden_widths' set the same field; use 'width' for one "
                "hidden layer (hidden_widths=(w,)) or 'hidden_widths' for whole architectures."
            )
        if key in (
            "output",
            "hessian_top_k",
            "ntk_top_k",
            "projection",
            "hessian_tol",
            "track_every",
        ):
            raise ValueError(
                f"grid key {key!r} cannot be swept (per-run files go to run_files=DIR; "
                "curvature tracking is off in sweeps)."
            )
        if key != WIDTH and key not in fields:
            raise ValueError(
                f"grid key {key!r} is not a TrainConfig field (nor 'width'); known fields are "
                f"{sorted(fields - {'output'})}."
            )
        out[key] = _values(key, values)
        _check_distinct(base, key, out[key])
    return out


def _check_distinct(base: TrainConfig, key: str, values: list) -> None:
    """Refuse values that give the same configuration (1 and 1.0: two identical runs)."""
    stored = []
    for value in values:
        try:
            if key == WIDTH:
                stored.append(base.replace(hidden_widths=(value,)).hidden_widths)
            else:
                stored.append(getattr(base.replace(**{key: value}), key))
        except (TypeError, ValueError):  # valid only with other keys' values: checked later
            stored.append(repr(value))
    if len(set(map(repr, stored))) != len(stored):
        raise ValueError(
            f"grid[{key!r}] has values that give the same configuration ({values} are stored "
            f"as {stored}); each value must be distinct."
        )


def _check_stop_last_period(
    base: TrainConfig, grid: Mapping[str, list], stop_last_period: Any
) -> bool:
    if not isinstance(stop_last_period, bool | np.bool_):
        raise ValueError(
            f"stop_last_period must be True or False (got {stop_last_period!r}); in a grid "
            "file write stop_last_period = true or false, without quotes."
        )
    if stop_last_period and "stop_after" in grid:
        raise ValueError(
            "stop_last_period=True sets every run's stop_after to steps - period, which would "
            f"replace the grid's stop_after values {grid['stop_after']}; drop the grid key "
            "'stop_after' or set stop_last_period=False."
        )
    if stop_last_period and base.stop_after is not None:
        raise ValueError(
            "stop_last_period=True sets every run's stop_after to steps - period, which would "
            f"replace the base config's stop_after={base.stop_after}; set base stop_after=None "
            "or stop_last_period=False."
        )
    return bool(stop_last_period)


def _config(base: TrainConfig, combo: dict[str, Any], stop_last_period: bool) -> TrainConfig:
    changes = {k: v for k, v in combo.items() if k != WIDTH}
    if WIDTH in combo:
        changes["hidden_widths"] = (combo[WIDTH],)
    changes = {k: v.item() if isinstance(v, np.generic) else v for k, v in changes.items()}
    config = base.replace(**changes)
    if stop_last_period:
        config = config.replace(stop_after=max(int(config.steps - config.period), 0))
    return config


def expand(
    base: TrainConfig, grid: Mapping[str, Any], *, stop_last_period: bool = False
) -> list[TrainConfig]:
    """Every combination of ``grid`` applied to ``base``, in C order of the grid's keys.

    ``stop_last_period=True`` sets each run's ``stop_after`` to ``steps − period``; it cannot be
    combined with a ``stop_after`` grid key or a base ``stop_after`` (it would replace them).
    """
    grid = check_grid(base, grid)
    stop_last_period = _check_stop_last_period(base, grid, stop_last_period)
    keys = list(grid)
    return [
        _config(base, dict(zip(keys, combo, strict=True)), stop_last_period)
        for combo in itertools.product(*grid.values())
    ]


def _label(value: Any) -> str:
    """A grid value as text: ``100x100`` for the architecture ``hidden_widths=[100, 100]``."""
    if isinstance(value, list | tuple):
        return "x".join(map(str, value))
    return str(value)


def _run_name(grid: dict[str, list], combo: tuple) -> str:
    return "_".join(f"{k}={_label(v)}" for k, v in zip(grid, combo, strict=True)) + ".nc"


def run_file_paths(grid: Mapping[str, list], folder: str | Path) -> list[Path]:
    """The run file of every combination of a checked ``grid`` (see :func:`check_grid`) in
    ``folder``, in the order of :func:`expand`: ``key=value_key=value....nc``."""
    folder = Path(folder)
    return [folder / _run_name(dict(grid), combo) for combo in itertools.product(*grid.values())]


def run_file_state(path: Path, config: TrainConfig) -> str:
    """What the file at ``path`` holds for the run ``config`` of a sweep.

    ``"absent"``; ``"kept"`` (this run, finished: same configuration apart from ``output``,
    status in :data:`KEPT_STATUSES`); ``"partial"`` (this run, left ``running`` or ``failed`` by
    an interrupted batch); ``"other"`` (another run, or not a readable run file).
    """
    if not path.exists():
        return "absent"
    if path.is_dir():
        raise IsADirectoryError(
            f"run file {str(path)!r} is a directory; move it away or choose another run_files "
            "folder."
        )
    try:
        with xr.open_dataset(path) as ds:
            attrs = dict(ds.attrs)
        stored = TrainConfig.from_json(str(attrs["config"]))
    except (OSError, ValueError, RuntimeError, KeyError, TypeError):
        return "other"
    if "format_version" not in attrs or stored.replace(output=None) != config.replace(output=None):
        return "other"
    return "kept" if attrs.get("status") in KEPT_STATUSES else "partial"


def _check_run_files(paths: list[Path], configs: list[TrainConfig], overwrite: bool) -> list[str]:
    """The state of every run file (see :func:`run_file_state`); refuses others' files now."""
    states = [run_file_state(p, c) for p, c in zip(paths, configs, strict=True)]
    others = [str(p) for p, state in zip(paths, states, strict=True) if state == "other"]
    if others and not overwrite:
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        raise FileExistsError(
            f"run file {others[0]!r}{more} already exists and does not hold this sweep's run "
            "(another configuration, or not a run file); nothing was written. Choose another "
            "run_files folder, or pass overwrite=True (--overwrite on the command line) to "
            "replace it."
        )
    return states


def plan_batches(
    configs: list[TrainConfig],
    batch_size: int,
    run_files: list[Path | None] | None = None,
    *,
    options: Mapping[str, Any] | None = None,
) -> list[_Batch]:
    """Group runs by shape (first appearance order) and cut each group into batches.

    A batch's name (its part file) hashes its configurations and ``options``: everything else
    that changes the part's content (summary interval, lanes, run files on or off).
    """
    groups: dict[TrainConfig, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(shape_key(c), []).append(i)
    batches = []
    for members in groups.values():
        for lo in range(0, len(members), batch_size):
            runs = members[lo : lo + batch_size]
            chosen = [configs[i] for i in runs]
            text = json.dumps(
                {"configs": [c.to_dict() for c in chosen], "options": dict(options or {})},
                sort_keys=True,
            )
            digest = hashlib.sha1(text.encode()).hexdigest()[:12]
            batches.append(
                _Batch(
                    len(batches),
                    runs,
                    chosen,
                    None if run_files is None else [run_files[i] for i in runs],
                    f"batch-{len(batches):05d}-{digest}.nc",
                )
            )
    return batches


def _part_dataset(result: BatchResult, runs: list[int]) -> xr.Dataset:
    data = {name: (("run",), values) for name, values in result.final.items()}
    data["diverged"] = (("run",), result.diverged)
    data["diverged_at_step"] = (("run",), result.diverged_at_step)
    for name, values in result.summaries.items():
        data[name] = (("run", SUMMARY_STEP), values)
    return xr.Dataset(
        data,
        coords={"run": np.asarray(runs), SUMMARY_STEP: result.summary_steps},
        attrs={"host": host()},  # the worker's: a cluster's workers may differ
    )


def _run_batch(
    configs_json: list[str],
    summary_every: int,
    run_files: list[str | None] | None,
    lanes: int,
    runs: list[int],
) -> xr.Dataset:
    """One batch, as a small Dataset on a ``run`` dim (the unit a dask task returns).

    The run files were checked by :func:`sweep` (absent, partial of the same run, or replaced
    with overwrite), hence ``overwrite=True``.
    """
    configs = [TrainConfig.from_json(text) for text in configs_json]
    result = train_batch(
        configs, summary_every=summary_every, run_files=run_files, overwrite=True, lanes=lanes
    )
    return _part_dataset(result, runs)


def _load_part(path: Path) -> xr.Dataset:
    with xr.open_dataset(path) as ds:
        return ds.load()


def _progress_bar(total: int) -> tuple[SweepProgress, Callable[[], None]]:
    from analysis._progress import start_bar

    bar, task = start_bar("sweep", total, detail="runs")
    return (lambda done, total_runs: bar.update(task, completed=done, total=total_runs)), bar.stop


def sweep(
    base_config: TrainConfig,
    grid: Mapping[str, Any],
    *,
    output: str | Path | None = None,
    run_files: str | Path | None = None,
    overwrite: bool = False,
    summary_every: int | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lanes: int | None = None,
    stop_last_period: bool = False,
    progress: bool | SweepProgress = False,
    command: str | None = None,
) -> xr.Dataset:
    """Train every combination of ``grid`` on top of ``base_config``; one Dataset of results.

    Args:
      base_config: the fields every run shares (curvature tracking off, ``output`` None).
      grid: ``{field: [values, ...]}``; keys are ``TrainConfig`` field names, plus ``"width"``
        for ``hidden_widths=(w,)``. Each key becomes a dimension with the values as given
        (``hidden_widths`` values, whole architectures such as ``[100, 100]``, as the strings
        ``"100x100"``, also in run file names). The output, tracking and ``track_every``
        fields cannot be swept (tracking is off in sweeps).
      output: write the Dataset there (netCDF); finished batches go to ``OUTPUT.parts/`` so an
        interrupted sweep re-run with the same arguments skips them. An existing ``output``
        of the same sweep (same base config, grid, summary interval and stop_last_period) is
        returned as it is (after writing the requested run files that are missing); one of
        another sweep is refused unless ``overwrite``.
      run_files: a folder; each run's full run file (the format of ``training.train``) is
        written there as ``key=value_....nc``. A file that already holds that run, finished,
        is kept; one left unfinished by an interrupted sweep is written again; any other
        existing file is refused (``FileExistsError``, before anything runs) unless
        ``overwrite``.
      overwrite: replace existing run files that hold other runs (deleting their post-hoc
        siblings, as ``training.train`` does) and an ``output`` holding another sweep.
      summary_every: interval of the per-step summaries (a multiple of ``eval_every``; default
        about 100 summary steps per run).
      scheduler: address of a ``dask.distributed`` scheduler (``"tcp://host:8786"``): one task
        per batch. Run files and parts are written where the workers and this process can see
        them (a shared filesystem for ``run_files``; parts are written by this process).
      workers: start a ``LocalCluster(n_workers=workers, threads_per_worker=1,
        processes=True)`` for the sweep (one process per core is the measured fastest layout).
      batch_size: runs per batch (one compiled program, one task, one restart unit).
      lanes: runs advanced in lockstep by ``jax.vmap`` within a batch (default
        ``training._batched.DEFAULT_LANES``, measured fastest).
      stop_last_period: set each run's ``stop_after`` to ``steps − period`` (the papers'
        protocol: the last period without oscillation); True or False, and not together with
        a ``stop_after`` grid key or base value.
      progress: True for a rich progress bar over runs with ETA, or a callback
        ``progress(runs_done, runs_total)``.
      command: recorded in the ``command`` attr (default: this process's command line).

    Returns:
      A Dataset with the grid keys as dims (coordinates as given) and variables
      ``final_loss, final_static_loss, final_train_accuracy, final_val_loss,
      final_val_accuracy`` (NaN for diverged runs), ``diverged`` (bool),
      ``diverged_at_step`` (-1 if not) and the per-step summaries ``loss, static_loss,
      train_accuracy, val_loss, val_accuracy, grad_norm`` on the extra dim ``summary_step``
      (``summary_loss`` where ``loss`` is a grid key, and so on: see :func:`summary_name`).
      Attrs: ``base_config`` (JSON), ``grid`` (JSON), ``command``, ``summary_every``,
      ``batch_size``, ``lanes``, ``dynloss_version``, ``dtype``, ``host`` (where the runs
      were computed, :func:`training._runfile.host`; the distinct hosts joined by " | " when
      a cluster's workers differ).
    """
    grid = check_grid(base_config, grid)
    if base_config.output is not None:
        raise ValueError(
            f"base_config.output must be None in a sweep (got {base_config.output!r}); give "
            "run_files=DIR for per-run files and output=PATH for the sweep's dataset."
        )
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False (got {overwrite!r}).")
    batch_size = integer_at_least("batch_size", batch_size, 1)
    workers = integer_at_least("workers", workers, 1, optional=True)
    lanes = integer_at_least("lanes", DEFAULT_LANES if lanes is None else lanes, 1)
    if scheduler is not None and workers is not None:
        raise ValueError(
            "give either scheduler (an existing cluster) or workers (a local cluster), not both."
        )
    if scheduler is not None and not isinstance(scheduler, str):
        raise ValueError(
            f"scheduler must be an address string like 'tcp://host:8786' (got {scheduler!r})."
        )
    configs = expand(base_config, grid, stop_last_period=stop_last_period)
    stop_last_period = bool(stop_last_period)
    if summary_every is None:
        summary_every = default_summary_every(configs[0])
    for c in configs:  # every batch is valid before anything runs
        check_batch([c], summary_every, lanes)
    shape = tuple(len(v) for v in grid.values())
    names: list[Path | None] | None = None
    if run_files is not None:
        folder = Path(run_files)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(
                f"run_files {str(folder)!r} is a file; give a folder for the runs' files."
            )
        paths = run_file_paths(grid, folder)
        states = _check_run_files(paths, configs, overwrite)  # before anything is written
        names = [None if s == "kept" else p for p, s in zip(paths, states, strict=True)]
    attrs = {
        "title": "dynloss sweep",
        "base_config": base_config.to_json(),
        "grid": json.dumps({k: [_jsonable(v) for v in vs] for k, vs in grid.items()}),
        "command": command if command is not None else shlex.join([sys.executable, *sys.argv]),
        "summary_every": np.int64(summary_every),
        "stop_last_period": int(stop_last_period),
        "batch_size": np.int64(batch_size),
        "lanes": np.int64(lanes),
        "dynloss_version": package_version(),
    }
    options = {"summary_every": summary_every, "lanes": lanes, "run_files": names is not None}
    batches = plan_batches(configs, batch_size, names, options=options)
    out_path = None if output is None else Path(output)
    existing = None if out_path is None else _existing_output(out_path, attrs, overwrite)

    callback, close = None, None
    if progress is True:
        callback, close = _progress_bar(len(configs))
    elif callable(progress):
        callback = progress
    if existing is not None:  # the same sweep: kept as it is, missing run files are written
        todo = [b for b in batches if _writes_files(b)]
        try:
            _execute(todo, summary_every, lanes, None, scheduler, workers, callback)
        finally:
            if close is not None:
                close()
        return existing
    parts_dir = None
    if out_path is not None:
        parts_dir = out_path.with_name(out_path.name + ".parts")
    elif run_files is not None:
        parts_dir = Path(run_files) / "sweep.parts"
    try:
        parts = _execute(batches, summary_every, lanes, parts_dir, scheduler, workers, callback)
    finally:
        if close is not None:
            close()
    ds = _assemble(parts, grid, shape, configs[0], attrs)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(ds, out_path)
    if parts_dir is not None and parts_dir.exists():
        shutil.rmtree(parts_dir)
    return ds


SAME_SWEEP_ATTRS = ("base_config", "grid", "summary_every", "stop_last_period")
"""Attributes that make an existing ``output`` the same sweep (returned as it is)."""


def _existing_output(path: Path, attrs: dict[str, Any], overwrite: bool) -> xr.Dataset | None:
    """The dataset at ``path`` if it holds this sweep; None if absent (or replaced, with
    ``overwrite``); ``FileExistsError`` if it holds something else."""
    if not path.exists():
        return None
    if path.is_dir():
        raise IsADirectoryError(f"output {str(path)!r} is a directory; give a file path.")
    try:
        existing = _load_part(path)
    except (OSError, ValueError, RuntimeError):
        existing = None
    if existing is not None and all(
        _same_attr(k, existing.attrs.get(k), attrs[k]) for k in SAME_SWEEP_ATTRS
    ):
        return existing
    if overwrite:
        return None
    raise FileExistsError(
        f"output {str(path)!r} exists and holds a different sweep (base config, grid, "
        "summary_every or stop_last_period differ, or it is not a sweep dataset); choose "
        "another path, delete it, or pass overwrite=True (--overwrite on the command line) "
        "to replace it."
    )


def _same_attr(name: str, stored: Any, wanted: Any) -> bool:
    """Whether an existing output's attribute ``name`` says the same as this sweep's: the base
    configuration compared as a configuration (JSON text may differ, "1" against "1.0")."""
    if name == "base_config":
        try:
            return TrainConfig.from_json(str(stored)) == TrainConfig.from_json(str(wanted))
        except (TypeError, ValueError, KeyError):
            return False
    return str(stored) == str(wanted)


def _writes_files(batch: _Batch) -> bool:
    """Whether ``batch`` has run files to write (None entries are kept files)."""
    return batch.run_files is not None and any(p is not None for p in batch.run_files)


def _jsonable(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _execute(
    batches: list[_Batch],
    summary_every: int,
    lanes: int,
    parts_dir: Path | None,
    scheduler: str | None,
    workers: int | None,
    callback: SweepProgress | None,
) -> list[xr.Dataset]:
    """The part of every batch: loaded from ``parts_dir`` where done, computed otherwise.

    A part on disk counts as done only when its batch has no run file left to write (the
    files of a finished batch are complete, so this recomputes only batches whose files were
    removed or never written, e.g. into another run_files folder).
    """
    parts: dict[int, xr.Dataset] = {}
    todo = []
    if parts_dir is not None:
        parts_dir.mkdir(parents=True, exist_ok=True)
    for batch in batches:
        path = None if parts_dir is None else parts_dir / batch.name
        if path is not None and path.exists() and not _writes_files(batch):
            parts[batch.index] = _load_part(path)
        else:
            todo.append(batch)
    total = sum(len(b.runs) for b in batches)
    done = sum(len(b.runs) for b in batches if b.index in parts)
    if callback is not None:
        callback(done, total)

    def finish(batch: _Batch, part: xr.Dataset) -> None:
        nonlocal done
        parts[batch.index] = part
        if parts_dir is not None:
            write_atomic(part, parts_dir / batch.name)
        done += len(batch.runs)
        if callback is not None:
            callback(done, total)

    def arguments(batch: _Batch) -> tuple:
        files = batch.run_files
        return (
            [c.to_json() for c in batch.configs],
            summary_every,
            None if files is None else [None if p is None else str(p) for p in files],
            lanes,
            batch.runs,
        )

    if scheduler is None and workers is None:
        for batch in todo:
            finish(batch, _run_batch(*arguments(batch)))
    elif todo:
        from dask.distributed import Client, LocalCluster, as_completed

        cluster = None
        if workers is not None:
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
        client = Client(cluster if cluster is not None else scheduler)
        try:
            futures = {
                client.submit(_run_batch, *arguments(b), key=f"dynloss-{b.name}", pure=False): b
                for b in todo
            }
            for future in as_completed(futures):
                finish(futures[future], future.result())
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    return [parts[b.index] for b in batches]


def _assemble(
    parts: list[xr.Dataset],
    grid: dict[str, list],
    shape: tuple[int, ...],
    first: TrainConfig,
    attrs: dict[str, Any],
) -> xr.Dataset:
    # Where the runs were computed: parts written before hosts were recorded say "unknown".
    hosts = sorted({str(part.attrs.get("host", "unknown")) for part in parts})
    merged = xr.concat(parts, dim="run", combine_attrs="drop").sortby("run")
    num = int(np.prod(shape))
    if merged.sizes["run"] != num or not np.array_equal(merged["run"].values, np.arange(num)):
        raise RuntimeError(
            f"the sweep's parts hold {merged.sizes['run']} runs, expected {num}; delete the "
            "parts folder and run the sweep again."
        )
    dims = list(grid)
    coords = {k: _coordinate(vs) for k, vs in grid.items()}
    steps = merged[SUMMARY_STEP].values
    data = {}
    for name, var in merged.data_vars.items():
        values = var.values.reshape(*shape, *var.shape[1:])
        extra = [SUMMARY_STEP] if SUMMARY_STEP in var.dims else []
        data[summary_name(name, grid)] = ([*dims, *extra], values)
    ds = xr.Dataset(data, coords={**coords, SUMMARY_STEP: steps}, attrs=attrs)
    for name in FINAL_VARIABLES:
        ds[name].attrs = {"long_name": _FINAL_ATTRS[name], "units": "1"}
    for name in SUMMARY_VARIABLES:
        ds[summary_name(name, grid)].attrs = {
            "long_name": STEP_VARIABLES[name][1] + " (at summary steps)",
            "units": "1",
        }
    ds["diverged"].attrs = {"long_name": "the loss became non-finite during the run"}
    ds["diverged_at_step"].attrs = {"long_name": "first step with a non-finite loss (-1: none)"}
    ds[SUMMARY_STEP].attrs = {"long_name": "training step of the per-step summaries"}
    if WIDTH in ds.coords:
        ds[WIDTH].attrs = {"long_name": "hidden layer width (hidden_widths=(width,))"}
    if "hidden_widths" in ds.coords:
        ds["hidden_widths"].attrs = {"long_name": "hidden layer widths, input side first ('x')"}
    ds.attrs["dtype"] = first.dtype
    ds.attrs["host"] = " | ".join(hosts)
    return ds


def summary_name(name: str, grid: Mapping[str, Any]) -> str:
    """The sweep variable of the per-step summary ``name``: ``name``, or ``summary_<name>``
    where a grid key has that name (a sweep over ``loss`` has the coordinate ``loss``)."""
    return f"summary_{name}" if name in grid else name


def _coordinate(values: list) -> np.ndarray:
    if all(isinstance(v, str) for v in values):
        return np.asarray(values, dtype=object)
    if any(v is None for v in values):  # e.g. stop_after = [None, 30000] or batch_size
        return np.asarray(["none" if v is None else str(v) for v in values], dtype=object)
    if any(isinstance(v, list | tuple) for v in values):  # hidden_widths: "100x100", "200"
        return np.asarray([_label(v) for v in values], dtype=object)
    return np.asarray(values)
