"""The trainer: ``lax.scan`` chunks of full-batch (or minibatch) steps, recorded every step."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from jax.flatten_util import ravel_pytree

from curvature import tree_norm
from curvature._checks import is_integer
from curvature._compiled import cached, traced
from curvature._tracking import max_tracked_k
from schedules import (
    STATIC_OF,
    Schedule,
    constant,
    float_residual,
    get_loss,
    is_dynamical,
    make_schedule,
)
from training._config import TrainConfig
from training._data import Data, spiral
from training._diagnostics import hessian_metric, ntk_metric
from training._metrics import (
    Context,
    Metric,
    as_metric,
    as_record,
    check_names,
    check_numbers,
    dims_of,
    nan_like,
    variables,
)
from training._models import Model, Params, mlp
from training._runfile import (
    CHECKPOINT,
    CLASS,
    KEY_WORD,
    OPT_PARAM,
    PARAM,
    STEP,
    STEP_VARIABLES,
    RunWriter,
    open_run,
    sibling_files,
)

ProgressCallback = Callable[[int, int, dict[str, float]], None]
"""``progress(steps_done, steps_total, latest)`` called after every chunk."""


class Hyper(NamedTuple):
    """The hyperparameters that may differ between runs executed together (``jax.vmap``).

    Arrays (scalars per run): ``amplitude``, ``period``, ``stop_after`` (``inf`` = never),
    ``learning_rate``, ``momentum``, and ``period_residual``, the part of the period that the
    run's dtype cannot hold (``T − float32(T)``; see ``schedules``, "Precision"). Everything else
    in a ``TrainConfig`` fixes shapes or code paths and must be equal across a batch.
    """

    amplitude: jax.Array
    period: jax.Array
    stop_after: jax.Array
    learning_rate: jax.Array
    momentum: jax.Array
    period_residual: jax.Array


HYPER_DEFAULTS = {
    "amplitude": 1.0,
    "period": 1.0,
    "stop_after": None,
    "learning_rate": 1.0,
    "momentum": 0.0,
}
"""The ``TrainConfig`` fields that :class:`Hyper` carries, with neutral values: a compiled step
takes them as arguments, so configurations that differ only in them can share its program."""


def hyper_of(config: TrainConfig, dtype: Any = None) -> Hyper:
    """The :class:`Hyper` of one configuration (JAX's default float dtype unless given)."""
    dtype = dtype or jnp.result_type(float)
    stop = jnp.inf if config.stop_after is None else config.stop_after
    values = (
        config.amplitude,
        config.period,
        stop,
        config.learning_rate,
        config.momentum,
        float_residual(config.period, dtype),
    )
    return Hyper(*(jnp.asarray(v, dtype) for v in values))


class Problem(NamedTuple):
    """Everything a configuration builds: data, model, Γ schedule, losses and optimiser.

    ``schedule``, ``optimizer`` and ``learning_rate`` are built from ``hyper``; inside a
    batched (vmapped) run :func:`specialise` rebuilds them from that run's traced ``Hyper``.
    """

    config: TrainConfig
    data: Data
    model: Model
    schedule: Schedule
    loss: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    static_loss: Callable[[jax.Array, jax.Array], jax.Array]
    optimizer: optax.GradientTransformation
    learning_rate: optax.Schedule
    dtype: Any
    hyper: Hyper


class Restored(NamedTuple):
    """A saved state of a run (see :func:`restore`).

    ``loss_fn(params)`` is the full-batch training loss the run minimised at ``step`` (Γ of that
    step applied); ``static_loss_fn(params)`` the static loss of the same data.
    """

    model: Model
    params: Params
    data: Data
    loss_fn: Callable[[Params], jax.Array]
    static_loss_fn: Callable[[Params], jax.Array]
    gamma: jax.Array
    step: int
    config: TrainConfig


@contextlib.contextmanager
def precision(dtype: str) -> Iterator[None]:
    """Enable 64-bit JAX types inside the block when ``dtype == "float64"``; else a no-op.

    (Matrix products need no setting here: the models ask for full precision themselves, see
    ``training._models._dense``.)
    """
    if dtype == "float64":
        with jax.enable_x64(True):
            yield
    else:
        yield


def load_data(config: TrainConfig) -> Data:
    """The dataset named by ``config`` (the training split is what the run minimises)."""
    return spiral(config.points_per_class, config.num_classes, config.noise, config.data_seed)


def build(config: TrainConfig) -> Problem:
    """Build data, model, schedule, losses and optimiser from a configuration."""
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    data = load_data(config)
    model = mlp(
        config.hidden_widths,
        data.num_classes,
        parameterization=config.parameterization,
        init=config.init,
        w_std=config.w_std,
        b_std=config.b_std,
        dtype=dtype,
    )
    dynamical = get_loss(config.loss)
    static = get_loss(STATIC_OF[config.loss])

    def loss(outputs: jax.Array, labels: jax.Array, gamma: jax.Array) -> jax.Array:
        return (
            dynamical(outputs, labels, gamma)
            if is_dynamical(config.loss)
            else static(outputs, labels)
        )

    hyper = hyper_of(config, dtype)
    problem = Problem(config, data, model, None, loss, static, None, None, dtype, hyper)
    return specialise(problem, hyper)


def specialise(problem: Problem, hyper: Hyper) -> Problem:
    """``problem`` with schedule, learning rate and optimiser built from ``hyper``.

    ``hyper`` may hold traced values (one run of a vmapped batch): the factories are closures
    over them, jit- and vmap-safe.
    """
    config = problem.config
    num_classes = problem.data.num_classes
    if is_dynamical(config.loss):
        schedule = make_schedule(
            config.schedule,
            num_classes,
            hyper.period,
            hyper.amplitude,
            stop_after=hyper.stop_after,
            period_residual=hyper.period_residual,
        )
    else:
        schedule = constant(num_classes)
    learning_rate = optax.constant_schedule(hyper.learning_rate)
    if config.optimizer == "gd":
        optimizer = optax.sgd(learning_rate)
    else:
        optimizer = optax.sgd(
            learning_rate, momentum=hyper.momentum, nesterov=config.optimizer == "nesterov"
        )
    return problem._replace(
        schedule=schedule, optimizer=optimizer, learning_rate=learning_rate, hyper=hyper
    )


def _layout(tree: Any) -> list:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [
        [jax.tree_util.keystr(path), list(np.shape(x)), str(np.asarray(x).dtype)]
        for path, x in leaves
    ]


def _flat(tree: Any, dtype: Any) -> np.ndarray:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return np.zeros((0,), dtype)
    return np.concatenate([np.ravel(np.asarray(x)).astype(dtype) for x in leaves])


def unflatten(template: Any, flat: jax.Array | np.ndarray) -> Any:
    """Rebuild a pytree shaped like ``template`` (arrays or ShapeDtypeStructs) from a flat vector
    (JAX or NumPy; the leaves are of the same kind).

    The inverse of the run file's flattening: leaves in ``jax.tree_util`` order, each raveled.
    """
    leaves, treedef = jax.tree_util.tree_flatten(template)
    sizes = [int(np.prod(leaf.shape)) for leaf in leaves]
    if sum(sizes) != flat.shape[0]:
        raise ValueError(
            f"a flat vector of {flat.shape[0]} values cannot fill a pytree of {sum(sizes)}."
        )
    offsets = np.cumsum([0, *sizes])
    rebuilt = [
        flat[a:b].reshape(leaf.shape).astype(leaf.dtype)
        for a, b, leaf in zip(offsets[:-1], offsets[1:], leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, rebuilt)


def initial_state(problem: Problem) -> tuple[Params, Any, jax.Array]:
    """Parameters, optimiser state and random key at step 0."""
    key = jax.random.key(problem.config.seed)
    init_key, run_key = jax.random.split(key)
    params = problem.model.init(init_key, problem.data.input_shape)
    return params, problem.optimizer.init(params), run_key


class _ContextFunctions(NamedTuple):
    """A problem's training data as arrays, its full-batch losses and, compiled, its Γ and η
    and the loss gradient."""

    x: jax.Array
    y: jax.Array
    loss: Callable[..., jax.Array]  # (x, y, gamma, params) -> loss
    static_loss: Callable[..., jax.Array]  # (x, y, params) -> static loss
    schedules: Callable[[jax.Array], tuple[jax.Array, jax.Array]]  # step -> (Γ, η)
    gradient: Callable[..., Params]  # (x, y, gamma, params) -> gradient of loss


_CONTEXT_FUNCTIONS: collections.OrderedDict = collections.OrderedDict()
_PROBLEMS: collections.OrderedDict = collections.OrderedDict()
#: Problems (with their training data) kept by :func:`problem_of` (``restore``,
#: ``analysis.map_checkpoints``), and the device copies of their data kept by :func:`context`.
KEPT_PROBLEMS = 4


def _context_functions(problem: Problem, tracing: bool) -> _ContextFunctions:
    """The data and functions of :func:`context`, made once per problem outside a trace.

    Reused while the problem's functions and data are the same objects (``restore`` reuses the
    problem of a configuration), so a loop over checkpoints compiles Γ and the gradient once
    and the curvature functions, whose loss function is then the same ``Partial``, reuse
    their programs too.
    """
    apply, dtype = problem.model.apply, problem.dtype

    def make(compile_whole: bool) -> _ContextFunctions:
        def loss(x: jax.Array, y: jax.Array, gamma: jax.Array, p: Params) -> jax.Array:
            return problem.loss(apply(p, x), y, gamma)

        def static_loss(x: jax.Array, y: jax.Array, p: Params) -> jax.Array:
            return problem.static_loss(apply(p, x), y)

        def schedules(step: jax.Array) -> tuple[jax.Array, jax.Array]:
            return (
                problem.schedule(step).astype(dtype),
                jnp.asarray(problem.learning_rate(step), dtype),
            )

        x = jnp.asarray(problem.data.x_train, dtype)
        y = jnp.asarray(problem.data.y_train)
        gradient = jax.grad(loss, argnums=3)
        if not compile_whole:
            return _ContextFunctions(x, y, loss, static_loss, schedules, gradient)
        # Called outside a trace, JAX compiled each primitive on its own (restoring a
        # checkpoint spent 3.4 s on them, 107 programs).
        return _ContextFunctions(x, y, loss, static_loss, jax.jit(schedules), jax.jit(gradient))

    if tracing:  # part of the caller's program; its functions may hold tracers
        return make(compile_whole=False)
    key = (problem.loss, problem.static_loss, apply, problem.schedule, problem.learning_rate)
    # The data by identity: the entry's closure holds the problem, so the ids stay its own.
    key = (*key, id(problem.data.x_train), id(problem.data.y_train), np.dtype(dtype).name)
    return cached(_CONTEXT_FUNCTIONS, key, lambda: make(True), size=KEPT_PROBLEMS)


def problem_of(config: TrainConfig) -> Problem:
    """``build(config)``, the same problem again for a configuration seen recently.

    One problem per configuration (the :data:`KEPT_PROBLEMS` most recent; ``output`` aside, the
    64-bit mode compared): restoring checkpoint after checkpoint, or analysing a run
    again, then reuses the compiled programs of its context, of the curvature functions given
    its loss, and of the diagnostics evaluated on it. The problem's ``config`` is ``config``.
    """
    key = (config.replace(output=None), bool(jax.config.jax_enable_x64))
    problem = cached(_PROBLEMS, key, lambda: build(config), size=KEPT_PROBLEMS)
    return problem._replace(config=config)


def context(
    problem: Problem, params: Params, step: jax.typing.ArrayLike, grads: Params | None = None
) -> Context:
    """The :class:`Context` of ``params`` at ``step``: full-batch loss with Γ(step) applied.

    ``grads`` (the gradient of that loss) is computed when not given. ``loss_fn`` and
    ``static_loss_fn`` are ``jax.tree_util.Partial`` objects holding the data and Γ as
    arrays, so curvature functions given them compile one program per problem, not one per
    step.
    """
    functions = _context_functions(problem, traced((params, step, grads)))
    x, y = functions.x, functions.y  # moved to the device once per problem
    gamma, learning_rate = functions.schedules(step)
    if grads is None:
        grads = functions.gradient(x, y, gamma, params)
    return Context(
        params,
        problem.model.apply,
        jax.tree_util.Partial(functions.loss, x, y, gamma),
        jax.tree_util.Partial(functions.static_loss, x, y),
        grads,
        x,
        y,
        problem.data,
        jnp.asarray(step),
        gamma,
        learning_rate,
        problem.config,
    )


NamedMetrics = list[tuple[str, Metric]]

#: Dimensions and variables every run file has besides the per-step records (RunWriter):
#: metric names must differ from them, checked before any file is created.
RUN_FILE_DIMS = {STEP, CHECKPOINT, CLASS, PARAM, OPT_PARAM, KEY_WORD}
RUN_FILE_NAMES = {*RUN_FILE_DIMS, "checkpoint_step", "params", "opt_state", "rng_key"}


def metric_layout(
    problem: Problem, metrics: NamedMetrics
) -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    """Recorded variable dims and extra dim sizes of ``metrics``, found by abstract evaluation."""
    params = jax.eval_shape(lambda: initial_state(problem)[0])
    var_dims: dict[str, tuple[str, ...]] = {}
    sizes: dict[str, int] = {}
    for name, metric in metrics:

        def one(params: Params, metric: Metric = metric) -> Any:
            ctx = context(problem, params, 0)
            return metric.update(ctx, metric.init(ctx))[0]

        try:
            values = jax.eval_shape(one, params)
        except ValueError as error:  # the metric rejected this problem (e.g. k > P)
            raise ValueError(f"metric {name!r} cannot run on this model: {error}") from error
        except Exception as error:
            raise ValueError(
                f"metric {name!r} cannot run inside the trainer's compiled loop: "
                f"{type(error).__name__}: {str(error).splitlines()[0]} Online metrics must be "
                "traceable by jax.jit (no Python control flow on values, no boolean masks); "
                "analysis.map_checkpoints also runs plain Python functions post hoc."
            ) from error
        check_numbers(name, metric, values)
        for var, dims in dims_of(name, metric, values).items():
            var_dims[var] = dims
            shape = jnp.shape(variables(name, metric, values)[var])
            for dim, size in zip(dims, shape, strict=True):
                if sizes.setdefault(dim, size) != size:
                    raise ValueError(
                        f"dimension {dim!r} has size {sizes[dim]} in one metric and {size} in "
                        f"{name!r}; give the dimensions distinct names."
                    )
    check_names(list(var_dims), {*STEP_VARIABLES, *RUN_FILE_NAMES})
    num_classes = problem.data.num_classes
    if sizes.get(CLASS, num_classes) != num_classes:
        raise ValueError(
            f"metric dimension 'class' has size {sizes[CLASS]}, but the run has {num_classes} "
            "classes; name the dimension otherwise."
        )
    taken = sorted(set(sizes) & (RUN_FILE_DIMS - {CLASS}))
    if taken:
        raise ValueError(
            f"metric dimension name(s) {taken} clash with dimensions every run file has "
            f"({sorted(RUN_FILE_DIMS)}; 'class' may be used with one entry per class); "
            "choose other names."
        )
    return var_dims, sizes


def accuracy(outputs: jax.Array, labels: jax.Array, dtype: Any) -> jax.Array:
    """Fraction of samples whose largest output is their label, computed in ``dtype`` (the mean
    of a bool array is float32 even under 64-bit mode)."""
    return jnp.mean(jnp.argmax(outputs, -1) == labels, dtype=dtype)


def make_step(
    problem: Problem, metrics: NamedMetrics = (), *, summary_every: int | None = None
) -> Callable:
    """The per-step function ``(carry, step) -> (carry, records)`` scanned by the trainer.

    ``carry = (params, opt_state, key, metric_states, hyper)`` (``hyper`` is constant; it is
    in the carry so that ``jax.vmap`` can batch runs with different hyperparameters). Records
    hold the loss minimised at this
    step, the static loss and accuracy of the same outputs, Γ, the learning rate, the gradient
    norm, validation loss/accuracy on eval steps (NaN elsewhere), and each metric's values on
    steps that are multiples of ``track_every`` (NaN elsewhere).

    ``summary_every`` (a multiple of ``eval_every``; used by sweeps that keep only summaries):
    the static loss, train accuracy and gradient norm are then computed only on multiples of it
    and are NaN elsewhere, and so are the validation metrics; the minimised loss (divergence
    detection), Γ and the learning rate are still recorded at every step.
    """
    config, dtype = problem.config, problem.dtype
    if summary_every is not None and (
        not is_integer(summary_every) or summary_every < 1 or summary_every % config.eval_every
    ):
        raise ValueError(
            f"summary_every must be None or a positive multiple of eval_every={config.eval_every} "
            f"(got {summary_every!r})."
        )
    x = jnp.asarray(problem.data.x_train, dtype)
    y = jnp.asarray(problem.data.y_train)
    x_val = jnp.asarray(problem.data.x_val, dtype)
    y_val = jnp.asarray(problem.data.y_val)
    apply, loss, static_loss = problem.model.apply, problem.loss, problem.static_loss
    num_train, batch_size = x.shape[0], config.batch_size
    metrics = list(metrics)

    def evaluate(params: Params) -> tuple[jax.Array, jax.Array]:
        out = apply(params, x_val)
        return static_loss(out, y_val), accuracy(out, y_val, dtype)

    def skip_eval(params: Params) -> tuple[jax.Array, jax.Array]:
        del params
        nan = jnp.asarray(jnp.nan, dtype)
        return nan, nan

    def observe(out: jax.Array, yb: jax.Array, grads: Params) -> dict:
        return {
            "static_loss": static_loss(out, yb),
            "train_accuracy": accuracy(out, yb, dtype),
            "grad_norm": tree_norm(grads).astype(dtype),
        }

    def summarise(params: Params, out: jax.Array, yb: jax.Array, grads: Params) -> dict:
        val_loss, val_acc = evaluate(params)
        return {**observe(out, yb, grads), "val_loss": val_loss, "val_accuracy": val_acc}

    def track(ctx: Context, states: tuple) -> tuple[dict[str, jax.Array], tuple]:
        records, new_states = {}, []
        for (name, metric), state in zip(metrics, states, strict=True):
            values, state = metric.update(ctx, state)
            records.update(as_record(variables(name, metric, values), dtype))
            new_states.append(state)
        return records, tuple(new_states)

    def step_fn(carry: tuple, step: jax.Array) -> tuple[tuple, dict[str, jax.Array]]:
        params, opt_state, key, states, hyper = carry
        run = specialise(problem, hyper)
        gamma = run.schedule(step).astype(dtype)
        if batch_size is None:
            xb, yb = x, y
        else:
            idx = jax.random.choice(
                jax.random.fold_in(key, step), num_train, (batch_size,), replace=False
            )
            xb, yb = x[idx], y[idx]

        def objective(p: Params) -> tuple[jax.Array, jax.Array]:
            out = apply(p, xb)
            return loss(out, yb, gamma), out

        (value, out), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = run.optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if summary_every is None:
            val_loss, val_acc = jax.lax.cond(
                step % config.eval_every == 0, evaluate, skip_eval, params
            )
            records = {
                **observe(out, yb, grads),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
            }
        else:
            args = (params, out, yb, grads)
            shapes = jax.eval_shape(summarise, *args)
            records = jax.lax.cond(
                step % summary_every == 0, summarise, lambda *_: nan_like(shapes), *args
            )
        records.update(
            loss=value,
            gamma=gamma,
            learning_rate=jnp.asarray(run.learning_rate(step), dtype),
        )
        if metrics:
            ctx = context(run, params, step, grads if batch_size is None else None)
            if config.track_every == 1:
                tracked, states = track(ctx, states)
            else:
                shapes = jax.eval_shape(lambda st: track(ctx, st), states)[0]
                tracked, states = jax.lax.cond(
                    step % config.track_every == 0,
                    lambda st: track(ctx, st),
                    lambda st: (nan_like(shapes), st),
                    states,
                )
            records.update(tracked)
        return (new_params, opt_state, key, states, hyper), records

    return step_fn


def init_metric_states(problem: Problem, metrics: NamedMetrics, params: Params) -> tuple:
    """Each metric's initial state, from the context of step 0."""
    if not metrics:
        return ()
    ctx = context(problem, params, 0)
    return tuple(metric.init(ctx) for _, metric in metrics)


def builtin_metrics(config: TrainConfig) -> NamedMetrics:
    """The diagnostics the configuration asks for (Hessian top-k, projection, NTK top-k)."""
    named: NamedMetrics = []
    if config.hessian_top_k:
        options = {} if config.hessian_tol is None else {"tol": float(config.hessian_tol)}
        metric = hessian_metric(config.hessian_top_k, projection=config.projection, **options)
        named.append(("hessian", metric))
    if config.ntk_top_k:
        named.append(("ntk", ntk_metric(config.ntk_top_k)))
    return named


def _chunk_bounds(config: TrainConfig) -> list[tuple[int, int]]:
    """[start, stop) of each scan chunk; chunks also break at every checkpoint step."""
    cuts = set(range(0, config.steps, config.chunk_steps))
    cuts |= set(range(0, config.steps, config.checkpoint_every))
    edges = [*sorted(cuts), config.steps]
    return list(itertools.pairwise(edges))


def _first_nonfinite(loss: np.ndarray) -> int | None:
    bad = np.flatnonzero(~np.isfinite(loss))
    return int(bad[0]) if bad.size else None


def train(
    config: TrainConfig | None = None,
    *,
    metrics: Mapping[str, Metric | Callable[[Context], Any]] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> xr.Dataset:
    """Train the run described by ``config`` and return its records as an ``xarray.Dataset``.

    The run is written incrementally to ``config.output`` when set (to a temporary file
    otherwise), chunk by chunk; the returned Dataset is that file, loaded into memory. A
    non-finite loss stops the run with ``status="diverged"``, keeping every record up to and
    including the first non-finite step. ``dtype="float64"`` runs in 64-bit without the caller
    touching JAX flags.

    Args:
      config: the run (``TrainConfig()`` if None).
      metrics: named per-step diagnostics ``{"name": fn}`` with ``fn(ctx) -> value`` (or a
        :class:`Metric`), evaluated inside the scan every ``config.track_every`` steps and
        recorded like the built-in variables (see ``training._metrics``). Their names are
        listed in the run file's ``metrics`` attribute.
      overwrite: replace an existing ``config.output`` and delete its post-hoc siblings
        ``RUN.<kind>.nc`` (refused otherwise, so no data is lost).
      progress: optional callback ``progress(steps_done, steps_total, latest_records)``.
    """
    config = TrainConfig() if config is None else config
    if metrics is not None and not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a mapping {{'name': fn}} (got a {type(metrics).__name__}); each "
            "name becomes the recorded variable's."
        )
    if config.output is not None:
        out = Path(config.output)
        if out.exists() and not overwrite:
            raise FileExistsError(
                f"output {str(out)!r} already exists; choose another path or pass overwrite=True "
                "(--overwrite on the command line) to replace it."
            )
        if out.exists() and out.is_dir():
            raise IsADirectoryError(f"output {str(out)!r} is a directory; give a file path.")
    with precision(config.dtype):
        prepared = _prepare(config, metrics or {})  # user errors surface before any file exists
        if config.output is None:
            fd, tmp = tempfile.mkstemp(suffix=".nc", prefix="dynloss-run-")
            os.close(fd)
            try:
                _run(prepared, Path(tmp), progress, overwrite=True)
                return _load(tmp)
            finally:
                os.unlink(tmp)
        # With overwrite, the old run's post-hoc results are deleted once the new file is open
        # (other runs that share the name's prefix are not touched).
        _run(prepared, Path(config.output), progress, overwrite=overwrite)
        return _load(config.output)


def _siblings_or_none(path: Path) -> list[Path]:
    """The post-hoc results of the run at ``path``; none if it is not a readable run file."""
    try:
        return sibling_files(path)
    except (OSError, ValueError, RuntimeError):
        return []


class _Prepared(NamedTuple):
    problem: Problem
    metrics: NamedMetrics
    layout: tuple[dict[str, tuple[str, ...]], dict[str, int]]
    run_chunk: Callable
    user_metrics: tuple  # the caller's objects, kept so their ids stay unique in the cache


_PREPARED: collections.OrderedDict = collections.OrderedDict()

COMPILED_CACHE_SIZE = 16
"""Compiled programs kept per process by ``train`` and by batched runs (least recently used)."""


def _prepare(config: TrainConfig, metrics: Mapping[str, Any]) -> _Prepared:
    """Problem, metrics and the compiled chunk of ``config``, reused across ``train`` calls.

    Runs that differ only in ``output`` (and use the same metric objects) share one compiled
    program, so repeated runs do not pay the compilation again. Without user metrics, runs
    that differ only in the :data:`HYPER_DEFAULTS` fields (a learning-rate study) share it too:
    those values are the program's arguments (``Hyper``, in the scan's carry). User metrics
    keep a program per configuration, as they may read ``ctx.config``; the built-in ones read
    none of those fields.
    """
    program = config.replace(output=None)
    if not metrics:
        program = program.replace(**HYPER_DEFAULTS)
    key = (
        program,
        tuple((name, id(m)) for name, m in metrics.items()),
        bool(jax.config.jax_enable_x64),
    )
    prepared = cached(
        _PREPARED, key, lambda: _compile_run(config, metrics), size=COMPILED_CACHE_SIZE
    )
    problem = prepared.problem._replace(config=config)
    return prepared._replace(problem=specialise(problem, hyper_of(config, problem.dtype)))


def _compile_run(config: TrainConfig, metrics: Mapping[str, Any]) -> _Prepared:
    named = builtin_metrics(config) + [(name, as_metric(m)) for name, m in metrics.items()]
    if config.track_every != 1 and not named:
        raise ValueError(
            f"track_every={config.track_every} has nothing to track: set hessian_top_k or "
            "ntk_top_k >= 1, or pass metrics=, or leave track_every at 1."
        )
    problem = build(config)
    if config.hessian_top_k:
        params = jax.eval_shape(lambda: initial_state(problem)[0])
        p = sum(leaf.size for leaf in jax.tree.leaves(params))
        if config.hessian_top_k > max_tracked_k(p):
            raise ValueError(
                f"hessian_top_k must be <= P/2 = {p // 2} for online tracking (got "
                f"{config.hessian_top_k}; P = {p} parameters): the warm-started block tracker "
                "needs room for a residual block beside the vectors. Track fewer, or pass "
                f"metrics={{'hessian': training.hessian_metric(k, method='lanczos', "
                f"num_iterations={p})}}."
            )
    layout = metric_layout(problem, named)
    step_fn = make_step(problem, named)

    @partial(jax.jit, static_argnums=2)
    def run_chunk(carry: tuple, start: jax.Array, length: int) -> tuple[tuple, dict]:
        return jax.lax.scan(step_fn, carry, start + jnp.arange(length))

    return _Prepared(problem, named, layout, run_chunk, tuple(metrics.values()))


def _load(path: str | Path) -> xr.Dataset:
    with open_run(path, siblings=False) as ds:
        return ds.load()


def open_writer(
    path: Path,
    problem: Problem,
    state: tuple[Params, Any, jax.Array],
    metrics: NamedMetrics = (),
    layout: tuple[dict[str, tuple[str, ...]], dict[str, int]] = ({}, {}),
    *,
    overwrite: bool = False,
) -> RunWriter:
    """Create the run file of ``problem`` at ``path``: the layout every run file shares.

    ``state`` is ``(params, opt_state, key)`` at step 0; ``metrics`` and their ``layout`` (from
    :func:`metric_layout`) add the tracked variables. An existing file is refused (also one
    that another process created since the caller checked) unless ``overwrite``; then the old
    run's post-hoc siblings are deleted, but only once the new file is open, so a run that
    cannot be replaced keeps its results.
    """
    siblings = _siblings_or_none(path) if overwrite and path.exists() else []
    config = problem.config
    params, opt_state, key = state
    var_dims, dim_sizes = layout
    described: dict[str, Mapping[str, str]] = {}
    for _, metric in metrics:
        described.update(metric.attrs or {})
    extra_variables = {
        var: (
            dims,
            described.get(var, {}).get(
                "long_name", f"diagnostic {var!r} (NaN where not evaluated)"
            ),
            described.get(var, {}).get("units", "1"),
        )
        for var, dims in var_dims.items()
    }
    np_dtype = np.float64 if config.dtype == "float64" else np.float32
    writer = RunWriter(
        path,
        config_json=config.to_json(),
        num_classes=problem.data.num_classes,
        param_layout=_layout(params),
        num_params=int(ravel_pytree(params)[0].size),
        opt_layout=_layout(opt_state),
        num_opt=int(_flat(opt_state, np_dtype).size),
        key_words=int(np.asarray(jax.random.key_data(key)).size),
        dtype=config.dtype,
        extra_variables=extra_variables,
        extra_dims={dim: size for dim, size in dim_sizes.items() if dim != CLASS},
        extra_attrs={"metrics": json.dumps([name for name, _ in metrics])},
        overwrite=overwrite,
    )
    for sibling in siblings:  # the old run's results describe the old run
        sibling.unlink(missing_ok=True)
    return writer


def _run(
    prepared: _Prepared, path: Path, progress: ProgressCallback | None, *, overwrite: bool
) -> None:
    problem, metrics, layout, run_chunk = prepared[:4]
    config = problem.config
    params, opt_state, key = initial_state(problem)
    np_dtype = np.float64 if config.dtype == "float64" else np.float32
    key_data = np.asarray(jax.random.key_data(key), np.uint32)
    writer = open_writer(
        path, problem, (params, opt_state, key), metrics, layout, overwrite=overwrite
    )
    carry = (params, opt_state, key, init_metric_states(problem, metrics, params), problem.hyper)
    status = "complete"
    try:
        for start, stop in _chunk_bounds(config):
            if start % config.checkpoint_every == 0:
                writer.append_checkpoint(
                    start, _flat(carry[0], np_dtype), _flat(carry[1], np_dtype), key_data
                )
            carry, records = run_chunk(carry, jnp.asarray(start), stop - start)
            records = {k: np.asarray(v) for k, v in records.items()}
            bad = _first_nonfinite(records["loss"])
            if bad is not None:
                writer.append_steps(start, {k: v[: bad + 1] for k, v in records.items()})
                writer.set_attrs(status="diverged", diverged_at_step=np.int64(start + bad))
                status = "diverged"
                break
            writer.append_steps(start, records)
            if progress is not None:
                progress(
                    stop, config.steps, {k: float(v[-1]) for k, v in records.items() if v.ndim == 1}
                )
        if status == "complete":
            writer.append_checkpoint(
                config.steps, _flat(carry[0], np_dtype), _flat(carry[1], np_dtype), key_data
            )
            writer.set_attrs(status="complete")
    except BaseException as error:
        writer.mark_failed(error)
        raise
    finally:
        writer.close()


def _resolve_run(run: xr.Dataset | str | Path) -> xr.Dataset:
    return open_run(run) if isinstance(run, str | Path) else run


def config_of(run: xr.Dataset | str | Path) -> TrainConfig:
    """The ``TrainConfig`` stored in a run file's attrs."""
    return TrainConfig.from_json(_resolve_run(run).attrs["config"])


def restore(run: xr.Dataset | str | Path, step: int) -> Restored:
    """Rebuild the model, parameters, data and loss of a run at a saved checkpoint ``step``.

    ``step`` must be one of the run's ``checkpoint_step`` values. Restoring a float64 run
    enables ``jax_enable_x64`` for the process (JAX cannot hold float64 arrays otherwise).
    """
    ds = _resolve_run(run)
    config = config_of(ds)
    saved = np.asarray(ds["checkpoint_step"].values)
    matches = np.flatnonzero(saved == step)
    if matches.size == 0:
        raise ValueError(
            f"step {step} is not a saved checkpoint of this run; saved steps are "
            f"{saved.tolist()[:8]}{' …' if saved.size > 8 else ''} (every "
            f"{config.checkpoint_every} steps and the final one)."
        )
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    problem = problem_of(config)
    layout = json.loads(ds.attrs["param_layout"])
    template = jax.eval_shape(lambda: initial_state(problem)[0])
    expected = _layout(template)
    if [entry[:2] for entry in layout] != [entry[:2] for entry in expected]:
        raise ValueError(
            "the run file's param_layout does not match the model its config builds; the file "
            "was written by an incompatible version."
        )
    # Sliced in NumPy, then moved: eager JAX slices and reshapes compile one program each.
    flat = np.asarray(ds["params"].isel(checkpoint=int(matches[0])).values, problem.dtype)
    params = jax.tree.map(jnp.asarray, unflatten(template, flat))
    ctx = context(problem, params, step)
    return Restored(
        problem.model,
        params,
        problem.data,
        ctx.loss_fn,
        ctx.static_loss_fn,
        ctx.gamma,
        int(step),
        config,
    )
