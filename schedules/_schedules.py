"""Oscillation factors Γ(t): pure, jit- and vmap-safe functions ``step -> Γ`` of shape (C,).

Definitions follow ``SCIENCE.md``. For period ``T``, amplitude ``A`` and ``C`` classes, the class
in focus at step ``t`` is ``floor(t / T) mod C``; its raw factor ``g(t mod T)`` rises from 1 to
``A`` and back to 1 within the period, every other class has raw factor 1, and the factors are
normalised so that ``sum_i Γ_i = C`` (the mean weight is 1). ``A = 1`` gives ``Γ ≡ 1`` exactly,
and so does every step ``t >= stop_after``.

The shapes differ only in ``g``:

- ``triangle``: ``g = 1 + m·τ`` for ``τ <= T/2`` and ``1 + m·(T − τ)`` after, with ``m = 2(A−1)/T``
  and ``τ = t mod T`` (the 2021 paper's schedule).
- ``sine``: ``g = 1 + (A−1)·sin²(π τ / T)`` (smooth, same end points and peak).
- ``square``: ``g = A`` for ``T/4 <= τ < 3T/4`` and 1 otherwise (centred on the triangle's peak).
- ``constant``: ``Γ ≡ 1`` (the static loss).

Amplitude, period and stop step may be Python or NumPy numbers (validated eagerly: period and
amplitude finite) or JAX arrays (traced under ``jax.vmap``/``jit``; not validated, since a traced
value has no concrete value to check).
The result has the float dtype of ``period`` and ``amplitude`` when they are arrays (so a
float32 run computes Γ in float32 whether or not 64-bit mode is on), else JAX's default float
dtype.

Precision: ``τ = t mod T`` is exact in floating point, so the only error is the period's own
rounding, which grows with the number of periods: at step 700,000 with T = 5000/3 in float32
it moved τ by 0.04 steps and Γ by up to 1e-3 (A = 70). The schedules therefore subtract
``k·period_residual`` (``period_residual = T − float32(T)``, computed from a concrete period, or
passed beside a traced float32 one as the trainer does), which brings that error to float32
rounding of τ.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable
from typing import TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

Schedule: TypeAlias = Callable[[jax.typing.ArrayLike], jax.Array]
"""A function ``step -> Γ`` returning an array of shape (num_classes,)."""

SHAPES = ("triangle", "sine", "square", "constant")


def _is_concrete(value: object) -> bool:
    """A real number known now: Python's or NumPy's scalars (not booleans, not JAX arrays)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check(num_classes: object, period: object, amplitude: object, stop_after: object) -> int:
    """Validate the concrete parameters; return ``num_classes`` as a Python int."""
    try:
        classes = operator.index(num_classes)
    except TypeError:
        classes = 0
    if isinstance(num_classes, bool) or classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1 (got {num_classes!r}).")
    if _is_concrete(amplitude) and not (amplitude >= 1 and math.isfinite(amplitude)):
        raise ValueError(
            f"amplitude must be finite and >= 1 (got {amplitude!r}); amplitude 1 is the static "
            "loss."
        )
    if _is_concrete(period) and not (period > 0 and math.isfinite(period)):
        raise ValueError(f"period must be a finite number of steps > 0 (got {period!r}).")
    if _is_concrete(stop_after) and not stop_after >= 0:
        raise ValueError(f"stop_after must be a step >= 0 or None for never (got {stop_after!r}).")
    return classes


def _oscillating(
    raw: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    num_classes: int,
    period: object,
    amplitude: object,
    stop_after: object,
    period_residual: object,
) -> Schedule:
    """Build a schedule from the raw factor ``raw(tau, period, amplitude)`` of the focus class."""
    num_classes = _check(num_classes, period, amplitude, stop_after)

    dtype = jnp.result_type(float, period, amplitude)
    if period_residual is None:
        period_residual = float_residual(period, dtype) if _is_concrete(period) else 0.0

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = jnp.asarray(step, dtype)
        T = jnp.asarray(period, dtype)
        A = jnp.asarray(amplitude, dtype)
        tau, k = _phase(t, T, jnp.asarray(period_residual, dtype))
        focus = jnp.mod(k, num_classes).astype(jnp.int32)
        g = raw(tau, T, A)
        raw_factors = 1.0 + (g - 1.0) * jax.nn.one_hot(focus, num_classes, dtype=dtype)
        gamma = num_classes * raw_factors / jnp.sum(raw_factors)
        if stop_after is not None:
            gamma = jnp.where(t >= jnp.asarray(stop_after, dtype), jnp.ones_like(gamma), gamma)
        return gamma

    return schedule


def float_residual(period: float, dtype: object) -> float:
    """``period − dtype(period)``, the part of a period that ``dtype`` cannot hold, in float64."""
    return float(np.float64(period) - np.float64(np.asarray(period, dtype)))


def _phase(t: jax.Array, T: jax.Array, dT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(τ, k)`` with ``t = k·(T + dT) + τ`` and ``0 <= τ < T``: ``mod`` is exact, so τ is
    corrected by the k periods' share of the residual dT, then moved back into [0, T)."""
    coarse = jnp.mod(t, T)
    k = jnp.round((t - coarse) / T)
    tau = coarse - k * dT
    below, above = tau < 0, tau >= T
    tau = jnp.where(below, tau + T, jnp.where(above, tau - T, tau))
    k = jnp.where(below, k - 1, jnp.where(above, k + 1, k))
    return tau, k


def _triangle_raw(tau: jax.Array, T: jax.Array, A: jax.Array) -> jax.Array:
    m = 2.0 * (A - 1.0) / T
    # The falling half as 1 + m (T - τ): T - τ is exact for τ >= T/2, where the algebraically
    # equal 2A - m τ - 1 cancels (up to 1.8e-6 relative error in float32 at A = 70).
    return 1.0 + m * jnp.where(tau <= T / 2, tau, T - tau)


def _sine_raw(tau: jax.Array, T: jax.Array, A: jax.Array) -> jax.Array:
    return 1.0 + (A - 1.0) * jnp.sin(jnp.pi * tau / T) ** 2


def _square_raw(tau: jax.Array, T: jax.Array, A: jax.Array) -> jax.Array:
    return jnp.where((tau >= T / 4) & (tau < 3 * T / 4), A, jnp.ones_like(tau))


def triangle(
    num_classes: int,
    period: float | jax.Array,
    amplitude: float | jax.Array,
    *,
    stop_after: int | jax.Array | None = None,
    period_residual: float | jax.Array | None = None,
) -> Schedule:
    """Triangle oscillation of the 2021 paper: the focus class's factor goes 1 → A → 1 per period.

    Args:
      num_classes: number of classes C (>= 1).
      period: steps T spent on each class (> 0).
      amplitude: peak raw factor A (>= 1; 1 gives the static loss).
      stop_after: from this step on Γ ≡ 1 (None: never stop).
      period_residual: ``T − float32(T)`` beside a traced float32 period (see the module's
        "Precision"); None: computed from a concrete period, 0 for a traced one.

    Returns:
      ``schedule(step) -> Γ`` of shape (C,), ``sum(Γ) == C``, with values in
      ``[C/(A+C−1), C·A/(A+C−1)]``.
    """
    return _oscillating(_triangle_raw, num_classes, period, amplitude, stop_after, period_residual)


def sine(
    num_classes: int,
    period: float | jax.Array,
    amplitude: float | jax.Array,
    *,
    stop_after: int | jax.Array | None = None,
    period_residual: float | jax.Array | None = None,
) -> Schedule:
    """Smooth oscillation ``g = 1 + (A−1) sin²(π τ/T)``; otherwise as :func:`triangle`."""
    return _oscillating(_sine_raw, num_classes, period, amplitude, stop_after, period_residual)


def square(
    num_classes: int,
    period: float | jax.Array,
    amplitude: float | jax.Array,
    *,
    stop_after: int | jax.Array | None = None,
    period_residual: float | jax.Array | None = None,
) -> Schedule:
    """Square oscillation: ``g = A`` on the middle half of each period, 1 elsewhere."""
    return _oscillating(_square_raw, num_classes, period, amplitude, stop_after, period_residual)


def constant(num_classes: int) -> Schedule:
    """The static schedule ``Γ ≡ 1`` of shape (num_classes,)."""
    num_classes = _check(num_classes, None, None, None)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        del step
        return jnp.ones((num_classes,), jnp.result_type(float))

    return schedule


def make_schedule(
    shape: str,
    num_classes: int,
    period: float | jax.Array,
    amplitude: float | jax.Array,
    *,
    stop_after: int | jax.Array | None = None,
    period_residual: float | jax.Array | None = None,
) -> Schedule:
    """Build the schedule named ``shape`` (one of :data:`SHAPES`)."""
    factories = {"triangle": triangle, "sine": sine, "square": square}
    if shape == "constant":
        return constant(num_classes)
    if shape not in factories:
        raise ValueError(f"schedule must be one of {SHAPES} (got {shape!r}).")
    return factories[shape](
        num_classes, period, amplitude, stop_after=stop_after, period_residual=period_residual
    )
