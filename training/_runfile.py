"""Run files: one netCDF4 file per run, written incrementally, read back with xarray.

Layout (``format_version`` "1"; see INTERFACES.md):

- dims ``step`` (unlimited), ``checkpoint`` (unlimited), ``class``, ``param``, ``opt_param``,
  ``key_word``; tracking variables add ``eigen_index`` and ``ntk_eigen_index``.
- per-step variables ``loss``, ``static_loss``, ``train_accuracy``, ``val_loss``,
  ``val_accuracy`` (NaN off the eval steps), ``gamma(step, class)``, ``learning_rate``,
  ``grad_norm``.
- checkpoints ``checkpoint_step(checkpoint)``, ``params(checkpoint, param)``,
  ``opt_state(checkpoint, opt_param)``, ``rng_key(checkpoint, key_word)``: the parameters saved
  for step s are those at which the loss of step s was evaluated (before that step's update);
  the last checkpoint holds the final parameters (step = ``steps``, which has no loss record).
- attrs ``config`` (JSON), ``dynloss_version``, ``host`` (:func:`host`), ``format_version``,
  ``status`` ("running" | "complete" | "diverged" | "failed", with ``error``),
  ``last_complete_step``, ``param_layout`` and ``opt_state_layout`` (JSON lists of
  ``[path, shape, dtype]`` in flattening order), ``diverged_at_step`` when a non-finite loss
  was met.

Each chunk of steps is appended and the file synced, so a killed run leaves a readable file up
to its last chunk (``status`` stays "running" and ``last_complete_step`` says how far it got).
Post-hoc analyses write sibling files ``RUN.<kind>.nc``; :func:`open_run` merges them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import time
import uuid
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jax
import netCDF4
import numpy as np
import xarray as xr

try:
    import fcntl
except ImportError:  # not POSIX: result files are written without a lock
    fcntl = None

FORMAT_VERSION = "1"
STEP = "step"
CHECKPOINT = "checkpoint"
CLASS = "class"
PARAM = "param"
OPT_PARAM = "opt_param"
KEY_WORD = "key_word"

# name -> (extra dims after step, long_name, units)
STEP_VARIABLES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "loss": ((), "loss minimised at this step (dynamical loss with Γ of the step)", "1"),
    "static_loss": ((), "static loss (Γ ≡ 1) of the same parameters and batch", "1"),
    "train_accuracy": ((), "training accuracy of the parameters at this step", "1"),
    "val_loss": ((), "static loss on the validation split (eval steps only, NaN elsewhere)", "1"),
    "val_accuracy": ((), "validation accuracy (eval steps only, NaN elsewhere)", "1"),
    "gamma": ((CLASS,), "class oscillation factor Γ applied at this step", "1"),
    "learning_rate": ((), "learning rate of this step's update", "1"),
    "grad_norm": ((), "global L2 norm of the gradient of the loss at this step", "1"),
}


INDEX_DIMS = {
    "eigen_index": "rank of the Hessian eigenvalue (1 = largest)",
    "ntk_eigen_index": "rank of the NTK eigenvalue (1 = largest)",
}


def package_version() -> str:
    try:
        return version("dynloss")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown"


#: CPU features that change the code XLA emits, hence the rounding of a run: the vector width
#: (SSE, AVX, AVX-512) sets the order of summations, FMA fuses products and sums.
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16")


@functools.cache  # fixed for a process: XLA reads XLA_FLAGS when its backend starts
def host() -> str:
    """Where this process computes: JAX's version, its backend and device, and on CPU the
    instruction sets XLA compiles for.

    Recorded in run files and sweeps (attr ``host``): runs at the edge of stability follow
    rounding, and XLA:CPU's rounding depends on the vector instructions it uses, so such a run
    repeats exactly only where this string is the same (an AVX2-only and an AVX-512 CPU give
    different samples of the same dynamics). ``XLA_FLAGS``, when set, is part of it.
    """
    device = jax.devices()[0]
    text = f"jax {jax.__version__}, {device.platform}: {device.device_kind}"
    if device.platform == "cpu":
        name, flags = platform.processor() or platform.machine(), set()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    name = value.strip()
                if key.strip() == "flags":
                    flags = set(value.split())
                    break
        isa = " ".join(flag for flag in _ISA_FLAGS if flag in flags)
        text += f" ({name}; {platform.machine()}{' ' + isa if isa else ''})"
    xla_flags = os.environ.get("XLA_FLAGS", "").strip()  # --xla_cpu_max_isa changes rounding
    return f"{text}, XLA_FLAGS={xla_flags}" if xla_flags else text


def sibling_path(path: str | Path, kind: str) -> Path:
    """``RUN.nc`` -> ``RUN.<kind>.nc``: where post-hoc results of ``kind`` are written."""
    if not kind or "." in kind or "/" in kind:
        raise ValueError(
            f"a result name must be non-empty, without '.' or '/' (got {kind!r}); it becomes "
            "the file name RUN.<name>.nc."
        )
    path = Path(path)
    return path.with_name(f"{path.stem}.{kind}{path.suffix}")


class RunWriter:
    """Appends chunks of per-step records and checkpoints to a new run file.

    The file is created with ``status="running"`` and synced after every append.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        config_json: str,
        num_classes: int,
        param_layout: list,
        num_params: int,
        opt_layout: list,
        num_opt: int,
        key_words: int,
        dtype: str,
        extra_variables: Mapping[str, tuple[tuple[str, ...], str, str]] | None = None,
        extra_dims: Mapping[str, int] | None = None,
        extra_attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # NC_NOCLOBBER: a file created meanwhile (another process) is refused, not replaced
            self._nc = netCDF4.Dataset(self.path, "w", clobber=overwrite, format="NETCDF4")
        except OSError as error:
            if not overwrite and self.path.exists():
                raise FileExistsError(_exists_message(self.path)) from error
            raise
        nc = self._nc
        nc.createDimension(STEP, None)
        nc.createDimension(CHECKPOINT, None)
        nc.createDimension(CLASS, num_classes)
        nc.createDimension(PARAM, num_params)
        nc.createDimension(KEY_WORD, key_words)
        self._has_opt = num_opt > 0
        if self._has_opt:
            nc.createDimension(OPT_PARAM, num_opt)
        step = nc.createVariable(STEP, "i8", (STEP,))
        step.long_name = "training step (0-based; Γ at step s uses t = s)"
        cls = nc.createVariable(CLASS, "i4", (CLASS,))
        cls.long_name = "class index"
        cls[:] = np.arange(num_classes, dtype=np.int32)
        for dim, size in (extra_dims or {}).items():
            nc.createDimension(dim, size)
            if dim in INDEX_DIMS:  # eigen indices count from 1: λ1 is eigen_index=1
                coord = nc.createVariable(dim, "i4", (dim,))
                coord.long_name = INDEX_DIMS[dim]
                coord[:] = np.arange(1, size + 1, dtype=np.int32)
        float_type = "f8" if dtype == "float64" else "f4"
        for name, (dims, long_name, units) in {**STEP_VARIABLES, **(extra_variables or {})}.items():
            var = nc.createVariable(name, float_type, (STEP, *dims), fill_value=np.nan)
            var.long_name = long_name
            var.units = units
        ck = nc.createVariable("checkpoint_step", "i8", (CHECKPOINT,))
        ck.long_name = "step whose loss was evaluated at these parameters (before its update)"
        params = nc.createVariable(
            "params", float_type, (CHECKPOINT, PARAM), chunksizes=(1, max(num_params, 1))
        )
        params.long_name = "flattened model parameters (layout in attr param_layout)"
        if self._has_opt:
            opt = nc.createVariable(
                "opt_state", float_type, (CHECKPOINT, OPT_PARAM), chunksizes=(1, num_opt)
            )
            opt.long_name = "flattened optimiser state (layout in attr opt_state_layout)"
        key = nc.createVariable("rng_key", "u4", (CHECKPOINT, KEY_WORD))
        key.long_name = "raw data of the run's random key (jax.random.key_data)"
        nc.setncatts(
            {
                "title": "dynloss training run",
                "config": config_json,
                "dynloss_version": package_version(),
                "host": host(),
                "format_version": FORMAT_VERSION,
                "status": "running",
                "last_complete_step": np.int64(-1),
                "param_layout": json.dumps(param_layout),
                "opt_state_layout": json.dumps(opt_layout),
                **dict(extra_attrs or {}),
            }
        )
        nc.sync()

    @property
    def num_steps(self) -> int:
        return len(self._nc.dimensions[STEP])

    def append_steps(self, first_step: int, records: Mapping[str, np.ndarray]) -> None:
        """Write ``records`` (arrays with a leading step axis) for steps ``first_step, ...``."""
        n = len(next(iter(records.values())))
        start = self.num_steps
        if start != first_step:
            raise RuntimeError(f"run file holds {start} steps but a chunk starts at {first_step}.")
        self._nc[STEP][start : start + n] = np.arange(first_step, first_step + n, dtype=np.int64)
        for name, values in records.items():
            self._nc[name][start : start + n] = values
        self._nc.setncattr("last_complete_step", np.int64(first_step + n - 1))
        self._nc.sync()

    def append_checkpoint(
        self, step: int, params: np.ndarray, opt_state: np.ndarray, key: np.ndarray
    ) -> None:
        i = len(self._nc.dimensions[CHECKPOINT])
        self._nc["checkpoint_step"][i] = step
        self._nc["params"][i, :] = params
        if self._has_opt:
            self._nc["opt_state"][i, :] = opt_state
        self._nc["rng_key"][i, :] = key
        self._nc.sync()

    def set_attrs(self, **attrs: Any) -> None:
        self._nc.setncatts(attrs)
        self._nc.sync()

    def mark_failed(self, error: BaseException) -> None:
        """Set ``status="failed"`` and an ``error`` attribute naming what stopped the run."""
        if isinstance(error, KeyboardInterrupt):
            text = "KeyboardInterrupt: interrupted (Ctrl-C or SIGINT)"
        else:
            message = str(error)
            text = f"{type(error).__name__}: {message}" if message else type(error).__name__
        self.set_attrs(status="failed", error=text)

    def close(self) -> None:
        if self._nc.isopen():
            self._nc.close()


def open_run(path: str | Path, *, siblings: bool = True) -> xr.Dataset:
    """Open a run file as an ``xarray.Dataset`` (lazily), merging its post-hoc siblings.

    Siblings ``RUN.<kind>.nc`` that hold per-step results (a ``step`` dimension; written by the
    analysis commands) are merged with an outer join on ``step``, so a Hessian trajectory
    computed at a few steps shows up as NaN elsewhere. A sibling variable whose name the run
    already has (e.g. ``hessian_eigenvalues`` tracked online and again post hoc) is merged as
    ``<name>_<kind>`` so neither is hidden.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{str(path)!r} is a folder; give the path of a run file (.nc), e.g. one inside it."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"run file {str(path)!r} does not exist; train one with `dynloss train --output "
            f"{path}` or `dynloss demo`."
        )
    ds = _open_dataset(path)
    if "format_version" not in ds.attrs or "config" not in ds.attrs:
        ds.close()
        raise ValueError(
            f"{str(path)!r} is not a dynloss run file (it has no 'format_version'/'config' "
            "attributes)."
        )
    if siblings:
        handles = [ds]
        for sibling in sibling_files(path, ds.attrs):
            extra = xr.open_dataset(sibling)
            if STEP not in extra.dims:  # e.g. detected onsets: not per-step records
                extra.close()
                continue
            handles.append(extra)
            kind = _sibling_kind(path, sibling)
            clash = {v: f"{v}_{kind}" for v in extra.data_vars if v in ds.data_vars}
            ds = xr.merge([ds, extra.rename(clash)], join="outer", combine_attrs="override")
        if len(handles) > 1:  # closing the merged Dataset closes every file it reads from

            def close_all() -> None:
                for handle in handles:
                    handle.close()

            ds.set_close(close_all)
    return ds


def _is_sibling_of(attrs: Mapping[str, Any], run_config: str) -> bool:
    """Whether a file with ``attrs`` holds post-hoc results of the run whose config is given.

    The run's configuration (JSON) is its identity: results carry it as ``source_config``
    (``run_config`` in onset files). So a sweep neighbour ``lr=1.5.nc`` is never adopted by
    ``lr=1.nc`` (it is a run file, ``format_version``), and results left over from an earlier,
    different run saved under the same name are not merged into a new one.
    """
    if "format_version" in attrs:
        return False
    return attrs.get("source_config", attrs.get("run_config")) == run_config


def _exists_message(path: Path) -> str:
    return (
        f"output {str(path)!r} already exists (another process may have created it since this "
        "run started); choose another path or pass overwrite=True (--overwrite on the command "
        "line) to replace it."
    )


def sibling_files(path: str | Path, run_attrs: Mapping[str, Any] | None = None) -> list[Path]:
    """The post-hoc result files ``RUN.<kind>.nc`` of the run at ``path``, sorted by name.

    Only files computed from this run count (same configuration, see ``_is_sibling_of``): other
    runs whose names share the prefix, such as a sweep's ``learning_rate=1.5.nc`` next to
    ``learning_rate=1.nc``, and results of an earlier run once saved under this name are left
    alone. ``run_attrs`` (the run's attributes) are read from the file when not given.
    """
    path = Path(path)
    if run_attrs is None:
        with xr.open_dataset(path) as ds:
            run_attrs = dict(ds.attrs)
    found = []
    folder = path.parent
    # A listing, not a glob: run names may hold glob characters ("run[1].nc").
    for candidate in sorted(folder.iterdir() if folder.is_dir() else ()):
        if candidate == path or _sibling_kind(path, candidate) is None:
            continue
        try:
            with xr.open_dataset(candidate) as extra:
                attrs = dict(extra.attrs)
        except (OSError, ValueError, RuntimeError):  # not readable as netCDF: not ours
            continue
        if _is_sibling_of(attrs, str(run_attrs.get("config", ""))):
            found.append(candidate)
    return found


def _sibling_kind(run: Path, candidate: Path) -> str | None:
    """``kind`` when ``candidate`` is named ``RUN.<kind><suffix>`` for the run at ``run``.

    ``None`` otherwise, and for kinds with a dot: ``RUN.backup.hessian.nc`` is
    ``RUN.backup.nc``'s. Works for runs without an extension (``runs/myrun`` ->
    ``runs/myrun.hessian``), where the suffix is empty.
    """
    name, prefix, suffix = candidate.name, f"{run.stem}.", run.suffix
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    kind = name[len(prefix) : len(name) - len(suffix)]
    return kind if kind and "." not in kind else None


READ_ATTEMPTS = 5
"""Tries of :func:`open_run` on a file that another process is appending to (see below)."""
READ_RETRY_SECONDS = 0.2
"""Wait between those tries."""


def _open_dataset(path: Path) -> xr.Dataset:
    """``xr.open_dataset``, retried while a running trainer is in the middle of an append.

    HDF5 has no concurrent reader/writer guarantee: a read that lands during the writer's
    append (a few milliseconds per chunk) can fail with ``RuntimeError: NetCDF: HDF error``
    (seen about once in 25 polling runs). The file is consistent again after the writer's sync,
    so the read is retried a few times, 0.2 s apart, before the error is raised.
    """
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return xr.open_dataset(path)
        except RuntimeError:
            time.sleep(READ_RETRY_SECONDS)
        except (OSError, ValueError) as error:  # not netCDF, truncated, unreadable
            raise ValueError(
                f"{str(path)!r} is not a readable netCDF run file ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]})."
            ) from error
    return xr.open_dataset(path)


def _config_attr(run_path: Path) -> str:
    """The run's configuration JSON (its identity for its post-hoc results)."""
    with xr.open_dataset(run_path) as run:
        return str(run.attrs.get("config", ""))


def write_sibling(
    run_path: str | Path, kind: str, result: xr.Dataset, *, overwrite: bool = False
) -> Path:
    """Write a post-hoc result next to its run as ``RUN.<kind>.nc``, merged with earlier ones.

    The result is stamped with the run's configuration (``source_config``), which ties it to
    the run. Where ``RUN.<kind>.nc`` already holds per-step results of the same run, shape
    (variables, dimensions and sizes apart from ``step``) and options (the ``options``
    attribute, e.g. ``k`` or an NTK ``subset``), the two are merged: steps computed again are
    replaced, the others kept. Anything else (another ``k``, other options, another run's
    file) is refused with ``FileExistsError`` unless ``overwrite``, which replaces the file as
    a whole: every earlier step in it is discarded, also where shape and options match.
    Results without a ``step`` dimension (detected onsets) replace the earlier ones. The file
    is written under a temporary name, then renamed atomically; reading, merging and renaming
    hold an exclusive lock on the folder, so processes writing results of one run at the same
    time (``dynloss hessian`` on two halves of the steps) each merge with the other's.
    """
    run_path = Path(run_path)
    target = sibling_path(run_path, kind)
    config = _config_attr(run_path)
    if "run_config" not in result.attrs:
        result = result.assign_attrs(source_config=config)
    with _folder_lock(target.parent):
        if target.exists() and not overwrite:
            result = _merge_into_existing(target, result, run_path, config)
        write_atomic(result, target)
    return target


def write_atomic(ds: xr.Dataset, path: Path) -> None:
    """``ds`` written to ``path`` through a temporary file of its own (a name no other process
    writing the same path uses) and renamed into place: a reader never sees half a file, and an
    interrupted write leaves the earlier file as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        ds.to_netcdf(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` for the block (none where fcntl is missing)."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_OVERWRITE_HINT = "pass overwrite=True (--overwrite on the command line) to replace it"


def check_sibling(run_path: str | Path, kind: str, options: str | None) -> None:
    """Raise ``FileExistsError`` now if results of ``kind`` with ``options`` (the JSON of a
    result's ``options`` attribute) could not be merged into ``RUN.<kind>.nc``: the file is
    another run's, or holds results computed with other options. Called before a long
    computation whose result :func:`write_sibling` would otherwise refuse at the end."""
    run_path = Path(run_path)
    target = sibling_path(run_path, kind)
    if not target.exists():
        return
    config = _config_attr(run_path)
    with xr.open_dataset(target) as old:
        _check_mergeable(target, dict(old.attrs), run_path, config, options)


def _check_same_run(target: Path, attrs: Mapping[str, Any], run_path: Path, config: str) -> None:
    if not _is_sibling_of(attrs, config):
        raise FileExistsError(
            f"{str(target)!r} exists but was not computed from {str(run_path)!r} as it is now "
            f"(another run's results, or this name's earlier run); move it away or "
            f"{_OVERWRITE_HINT}."
        )


def _check_mergeable(
    target: Path, attrs: Mapping[str, Any], run_path: Path, config: str, options: str | None
) -> None:
    _check_same_run(target, attrs, run_path, config)
    # Results written before options were recorded (no attribute) merge if their shapes fit.
    if "options" in attrs and attrs["options"] != options:
        raise FileExistsError(
            f"{str(target)!r} already holds results computed with other options "
            f"({attrs.get('options')} there, {options} now); nothing was written. Choose the "
            f"same options, or {_OVERWRITE_HINT}."
        )


def _merge_into_existing(
    target: Path, result: xr.Dataset, run_path: Path, config: str
) -> xr.Dataset:
    """``result`` with the steps of the existing ``target`` that it does not recompute."""
    with xr.open_dataset(target) as old:
        old = old.load()
    if STEP not in result.dims or STEP not in old.dims:  # whole-run results: replaced
        _check_same_run(target, old.attrs, run_path, config)
        return result
    _check_mergeable(target, old.attrs, run_path, config, result.attrs.get("options"))
    differences = [
        name
        for name in set(result.data_vars) | set(old.data_vars)
        if name not in result.data_vars
        or name not in old.data_vars
        or result[name].dims != old[name].dims
        or any(result.sizes[d] != old.sizes[d] for d in result[name].dims if d != STEP)
    ]
    if differences:
        raise FileExistsError(
            f"{str(target)!r} already holds results that differ from the new ones in "
            f"{', '.join(sorted(differences))} (other variables or sizes, e.g. another k); "
            f"nothing was written. Choose the same options, or {_OVERWRITE_HINT}."
        )
    kept = old.sel({STEP: ~old[STEP].isin(result[STEP].values)})
    if kept.sizes[STEP] == 0:
        return result
    merged = xr.concat(
        [result, kept],
        dim=STEP,
        data_vars="minimal",
        coords="minimal",
        compat="override",
        combine_attrs="override",
    )
    return merged.sortby(STEP).assign_attrs(result.attrs)
