"""Per-step tracking of the top NTK eigenvalues inside a jitted training loop.

An optax-style pair of pure functions: ``state = tracker.init(apply_fn, params, x, key)`` and
``track, state = tracker.update(apply_fn, params, x, state)``. Every step runs a few LOBPCG
iterations (``jax.experimental.sparse.linalg.lobpcg_standard``, on the kernel divided by a power
of two near the previous step's top eigenvalue) warm-started from the previous step's
eigenvectors; when the warm result's relative residual exceeds ``restart_tol`` (or is
NaN, or on the first update) a ``lax.cond`` runs a cold solve from fresh random vectors
instead. Shapes are fixed and nothing leaves the device, so it runs inside ``lax.scan``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from curvature._checks import positive_int
from curvature._compiled import compiled
from curvature._lobpcg import scaled_lobpcg
from curvature._norm import norm
from curvature._ntk import ApplyFn, ntk_operator, output_shape

PyTree = Any


class NTKTrackerState(NamedTuple):
    """State carried between steps.

    Attributes:
        vectors: (N*C, k) current eigenvector estimates (columns), sample-major.
        eigenvalues: (k,) the last reported eigenvalues (zeros before the first update); the
            largest sets the scale the next warm solve divides the kernel by.
        key: PRNG key for cold restarts.
        started: bool scalar, False until the first update (which always solves cold).
    """

    vectors: jax.Array
    eigenvalues: jax.Array
    key: jax.Array
    started: jax.Array


class NTKTrack(NamedTuple):
    """What one update reports.

    Attributes:
        eigenvalues: (k,) descending.
        residuals: (k,) ``||Theta v_i - lambda_i v_i||`` (absolute), from fresh products.
        restarted: bool scalar, True when this step ran the cold solve.
    """

    eigenvalues: jax.Array
    residuals: jax.Array
    restarted: jax.Array


class NTKTracker(NamedTuple):
    """``init(apply_fn, params, x, key) -> NTKTrackerState`` and
    ``update(apply_fn, params, x, state) -> (NTKTrack, NTKTrackerState)``."""

    init: Callable[..., NTKTrackerState]
    update: Callable[..., tuple[NTKTrack, NTKTrackerState]]


def _solve(
    matvec: Callable[[jax.Array], jax.Array],
    block: jax.Array,
    iterations: int,
    tol: float,
    size: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    values, vectors, _ = scaled_lobpcg(matvec, block, iterations, size=size, tol=tol)
    order = jnp.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    residuals = norm(matvec(vectors) - vectors * values[None, :], axis=0)
    return values, vectors, residuals


def ntk_tracker(
    k: int,
    *,
    num_iterations: int = 4,
    cold_iterations: int = 40,
    restart_tol: float = 1e-3,
    tol: float | None = None,
) -> NTKTracker:
    """Build a tracker of the top-k eigenvalues of the untraced training NTK.

    Args:
        k: eigenpairs per step; LOBPCG needs ``5 * k < N * C`` (checked at ``init``).
        num_iterations: LOBPCG iterations of the warm-started solve per step. Each iteration
            multiplies a block of 3k vectors by the NTK (3k vjp+jvp pairs of ``apply_fn``).
        cold_iterations: LOBPCG iterations of a cold solve (first step and restarts).
        restart_tol: restart when ``max_i residual_i / lambda_1`` of the warm solve exceeds
            this (a NaN residual also restarts).
        tol: relative residual ``residual_i / lambda_i`` at which a solve stops iterating
            (default ``restart_tol / 10``; eigenvalues come to about ``tol**2`` relative).

    Returns:
        :class:`NTKTracker`. ``update`` returns :class:`NTKTrack` (eigenvalues (k,) descending,
        residuals (k,), restarted) and the new :class:`NTKTrackerState`.
    """
    k = positive_int("k", k)
    num_iterations = positive_int("num_iterations", num_iterations)
    cold_iterations = positive_int("cold_iterations", cold_iterations)
    if not restart_tol > 0:
        raise ValueError(f"restart_tol must be > 0 (got {restart_tol!r})")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be > 0 (got {tol!r})")
    solve_tol = restart_tol / 10 if tol is None else tol

    def init(apply_fn: ApplyFn, params: PyTree, x: jax.Array, key: jax.Array) -> NTKTrackerState:
        n, c = output_shape(apply_fn, params, x)
        if 5 * k >= n * c:
            raise ValueError(
                f"k must satisfy 5*k < N*C = {n * c} for LOBPCG (got k={k}); use fewer "
                "eigenpairs or more samples"
            )
        dtype = jax.eval_shape(apply_fn, params, x).dtype
        key, sub = jax.random.split(key)
        vectors = jax.random.normal(sub, (n * c, k), dtype=dtype)
        return NTKTrackerState(vectors, jnp.zeros((k,), dtype), key, jnp.asarray(False))

    def update(
        apply_fn: ApplyFn, params: PyTree, x: jax.Array, state: NTKTrackerState
    ) -> tuple[NTKTrack, NTKTrackerState]:
        matvec = ntk_operator(apply_fn, params, x)
        values, vectors, residuals = _solve(
            matvec, state.vectors, num_iterations, solve_tol, size=state.eigenvalues[0]
        )
        scale = jnp.maximum(jnp.abs(values[0]), jnp.finfo(values.dtype).tiny)
        good = jnp.all(residuals / scale <= restart_tol)
        restart = jnp.logical_or(jnp.logical_not(state.started), jnp.logical_not(good))
        key, sub = jax.random.split(state.key)

        def cold(_: None) -> tuple[jax.Array, jax.Array, jax.Array]:
            block = jax.random.normal(sub, state.vectors.shape, dtype=state.vectors.dtype)
            return _solve(matvec, block, cold_iterations, solve_tol)

        def warm(_: None) -> tuple[jax.Array, jax.Array, jax.Array]:
            return values, vectors, residuals

        values, vectors, residuals = jax.lax.cond(restart, cold, warm, None)
        track = NTKTrack(values, residuals, restart)
        return track, NTKTrackerState(vectors, values, key, jnp.asarray(True))

    # Called with concrete arrays (a user's loop), one compiled program per shape.
    return NTKTracker(init, compiled(update, dynamic=("params", "x", "state")))


__all__ = ["NTKTrack", "NTKTracker", "NTKTrackerState", "ntk_tracker"]
