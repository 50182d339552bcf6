"""The kernel of the linearised residual dynamics for each (dynamical) loss.

Derivation (the project's statement; mean-form losses as in SCIENCE.md). Write the loss as
``F(theta) = (1/N) sum_j l_j(f_j)`` with ``f_j = apply_fn(params, x)[j]`` in R^C, per-sample
gradient ``g_j = dl_j/df_j`` and per-sample output Hessian ``h_j = d^2 l_j/df_j^2`` (C, C).
One gradient-descent step ``theta' = theta - eta grad F = theta - (eta/N) J^T g`` moves the
outputs, to first order, by ``f' = f - (eta/N) Theta g`` with ``Theta = J J^T`` the untraced
NTK (N*C, N*C). Linearising ``g`` around a reference output ``f*``,
``g(f) ~ g(f*) + H (f - f*)`` with ``H = blockdiag(h_1, ..., h_N)``, the deviation
``delta = f - f*`` obeys ``delta' = (I - (eta/N) Theta H) delta + const``. ``Theta H`` is
similar to the symmetric PSD matrix

    K = H^{1/2} Theta H^{1/2},   K[j, k] = h_j^{1/2} Theta[j, k] h_k^{1/2}   (C x C blocks),

(``Theta H = (Theta H^{1/2}) H^{1/2}`` and ``K = H^{1/2} (Theta H^{1/2})`` share their
eigenvalues), so each eigenvalue ``lambda`` of ``K`` gives the per-step factor
``1 - eta lambda / N`` (:func:`stability_factors`). ``K / N = H^{1/2} J J^T H^{1/2} / N`` also
shares its nonzero eigenvalues with the Gauss-Newton matrix in parameter space,
``G = J^T H J / N = (1/N) sum_j J_j^T h_j J_j``: the part of the loss Hessian without the
network's second derivatives. ``K`` is that Gauss-Newton matrix written in function space.

Per-sample output Hessians ``h_j`` (Gamma = ``weights``, shape (C,); ``p_j = softmax(f_j)``):

========  ==========================================  =================================
loss      per-sample loss ``l_j``                      ``h_j``
========  ==========================================  =================================
mse       ``1/2 ||f_j - e_y||^2``                       ``I``  (so K = Theta, exactly)
dmse1     ``1/2 Gamma_y ||f_j - e_y||^2``               ``Gamma_y I``
dmse2     ``1/2 sum_k Gamma_k (f_jk - delta_ky)^2``     ``diag(Gamma)``
ce        ``-log p_j[y]``                               ``diag(p_j) - p_j p_j^T``
dce       ``-Gamma_y log p_j[y]``                       ``Gamma_y (diag(p_j) - p_j p_j^T)``
========  ==========================================  =================================

For MSE-type losses ``h_j`` is constant, so the factors are exact for a model that is linear in
its parameters; for CE/DCE they describe the dynamics near the current outputs only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from curvature._compiled import compiled
from curvature._ntk import ApplyFn, empirical_ntk, output_shape
from curvature._precision import full_precision

PyTree = Any

#: Losses accepted by :func:`output_hessian` and :func:`loss_ntk`.
LOSSES = ("mse", "ce", "dce", "dmse1", "dmse2")
_WEIGHTED = ("dce", "dmse1", "dmse2")


def _check_loss_inputs(
    outputs_shape: tuple[int, ...], labels: jax.Array, loss: str, weights: jax.Array | None
) -> None:
    if loss not in LOSSES:
        raise ValueError(
            f"loss must be one of {', '.join(repr(name) for name in LOSSES)} (got {loss!r})"
        )
    n, c = outputs_shape
    if labels.shape != (n,):
        raise ValueError(
            f"labels must have shape (N,) = ({n},), one integer class per sample "
            f"(got {tuple(labels.shape)})"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers in [0, C) (got dtype {labels.dtype})")
    # JAX's gathers clamp or wrap an index out of range instead of failing: check known labels
    # (in NumPy: inside a jit, jnp.min of concrete labels would be staged, not computed).
    if not isinstance(labels, jax.core.Tracer) and labels.size:
        known = np.asarray(labels)
        low, high = int(known.min()), int(known.max())
        if low < 0 or high >= c:
            raise ValueError(
                f"labels must be integers in [0, C) = [0, {c}) (got values from {low} to {high})"
            )
    if weights is None:
        return
    if loss not in _WEIGHTED:
        raise ValueError(
            f"weights are used only by loss='dce', 'dmse1' and 'dmse2' (got weights with "
            f"loss={loss!r}); pass weights=None for the static loss"
        )
    if jnp.shape(weights) != (c,):
        raise ValueError(
            f"weights must have shape (C,) = ({c},), one factor Gamma per class "
            f"(got {tuple(jnp.shape(weights))})"
        )
    if not isinstance(weights, jax.core.Tracer) and np.any(np.asarray(weights) < 0):
        raise ValueError(f"weights must be >= 0 (got {np.asarray(weights)})")


def output_hessian(
    outputs: jax.Array,
    labels: jax.Array,
    *,
    loss: str = "mse",
    weights: jax.Array | None = None,
) -> jax.Array:
    """Per-sample Hessians ``h_j = d^2 l_j / df_j^2`` of the loss with respect to the outputs.

    ``l_j`` is sample ``j``'s term of the mean-form loss ``F = (1/N) sum_j l_j`` (table in the
    module docstring); the Hessian of ``F`` with respect to the (N, C) outputs is
    ``blockdiag(h_j) / N``.

    Args:
        outputs: (N, C) network outputs (logits).
        labels: (N,) integer classes.
        loss: ``"mse"``, ``"ce"``, ``"dce"``, ``"dmse1"`` or ``"dmse2"``.
        weights: class factors Gamma (C,) for the dynamical losses; None means Gamma = 1.

    Returns:
        Array (N, C, C), symmetric PSD blocks, dtype of ``outputs``.
    """
    outputs = jnp.asarray(outputs)
    labels = jnp.asarray(labels)
    if outputs.ndim != 2:
        raise ValueError(f"outputs must have shape (N, C) (got {tuple(outputs.shape)})")
    _check_loss_inputs(outputs.shape, labels, loss, weights)
    n, c = outputs.shape
    dtype = outputs.dtype
    gamma = jnp.ones((c,), dtype) if weights is None else jnp.asarray(weights, dtype)
    eye = jnp.eye(c, dtype=dtype)
    if loss in ("ce", "dce"):
        p = jax.nn.softmax(outputs, axis=-1)
        # Diagonal p_i (1 - p_i) as p_i * sum_{k != i} p_k: 1 - p_i cancels when p_i -> 1
        # (a confident sample), which left 1e-2 relative error in float32 at 1 - p_y = 2e-4.
        others = p @ (1.0 - eye)
        h = -p[:, :, None] * p[:, None, :]
        h = jnp.where(eye.astype(bool), (p * others)[:, :, None], h)
        if loss == "dce":
            h = gamma[labels][:, None, None] * h
        return h
    if loss == "mse":
        return jnp.broadcast_to(eye, (n, c, c))
    if loss == "dmse1":
        return gamma[labels][:, None, None] * eye
    return jnp.broadcast_to(jnp.diag(gamma), (n, c, c))  # dmse2


def _psd_sqrt(h: jax.Array) -> jax.Array:
    """Symmetric square roots of a stack of symmetric PSD (C, C) blocks."""
    values, vectors = jnp.linalg.eigh(h)
    roots = jnp.sqrt(jnp.clip(values, 0, None))
    return jnp.einsum("nij,nj,nkj->nik", vectors, roots, vectors)


@full_precision
def loss_ntk(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    labels: jax.Array,
    *,
    loss: str = "mse",
    weights: jax.Array | None = None,
    kernel: jax.Array | None = None,
    implementation: str = "auto",
    batch_size: int | None = None,
) -> jax.Array:
    """Kernel ``K = H^{1/2} Theta H^{1/2}`` of the linearised residual dynamics of a loss.

    ``K`` is the Gauss-Newton matrix in function space (derivation in the module docstring):
    with its eigenvalues ``lambda``, one gradient-descent step with learning rate ``eta``
    multiplies the output deviation along each eigenvector by ``1 - eta * lambda / N``, and
    ``K / N`` shares its nonzero eigenvalues with the parameter-space Gauss-Newton matrix
    ``J^T H J / N``. For ``loss="mse"`` it is the plain NTK.

    Args:
        apply_fn, params, x: model, parameter pytree, training inputs (N, ...).
        labels: (N,) integer classes.
        loss: ``"mse"``, ``"ce"``, ``"dce"``, ``"dmse1"`` or ``"dmse2"``.
        weights: class factors Gamma (C,) at the step of interest, for the dynamical losses;
            None means the static loss (Gamma = 1).
        kernel: the untraced NTK (N, N, C, C) of ``x`` if already computed; otherwise it is
            computed with :func:`empirical_ntk` (``implementation``, ``batch_size``).

    Returns:
        Array (N, N, C, C) in the layout of :func:`empirical_ntk`; use :func:`ntk_matrix`
        and :func:`ntk_spectrum` for its (N*C, N*C) matrix and eigenvalues.
    """
    x = jnp.asarray(x)
    n, c = output_shape(apply_fn, params, x)
    _check_loss_inputs((n, c), jnp.asarray(labels), loss, weights)
    if kernel is None:
        kernel = empirical_ntk(
            apply_fn, params, x, implementation=implementation, batch_size=batch_size
        )
    elif jnp.shape(kernel) != (n, n, c, c):
        raise ValueError(
            f"kernel must be the untraced NTK of x with shape (N, N, C, C) = ({n}, {n}, {c}, "
            f"{c}) (got {tuple(jnp.shape(kernel))})"
        )
    labels = jnp.asarray(labels)
    return _weighted_kernel(apply_fn, params, x, labels, kernel, loss=loss, weights=weights)


@compiled(dynamic=("params", "weights"))
def _weighted_kernel(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    labels: jax.Array,
    kernel: jax.Array,
    *,
    loss: str,
    weights: jax.Array | None,
) -> jax.Array:
    """``H^{1/2} Theta H^{1/2}`` of checked inputs (one program when called eagerly)."""
    outputs = apply_fn(params, x)
    roots = _psd_sqrt(output_hessian(outputs, labels, loss=loss, weights=weights))
    c = outputs.shape[1]
    if loss in ("ce", "dce"):
        # The softmax Hessian's null vector (1, ..., 1) is exact, but eigh leaves its eigenvalue
        # at about eps * ||h_j||, whose square root put sqrt(eps) relative noise into K
        # (1.6e-4 in float32): project the roots onto the complement, where the true root is.
        centre = jnp.eye(c, dtype=roots.dtype) - 1.0 / c
        roots = jnp.einsum("ab,nbc,cd->nad", centre, roots, centre)
    return jnp.einsum("jac,jkcd,kdb->jkab", roots, kernel, roots)


__all__ = ["LOSSES", "loss_ntk", "output_hessian"]
