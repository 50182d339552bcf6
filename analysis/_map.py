"""User diagnostics over the saved checkpoints of a run: :func:`map_checkpoints`."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from curvature._checks import integer_at_least
from curvature._compiled import cached
from training import (
    Context,
    Metric,
    Problem,
    config_of,
    context,
    open_run,
    precision,
    sibling_path,
    unflatten,
    write_sibling,
)
from training._metrics import as_metric, check_numbers, dims_of, variables
from training._trainer import HYPER_DEFAULTS, initial_state, problem_of, specialise

STEP = "step"


class DiagnosticError(RuntimeError):
    """A diagnostic failed at one checkpoint. ``step`` says where; ``partial`` holds the
    results of the checkpoints that completed before it (a Dataset on ``step``, possibly
    empty)."""

    def __init__(self, message: str, step: int, partial: xr.Dataset) -> None:
        super().__init__(message)
        self.step = step
        self.partial = partial


def integer_steps(steps: Sequence[int] | np.ndarray | int) -> np.ndarray:
    """``steps`` as a 1-d int64 array; refuses values that are not whole numbers (10.7)."""
    values = np.atleast_1d(np.asarray(steps))
    if values.dtype == bool or not (
        np.issubdtype(values.dtype, np.integer)
        or (np.issubdtype(values.dtype, np.floating) and np.all(values == np.round(values)))
    ):
        raise ValueError(f"steps must be whole step numbers (got {values.tolist()[:8]}).")
    return values.astype(np.int64)


def select_steps(ds: xr.Dataset, steps: Sequence[int] | None) -> np.ndarray:
    saved = np.asarray(ds["checkpoint_step"].values, np.int64)
    if steps is None:
        return saved
    steps = integer_steps(steps)
    if steps.size == 0:
        raise ValueError(
            f"steps is empty; name at least one saved checkpoint (saved steps are "
            f"{saved.tolist()[:8]}{' …' if saved.size > 8 else ''}), or pass None for all."
        )
    missing = sorted(set(steps.tolist()) - set(saved.tolist()))
    if missing:
        raise ValueError(
            f"steps {missing[:8]} are not saved checkpoints of this run; saved steps are "
            f"{saved.tolist()[:8]}{' …' if saved.size > 8 else ''}."
        )
    return np.unique(steps)  # sorted, each step once (a run file's step index is unique)


def _dataset(
    name: str, metric: Metric, steps: list[int], rows: list[Any], run_attrs: dict, dtype: Any
) -> xr.Dataset:
    if not rows:
        return xr.Dataset(coords={STEP: np.asarray(steps[:0], np.int64)})
    check_numbers(name, metric, rows[0])
    dims = dims_of(name, metric, rows[0])
    data = {}
    per_row = [variables(name, metric, row) for row in rows]
    for var, extra in dims.items():
        # In the run's float dtype, as the trainer records them (flags and counts included).
        values = np.stack([np.asarray(row[var]) for row in per_row]).astype(dtype)
        data[var] = ((STEP, *extra), values)
    ds = xr.Dataset(data, coords={STEP: np.asarray(steps[: len(rows)], np.int64)})
    for var, attrs in (metric.attrs or {}).items():
        if var in ds:
            ds[var].attrs.update(attrs)
    ds.attrs["source_config"] = run_attrs.get("config", "")
    return ds


def map_checkpoints(
    run: xr.Dataset | str | Path,
    fn: Callable[[Context], Any] | Metric,
    *,
    steps: Sequence[int] | None = None,
    batch: int | None = None,
    name: str | None = None,
    append: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    share_programs: bool = False,
) -> xr.Dataset:
    """Evaluate a diagnostic ``fn(ctx)`` at saved checkpoints of a run.

    ``ctx`` is a :class:`training.Context` (params, apply_fn, loss_fn with Γ of the step,
    static_loss_fn, grads, x, y, data, step, gamma, learning_rate, config), exactly what the
    trainer passes to online metrics, so the same function gives the same values post hoc and
    during training. Return values (scalars, arrays, or dicts of them) are stacked along a
    ``step`` dimension; extra dimensions are ``f"{variable}_dim_{i}"`` unless ``fn`` is a
    :class:`training.Metric` naming them. Integer and boolean values (counts, flags) are
    stored in the run's float dtype, as the trainer stores them, so a step left out can hold NaN.

    Execution: a stateless ``fn`` (a plain function, or a Metric whose state is empty) is
    first tried ``jax.jit(jax.vmap(...))`` over batches of
    ``batch`` checkpoints (default 16); if it cannot be traced, each checkpoint is evaluated
    with ``jax.jit``, and where that fails too, as plain Python. A stateful :class:`Metric`
    (warm-started eigensolvers) runs checkpoint after checkpoint, carrying its state.

    Args:
      run: a run file path or an opened run Dataset.
      fn: the diagnostic.
      steps: checkpoint steps to evaluate (default: all saved ones), taken in increasing
        order, each once.
      batch: checkpoints per vmapped batch.
      name: variable name (default: ``fn.__name__``; required for a lambda, a
        :class:`training.Metric` or another callable without a name).
      append: also write the result next to the run as ``RUN.<name>.nc`` (merged by
        ``open_run``); needs ``run`` to be a path. An existing ``RUN.<name>.nc`` of the same
        shape keeps its other steps; one of another shape is refused (see
        :func:`training.write_sibling`).
      overwrite: with ``append``, replace an existing ``RUN.<name>.nc`` whatever it holds.
      progress: show a progress bar.
      share_programs: compile ``fn`` once for all runs that differ only in the learning
        rate, Γ's amplitude and period, ``stop_after`` or the momentum (a learning-rate
        study), as the built-in trajectories do. The compiled programs take those values as
        arguments, so ``ctx.gamma``, ``ctx.learning_rate`` and ``ctx.loss_fn`` are each run's
        own, but ``ctx.config`` is then the configuration of the first such run analysed: set
        it only when ``fn`` does not read those fields from ``ctx.config``. By default the
        programs are shared only by runs of equal configurations (``output`` aside).

    Returns:
      A Dataset on ``step`` holding only the evaluated steps.

    Raises:
      DiagnosticError: ``fn`` raised at some checkpoint; the message names the step, and
        ``error.partial`` holds the results computed before it (also written when
        ``append``).
    """
    if append and not isinstance(run, str | Path):
        raise ValueError("append=True needs the run's file path, not an opened Dataset.")
    batch = integer_at_least("batch", batch, 1, optional=True)
    metric = as_metric(fn)
    name = name or getattr(fn, "__name__", None)
    if name is None or name == "<lambda>":
        what = "a lambda" if name else f"a {type(fn).__name__}"
        raise ValueError(f"{what} has no name; pass name='...' to map_checkpoints.")
    if append:
        sibling_path(run, name)  # a name that cannot be a file name is refused now
    opened = isinstance(run, str | Path)
    ds = open_run(run) if opened else run
    try:
        config = config_of(ds)
        selected = select_steps(ds, steps).tolist()
    except Exception:
        if opened:
            ds.close()
        raise
    index = {int(s): i for i, s in enumerate(ds["checkpoint_step"].values)}
    flat_params = ds["params"]
    with precision(config.dtype):
        problem = problem_of(config)
        template = jax.eval_shape(lambda: initial_state(problem)[0])
        programs = _programs_of(problem, template, fn, metric, share_programs)
        hyper = problem.hyper

        def params_at(step: int) -> jax.Array:
            values = np.asarray(flat_params.isel(checkpoint=index[step]).values)
            return jnp.asarray(values, problem.dtype)

        rows: list[Any] = []
        bar = _bar(progress, len(selected), name)
        try:
            if _is_stateless(problem, template, metric, params_at(selected[0]), selected[0]):
                _run_stateless(
                    programs, problem, hyper, selected, params_at, batch or 16, rows, bar
                )
            else:
                _run_stateful(programs, problem, hyper, selected, params_at, rows, bar)
        except _StepError as failure:
            partial = _dataset(name, metric, selected, rows, ds.attrs, problem.dtype)
            written = ""
            if append and rows:
                try:  # merged with earlier results of the same shape, never replacing them
                    write_sibling(run, name, partial, overwrite=False)
                    written = " and were merged into the results next to the run"
                except FileExistsError as refused:
                    written = f" (not written next to the run: {refused})"
            raise DiagnosticError(
                f"diagnostic {name!r} failed at step {failure.step}: "
                f"{type(failure.error).__name__}: {str(failure.error).rstrip('.')}. Results of "
                f"the {len(rows)} checkpoint(s) before it are in error.partial{written}.",
                failure.step,
                partial,
            ) from failure.error
        finally:
            bar.close()
            if opened:  # the run file is not held open after the call
                ds.close()
    result = _dataset(name, metric, selected, rows, ds.attrs, problem.dtype)
    if append:
        write_sibling(run, name, result, overwrite=overwrite)
    return result


class _StepError(Exception):
    def __init__(self, step: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.step = step
        self.error = error


class _NoBar:
    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _RichBar:
    def __init__(self, total: int, label: str) -> None:
        from analysis._progress import start_bar

        self._progress, self._task = start_bar(label, total, detail="checkpoints")

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()


def _bar(show: bool, total: int, label: str) -> _NoBar | _RichBar:
    return _RichBar(total, label) if show else _NoBar()


def _is_stateless(
    problem: Problem, template: Any, metric: Metric, flat: jax.Array, step: int
) -> bool:
    """Whether ``metric.init`` returns an empty state (then checkpoints can be vmapped)."""
    try:
        state = jax.eval_shape(
            lambda f: metric.init(context(problem, unflatten(template, f), step)), flat
        )
    except Exception:  # init not traceable: leave it to the sequential path
        return False
    return not jax.tree_util.tree_leaves(state)


class _Programs(NamedTuple):
    """The jitted functions of one diagnostic on one problem, and the plain ones they wrap.

    The plain functions take the run's :class:`training.Problem` (its hyperparameters as
    constants); the jitted ones take its :class:`training.Hyper` as well, used in place of
    the problem's with ``share_programs`` (runs differing only in those values then share
    them) and ignored otherwise (the values stay constants of the program).
    """

    fn: Any  # the diagnostic as given: held so that its id, part of the key, stays its own
    evaluate: Callable  # stateless: (problem, flat params, step) -> values
    init: Callable  # stateful: (problem, flat params, step) -> state
    update: Callable  # (problem, flat params, step, state) -> (values, state)
    batched: Callable  # (flat params, step, hyper) -> values, vmapped over params and step
    single: Callable  # (flat params, step, hyper) -> values
    jitted_init: Callable  # (flat params, step, hyper) -> state
    jitted_update: Callable  # (flat params, step, hyper, state) -> (values, state)


_PROGRAMS: collections.OrderedDict = collections.OrderedDict()


def _programs_of(
    problem: Problem, template: Any, fn: Any, metric: Metric, share: bool
) -> _Programs:
    """The functions evaluating ``metric`` on ``problem``, made once per problem and ``fn``.

    A second call for the same diagnostic on a run of the same configuration (the same run
    analysed again, or another step range) then reuses the compiled programs: the
    diagnostic's first compilation (a warm tracker's update: 4-7 s) is paid once per process.
    With ``share``, so do runs whose configurations differ only in the
    :data:`training._trainer.HYPER_DEFAULTS` fields; the jitted functions then use the first
    such problem with each run's ``Hyper``. ``fn`` is compared by identity; the built-in
    factories (``training.hessian_metric``...) return the same object for the same options.
    The 8 most recent are kept, each holding its problem (training data included) and ``fn``.
    """

    def make() -> _Programs:
        def ctx_at(run: Problem, flat: jax.Array, step: jax.Array) -> Context:
            return context(run, unflatten(template, flat), step)

        def evaluate(run: Problem, flat: jax.Array, step: jax.Array) -> Any:
            ctx = ctx_at(run, flat, step)
            return metric.update(ctx, metric.init(ctx))[0]

        def init(run: Problem, flat: jax.Array, step: jax.Array) -> Any:
            return metric.init(ctx_at(run, flat, step))

        def update(run: Problem, flat: jax.Array, step: jax.Array, state: Any) -> tuple:
            return metric.update(ctx_at(run, flat, step), state)

        def with_hyper(plain: Callable) -> Callable:
            if not share:  # the run's own values as constants, as a user's diagnostic saw them
                return lambda flat, step, hyper, *rest: plain(problem, flat, step, *rest)
            return lambda flat, step, hyper, *rest: plain(
                specialise(problem, hyper), flat, step, *rest
            )

        return _Programs(
            fn,
            evaluate,
            init,
            update,
            jax.jit(jax.vmap(with_hyper(evaluate), in_axes=(0, 0, None))),
            jax.jit(with_hyper(evaluate)),
            jax.jit(with_hyper(init)),
            jax.jit(with_hyper(update)),
        )

    config = problem.config.replace(output=None)
    if share:
        config = config.replace(**HYPER_DEFAULTS)
    key = (config, bool(jax.config.jax_enable_x64), id(fn))
    return cached(_PROGRAMS, key, make)


def _run_stateless(programs, problem, hyper, selected, params_at, batch, rows, bar) -> None:
    if batch == 1:  # no vmap at all: a batch of one still pays for batched products on CPU
        _run_one_by_one(programs, problem, hyper, selected, params_at, rows, bar)
        return
    batched = programs.batched
    try:
        first = selected[:batch]
        out = batched(jnp.stack([params_at(s) for s in first]), jnp.asarray(first), hyper)
    except Exception:  # not vmappable/jittable: fall back to one checkpoint at a time
        _run_one_by_one(programs, problem, hyper, selected, params_at, rows, bar)
        return
    for start in range(0, len(selected), batch):
        chunk = selected[start : start + batch]
        if start:
            # A short last chunk is padded with its last checkpoint (results dropped), so
            # every chunk has one shape and the program is compiled once.
            padded = chunk + chunk[-1:] * (len(first) - len(chunk))
            out = batched(jnp.stack([params_at(s) for s in padded]), jnp.asarray(padded), hyper)
        host = jax.tree_util.tree_map(np.asarray, out)
        for i in range(len(chunk)):
            rows.append(jax.tree_util.tree_map(lambda a, i=i: a[i], host))
        bar.advance(len(chunk))


def _run_one_by_one(programs, problem, hyper, selected, params_at, rows, bar) -> None:
    evaluate, jitted, use_jit = programs.evaluate, programs.single, True
    for step in selected:
        flat = params_at(step)
        try:
            if use_jit:
                try:
                    out = jitted(flat, jnp.asarray(step), hyper)
                except Exception:
                    use_jit = False
            if not use_jit:
                out = evaluate(problem, flat, step)
            rows.append(jax.tree_util.tree_map(np.asarray, out))
        except Exception as error:
            raise _StepError(step, error) from error
        bar.advance()


def _run_stateful(programs, problem, hyper, selected, params_at, rows, bar) -> None:
    init, update = programs.init, programs.update
    jitted = (programs.jitted_init, programs.jitted_update)
    state = None
    for step in selected:
        flat, t = params_at(step), jnp.asarray(step)
        try:
            try:
                if state is None:
                    state = jitted[0](flat, t, hyper)
                values, state = jitted[1](flat, t, hyper, state)
            except Exception:  # not traceable: run eagerly
                if state is None:
                    state = init(problem, flat, t)
                values, state = update(problem, flat, t, state)
            rows.append(jax.tree_util.tree_map(np.asarray, values))
        except Exception as error:
            raise _StepError(step, error) from error
        bar.advance()
