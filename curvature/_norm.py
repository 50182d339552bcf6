"""Euclidean norms whose squares neither underflow nor overflow.

``jnp.linalg.norm`` sums plain squares: in float32 a vector whose entries are below about
1e-19 has squares below the smallest normal number, which XLA flushes to zero, so its norm
comes out 0. A residual of a Hessian of scale 1e-15 is that small: a cross-entropy Hessian
shrinks like exp(-margin) once the softmax saturates (margins above about 35), and a user's
loss may be in small units. A residual norm of 0 would report every warm start as converged,
and Lanczos would read every step as a breakdown. The norms here first divide by the largest
power of two not above the largest magnitude (exact, as a division by a power of two; kept
within the range whose reciprocal is a normal number, as XLA divides by multiplying with the
reciprocal), so the squares lie in [0, 64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def power_of_two(size: jax.Array) -> jax.Array:
    """The largest power of two not above ``|size|`` (element-wise), kept where its reciprocal
    is a normal number (XLA divides by multiplying with the reciprocal); 1 where ``size`` is
    0, infinite or NaN. Dividing by it is exact."""
    size = jnp.abs(size)
    info = jnp.finfo(size.dtype)
    _, exponent = jnp.frexp(size)
    exponent = jnp.clip(exponent - 1, info.minexp + 1, info.maxexp - 3)
    usable = jnp.isfinite(size) & (size > 0)
    return jnp.where(usable, jnp.ldexp(jnp.ones_like(size), exponent), 1.0)


def _scaled(x: jax.Array, axis: int | tuple[int, ...] | None) -> tuple[jax.Array, jax.Array]:
    """``(x / s, s)`` with ``s`` (keepdims) the power of two of the largest magnitude."""
    scale = power_of_two(jnp.max(jnp.abs(x), axis=axis, keepdims=True))
    return x / scale, scale


def _length(scaled: jax.Array, axis: int | tuple[int, ...] | None) -> jax.Array:
    """Plain Euclidean length (keepdims) of an already scaled array."""
    return jnp.sqrt(jnp.sum(jnp.square(scaled), axis=axis, keepdims=True))


def norm(
    x: jax.Array, axis: int | tuple[int, ...] | None = None, *, keepdims: bool = False
) -> jax.Array:
    """``||x||_2`` along ``axis`` (all axes when None), as ``jnp.linalg.norm`` for vectors,
    accurate at any scale the dtype represents: 0 for zeros, inf when an entry is infinite,
    NaN when one is NaN."""
    scaled, scale = _scaled(x, axis)
    total = scale * _length(scaled, axis)
    return total if keepdims else jnp.squeeze(total, axis=axis)


def tree_norm(tree) -> jax.Array:
    """Global ``||tree||_2`` over every leaf of a pytree of arrays (as ``optax.tree.norm``),
    accurate at any scale: the leaves are divided by one power of two, that of the largest
    magnitude in any leaf. 0 for a pytree without leaves."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.zeros(())
    largest = jnp.max(jnp.stack([jnp.max(jnp.abs(leaf), initial=0) for leaf in leaves]))
    scale = power_of_two(largest)
    total = sum(jnp.sum(jnp.square(leaf / scale)) for leaf in leaves)
    return scale * jnp.sqrt(total)


def unit(x: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """``x / ||x||`` along ``axis`` at any scale; zero stays zero."""
    scaled, _ = _scaled(x, axis)
    length = _length(scaled, axis)
    return scaled / jnp.where(length > 0, length, 1.0)
