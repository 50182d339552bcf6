"""Built-in diagnostics, written as :class:`Metric` s like any user's: Hessian top-k (with the
gradient projection) and NTK top-k, warm-started along a run or cold at chosen checkpoints.

Recorded variables (run-file names, INTERFACES.md): ``hessian_eigenvalues(step, eigen_index)``
(descending), ``hessian_residuals`` (``‖Hv − λv‖``), ``hessian_restarted(step)`` (1 where the
warm-started tracker fell back to a cold Lanczos start), ``grad_projection(step, eigen_index)``
(``|g·v_i|/|g|``) and ``grad_perpendicular(step)`` (``|g_⊥|/|g|``); ``ntk_eigenvalues(step,
ntk_eigen_index)``, ``ntk_residuals`` and ``ntk_restarted``. The Hessian is that of the
full-batch training loss with Γ of the step (``ctx.loss_fn``); the NTK is the empirical kernel
of the training inputs, as the (N·C)×(N·C) matrix.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from curvature import gradient_projection, hessian_top_k, hessian_tracker, ntk_top_k, ntk_tracker
from curvature._compiled import reused
from training._metrics import Context, Metric

EIGEN_INDEX = "eigen_index"
NTK_EIGEN_INDEX = "ntk_eigen_index"

HESSIAN_ATTRS = {
    "hessian_eigenvalues": {
        "long_name": "top Hessian eigenvalues of the loss minimised at this step (descending)",
        "units": "1",
    },
    "hessian_residuals": {
        "long_name": "residual norm ||H v - lambda v|| of each eigenpair",
        "units": "1",
    },
    "hessian_restarted": {
        "long_name": "1 where the warm-started eigensolver fell back to a cold start",
        "units": "1",
    },
    "grad_projection": {
        "long_name": "|g . v_i| / |g|: gradient along Hessian eigenvector i",
        "units": "1",
    },
    "grad_perpendicular": {
        "long_name": "|g_perp| / |g|: gradient outside the top Hessian eigenvectors",
        "units": "1",
    },
}
NTK_ATTRS = {
    "ntk_eigenvalues": {
        "long_name": "top eigenvalues of the empirical NTK (N*C x N*C matrix)",
        "units": "1",
    },
    "ntk_residuals": {
        "long_name": "residual norm ||K v - lambda v|| of each NTK eigenpair",
        "units": "1",
    },
    "ntk_restarted": {
        "long_name": "1 where the NTK tracker fell back to a cold start",
        "units": "1",
    },
}


def _key(ctx: Context, salt: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(ctx.config.seed), salt)


def _hessian_values(ctx: Context, eig: Any, restarted: jax.Array, projection: bool) -> dict:
    values = {
        "hessian_eigenvalues": eig.eigenvalues,
        "hessian_residuals": eig.residuals,
        "hessian_restarted": restarted,
    }
    if projection:
        split = gradient_projection(ctx.loss_fn, ctx.params, eig.eigenvectors, grads=ctx.grads)
        values["grad_projection"] = split.normalized
        values["grad_perpendicular"] = split.perpendicular
    return values


def _hessian_dims(projection: bool) -> dict[str, tuple[str, ...]]:
    dims = {"hessian_eigenvalues": (EIGEN_INDEX,), "hessian_residuals": (EIGEN_INDEX,)}
    if projection:
        dims["grad_projection"] = (EIGEN_INDEX,)
    return dims


@reused
def hessian_metric(
    k: int, *, projection: bool = False, warm: bool = True, **options: Any
) -> Metric:
    """Top-k Hessian eigenpairs at each evaluated step (and the gradient projection).

    ``warm=True`` (training, and post hoc by default): :func:`curvature.hessian_tracker`,
    warm-started from the last evaluation's eigenvectors, with a cold restart when residuals
    grow. ``warm=False`` (post hoc on request): a cold :func:`curvature.hessian_top_k`
    Lanczos every time. ``options`` go to the tracker or to ``hessian_top_k``. Equal
    arguments give the same Metric, whose compiled programs ``analysis.map_checkpoints``
    then reuses.
    """
    if warm:
        tracker = hessian_tracker(k, **options)

        def init(ctx: Context) -> Any:
            return tracker.init(ctx.params, _key(ctx, 1))

        def update(ctx: Context, state: Any) -> tuple[dict, Any]:
            eig, state = tracker.update(ctx.loss_fn, ctx.params, state)
            return _hessian_values(ctx, eig, state.restarted, projection), state

    else:

        def init(ctx: Context) -> tuple:
            return ()

        def update(ctx: Context, state: tuple) -> tuple[dict, tuple]:
            eig = hessian_top_k(ctx.loss_fn, ctx.params, k, key=_key(ctx, 1), **options)
            return _hessian_values(ctx, eig, jnp.asarray(True), projection), state

    return Metric(init, update, _hessian_dims(projection), prefix=False, attrs=HESSIAN_ATTRS)


@reused
def ntk_metric(k: int, *, warm: bool = True, **options: Any) -> Metric:
    """Top-k eigenvalues of the empirical NTK of the training inputs at each evaluated step.

    Equal arguments give the same Metric (see :func:`hessian_metric`).
    """
    dims = {"ntk_eigenvalues": (NTK_EIGEN_INDEX,), "ntk_residuals": (NTK_EIGEN_INDEX,)}
    if warm:
        tracker = ntk_tracker(k, **options)

        def init(ctx: Context) -> Any:
            return tracker.init(ctx.apply_fn, ctx.params, ctx.x, _key(ctx, 2))

        def update(ctx: Context, state: Any) -> tuple[dict, Any]:
            track, state = tracker.update(ctx.apply_fn, ctx.params, ctx.x, state)
            values = {
                "ntk_eigenvalues": track.eigenvalues,
                "ntk_residuals": track.residuals,
                "ntk_restarted": track.restarted,
            }
            return values, state

    else:

        def init(ctx: Context) -> tuple:
            return ()

        def update(ctx: Context, state: tuple) -> tuple[dict, tuple]:
            eig = ntk_top_k(ctx.apply_fn, ctx.params, ctx.x, k, **options)
            values = {
                "ntk_eigenvalues": eig.eigenvalues,
                "ntk_residuals": eig.residuals,
                "ntk_restarted": jnp.asarray(True),
            }
            return values, state

    return Metric(init, update, dims, prefix=False, attrs=NTK_ATTRS)
