"""Split the loss gradient into components along given (Hessian) eigenvectors."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from curvature._compiled import compiled
from curvature._hessian import LossFn, PyTree
from curvature._norm import norm


class GradientProjection(NamedTuple):
    """The gradient g split along orthonormal directions v_i and the rest.

    Attributes:
        components: (k,) signed components ``g . v_i``.
        normalized: (k,) ``|g . v_i| / |g|`` (the run file's ``grad_projection``).
        perpendicular: scalar ``|g_perp| / |g|``, the part of g outside span(v_i) (the run
            file's ``grad_perpendicular``). ``sum(normalized**2) + perpendicular**2 == 1``.
        grad_norm: scalar ``|g|``.
    """

    components: jax.Array
    normalized: jax.Array
    perpendicular: jax.Array
    grad_norm: jax.Array


@compiled(dynamic=("params", "grads"))
def gradient_projection(
    loss_fn: LossFn, params: PyTree, eigenvectors: jax.Array, *, grads: PyTree | None = None
) -> GradientProjection:
    """Project ``grad loss_fn(params)`` onto the rows of ``eigenvectors``.

    Args:
        loss_fn: scalar function of the parameters.
        params: parameter pytree (P entries).
        eigenvectors: (k, P) orthonormal rows in the ``ravel_pytree(params)`` layout, e.g.
            ``Eigen.eigenvectors`` (k may be 0).
        grads: the gradient of ``loss_fn`` at ``params`` when the caller already has it (a
            training step does); computed otherwise.

    Returns:
        :class:`GradientProjection`. The perpendicular part is computed from the residual
        vector ``g - V^T V g`` (not from ``1 - sum``), so the quadrature identity checks the
        orthonormality of the rows. A zero gradient gives NaN ratios.
    """
    flat, _ = ravel_pytree(params)
    p = flat.shape[0]
    if eigenvectors.ndim != 2 or eigenvectors.shape[1] != p:
        raise ValueError(
            f"eigenvectors must have shape (k, P) with P = {p}, the number of parameters "
            f"(got shape {eigenvectors.shape})."
        )
    g = ravel_pytree(jax.grad(loss_fn)(params) if grads is None else grads)[0]
    v = eigenvectors.astype(g.dtype)
    components = v @ g
    rest = g - components @ v
    length = norm(g)
    return GradientProjection(
        components=components,
        normalized=jnp.abs(components) / length,
        perpendicular=norm(rest) / length,
        grad_norm=length,
    )
