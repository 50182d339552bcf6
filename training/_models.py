"""Models as pure ``(init, apply)`` pairs over pytrees of parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from curvature._checks import integer_at_least, is_integer

Params = Any
"""A pytree of arrays: for :func:`mlp`, a list of ``{"w": (fan_in, fan_out), "b": (fan_out,)}``."""

PARAMETERIZATIONS = ("standard", "ntk")
INITS = ("lecun", "glorot")


class Model(NamedTuple):
    """``init(key, input_shape) -> params`` and ``apply(params, x) -> outputs`` (N, C)."""

    init: Callable[[jax.Array, tuple[int, ...]], Params]
    apply: Callable[[Params, jax.Array], jax.Array]


_FULL = jax.lax.Precision.HIGHEST

NARROW_OUTPUTS = 8
"""Layers with at most this many outputs are computed column by column (:func:`_dense`)."""


def _dense(h: jax.Array, w: jax.Array) -> jax.Array:
    """``h @ w`` at full precision, with a narrow ``w`` (the readout) as a stack of
    matrix-vector products.

    Full precision whatever the caller's default: on GPUs XLA multiplies float32 matrices in
    TF32 (10-bit mantissa) by default; measured on an H200, a vmapped batch of two runs then
    drifted 6e-4 (relative) from the same runs alone within 120 steps, and at full precision
    they agreed there within 1e-5 (1e-6 on CPU). The gradient's and the Hessian-vector
    products' matrix products inherit the setting. On CPU it changes nothing.

    Same mathematics, different XLA program: on CPU the gradient of ``h @ w`` for a
    ``(fan_in, ≤ 8)`` matrix is emitted as a matrix product with a tiny minor output dimension,
    which measured ~2.6× slower than the gradient of the column-by-column form at the spiral's
    readout (300×100 by 100×3: 28 µs vs 11 µs per forward+backward), so a whole training step at
    width 100 runs ~1.4× faster (``benchmarks/train_throughput.py``).
    """
    if w.shape[-1] > NARROW_OUTPUTS:
        return jnp.matmul(h, w, precision=_FULL)
    return jnp.stack([jnp.matmul(h, w[:, c], precision=_FULL) for c in range(w.shape[-1])], axis=-1)


def default_b_std(init: str, parameterization: str) -> float:
    """The bias scale used when ``b_std`` is None (see :func:`mlp`)."""
    if parameterization == "ntk":
        return 0.1
    return 0.01 if init == "glorot" else 0.0


def mlp(
    hidden_widths: Sequence[int],
    num_classes: int,
    *,
    parameterization: str = "standard",
    init: str = "lecun",
    w_std: float = 1.0,
    b_std: float | None = None,
    dtype: Any = jnp.float32,
) -> Model:
    """Fully connected ReLU network: ``len(hidden_widths)`` hidden layers, then a linear readout.

    Every layer has a weight matrix and a *trainable* bias (the bug that broke the original
    notebook was silently losing the biases).

    Parameterisations (``fan_in`` is the layer's input size):

    - ``"standard"`` with ``init="lecun"`` (default): ``W ~ N(0, w_std²/fan_in)``,
      ``b ~ N(0, b_std²)`` (``b_std`` defaults to 0: biases start at zero), ``h = xW + b``. This is
      what the 2021 notebook got from neural-tangents' ``stax.Dense(parameterization="standard")``.
    - ``"standard"`` with ``init="glorot"``: ``W`` Glorot normal (truncated, as
      ``jax.example_libraries.stax``) times ``w_std``, ``b ~ N(0, b_std²)`` with ``b_std``
      defaulting to 0.01: the authors' updated notebook.
    - ``"ntk"``: ``W ~ N(0, 1)``, ``b ~ N(0, 1)``, ``h = (w_std/√fan_in)·xW + b_std·b`` with
      ``b_std`` defaulting to 0.1 (it must be > 0, or the bias would get no gradient).

    Returns:
      :class:`Model`; ``apply(params, x)`` maps (N, *input_shape) to (N, num_classes).
    """
    widths = tuple(hidden_widths)
    for w in widths:
        if not is_integer(w) or w < 1:
            raise ValueError(f"hidden_widths must be integers >= 1 (got {widths!r}).")
    num_classes = integer_at_least("num_classes", num_classes, 1)
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {PARAMETERIZATIONS} (got {parameterization!r})."
        )
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS} (got {init!r}).")
    if parameterization == "ntk" and init != "lecun":
        raise ValueError(
            f"init={init!r} applies to the standard parameterisation only; the NTK "
            "parameterisation draws W and b from N(0, 1) (use init='lecun')."
        )
    if not w_std > 0:
        raise ValueError(f"w_std must be > 0 (got {w_std!r}).")
    if b_std is None:
        b_std = default_b_std(init, parameterization)
    if not b_std >= 0:
        raise ValueError(f"b_std must be >= 0 (got {b_std!r}).")
    if parameterization == "ntk" and b_std == 0:
        raise ValueError(
            "b_std must be > 0 with parameterization='ntk' (got 0): the bias enters as b_std·b, "
            "so b_std = 0 would silently remove the biases' gradient."
        )
    sizes = (*widths, num_classes)
    ntk = parameterization == "ntk"
    glorot = jax.nn.initializers.glorot_normal()

    def init_fn(key: jax.Array, input_shape: tuple[int, ...]) -> Params:
        fan_in = 1
        for d in input_shape:
            fan_in *= int(d)
        params = []
        for fan_out in sizes:
            key, wkey, bkey = jax.random.split(key, 3)
            if ntk:
                w = jax.random.normal(wkey, (fan_in, fan_out), dtype)
                b = jax.random.normal(bkey, (fan_out,), dtype)
            else:
                if init == "glorot":
                    w = w_std * glorot(wkey, (fan_in, fan_out), dtype)
                else:
                    w = (w_std / jnp.sqrt(fan_in)) * jax.random.normal(
                        wkey, (fan_in, fan_out), dtype
                    )
                b = b_std * jax.random.normal(bkey, (fan_out,), dtype)
            params.append({"w": w.astype(dtype), "b": b.astype(dtype)})
            fan_in = fan_out
        return params

    def apply_fn(params: Params, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(params):
            if ntk:
                scale = w_std / jnp.sqrt(jnp.asarray(layer["w"].shape[0], h.dtype))
                h = scale * _dense(h, layer["w"]) + b_std * layer["b"]
            else:
                h = _dense(h, layer["w"]) + layer["b"]
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        return h

    return Model(init_fn, apply_fn)
