"""Per-step diagnostics ("metrics") shared by the trainer and post-hoc analysis.

A diagnostic is a function of a :class:`Context`, the state of a run at one step. The same
function runs *during* training (inside the trainer's ``lax.scan``, every ``track_every`` steps,
no host round-trip) and *after* it (``analysis.map_checkpoints`` over saved checkpoints), so a
user's diagnostic and the built-in ones (Hessian top-k, NTK, gradient projection) are peers.

A plain function ``fn(ctx) -> value`` is a stateless metric. Diagnostics that carry state from
one evaluation to the next (warm-started eigensolvers) are :class:`Metric` pairs of pure
functions, as in optax: ``state = init(ctx)`` and ``values, state = update(ctx, state)``.

Values may be a scalar, an array, or a dict of those. Recorded variable names: the metric's name
for a single value; ``f"{name}_{key}"`` for each entry of a dict (or just ``key`` when the
metric has ``prefix=False``, as the built-ins do so that their variables carry the run-file
names). Extra dimensions are named by ``Metric.dims`` (``{key: ("dim", ...)}``, key ``""`` for a
single value) or ``f"{variable}_dim_{i}"``. Values are recorded as floats of the run's dtype,
with NaN on the steps where the metric was not evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from training._config import TrainConfig
from training._data import Data


class Context(NamedTuple):
    """What a diagnostic may use at one step of a run.

    Fields:
      params: the parameters at which the step's loss was evaluated (before its update).
      apply_fn: ``apply_fn(params, x) -> outputs`` (N, C).
      loss_fn: ``loss_fn(params) -> scalar``, the full-batch training loss with Γ of this step.
      static_loss_fn: the static loss (Γ ≡ 1) on the same data.
      grads: the gradient of ``loss_fn`` at ``params`` (a pytree like ``params``).
      x, y: the training inputs and integer labels as JAX arrays.
      data: the dataset (numpy; includes the validation split).
      step: the step index (a traced integer inside the trainer).
      gamma: Γ of this step, shape (C,).
      learning_rate: the learning rate of this step's update.
      config: the run's ``TrainConfig``.
    """

    params: Any
    apply_fn: Callable[[Any, jax.Array], jax.Array]
    loss_fn: Callable[[Any], jax.Array]
    static_loss_fn: Callable[[Any], jax.Array]
    grads: Any
    x: jax.Array
    y: jax.Array
    data: Data
    step: jax.Array
    gamma: jax.Array
    learning_rate: jax.Array
    config: TrainConfig


class Metric(NamedTuple):
    """A (possibly stateful) diagnostic: ``init(ctx) -> state``, ``update(ctx, state) ->
    (values, state)``; ``dims`` names extra dimensions; ``prefix`` says whether dict entries
    are recorded as ``name_key`` (True) or ``key`` (False)."""

    init: Callable[[Context], Any]
    update: Callable[[Context, Any], tuple[Any, Any]]
    dims: Mapping[str, tuple[str, ...]] | None = None
    prefix: bool = True
    attrs: Mapping[str, Mapping[str, str]] | None = None


def stateless(
    fn: Callable[[Context], Any],
    dims: Mapping[str, tuple[str, ...]] | None = None,
) -> Metric:
    """Wrap ``fn(ctx) -> values`` as a :class:`Metric` with empty state."""

    def init(ctx: Context) -> tuple:
        del ctx
        return ()

    def update(ctx: Context, state: tuple) -> tuple[Any, tuple]:
        return fn(ctx), state

    return Metric(init, update, dims)


def as_metric(obj: Metric | Callable[[Context], Any]) -> Metric:
    """A :class:`Metric` as it is, or a plain function wrapped by :func:`stateless`."""
    if isinstance(obj, Metric):
        return obj
    if callable(obj):
        return stateless(obj)
    if isinstance(obj, Mapping):
        raise TypeError(
            "one diagnostic is expected here, not a mapping of them (train(metrics={...}) takes "
            "the mapping); evaluate each on its own, or return a dict from one function."
        )
    raise TypeError(
        f"a metric must be a function fn(ctx) or a training.Metric (got {type(obj).__name__})."
    )


def variables(name: str, metric: Metric, values: Any) -> dict[str, Any]:
    """Map a metric's returned values to recorded variable names."""
    if isinstance(values, Mapping):
        return {(f"{name}_{k}" if metric.prefix else str(k)): v for k, v in values.items()}
    return {name: values}


def check_numbers(name: str, metric: Metric, values: Any) -> None:
    """Refuse values a run file cannot hold as numbers (None, strings, objects), naming them.

    ``values`` are what the metric returned, concrete or abstract (``jax.eval_shape``).
    """
    for var, value in variables(name, metric, values).items():
        dtype = getattr(value, "dtype", None)
        kind = np.asarray(value).dtype.kind if dtype is None else np.dtype(dtype).kind
        if kind not in "biuf":
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ValueError(
                f"metric {name!r} returned {shown} for {var!r}; a diagnostic returns numbers: "
                "a scalar, an array, or a dict of them (bool, integer or float)."
            )


def dims_of(name: str, metric: Metric, values: Any) -> dict[str, tuple[str, ...]]:
    """The extra (non-step) dimension names of each recorded variable."""
    named = dict(metric.dims or {})
    out = {}
    keyed = values.items() if isinstance(values, Mapping) else [("", values)]
    for key, value in keyed:
        var = next(iter(variables(name, metric, {key: value} if key != "" else value)))
        ndim = len(np.shape(value))
        dims = tuple(named.get(key, ())) or tuple(f"{var}_dim_{i}" for i in range(ndim))
        if len(dims) != ndim:
            raise ValueError(
                f"metric {name!r} names {len(dims)} dimensions {dims} for {var!r}, whose "
                f"values have {ndim} (shape {np.shape(value)})."
            )
        out[var] = dims
    return out


def as_record(values: dict[str, Any], dtype: Any) -> dict[str, jax.Array]:
    """Values cast to the run's float dtype (so unevaluated steps can hold NaN)."""
    return {k: jnp.asarray(v).astype(dtype) for k, v in values.items()}


def nan_like(values: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.full(v.shape, jnp.nan, v.dtype) for k, v in values.items()}


def check_names(names: list[str], reserved: set[str]) -> None:
    clash = sorted(set(names) & reserved)
    if clash:
        raise ValueError(
            f"metric variable name(s) {clash} clash with variables the trainer records; "
            "choose other names."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"metric variable names must be unique (got {names}).")
