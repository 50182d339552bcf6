"""Hessian spectral density by stochastic Lanczos quadrature (SLQ)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from curvature._checks import is_integer, positive_int
from curvature._compiled import compiled
from curvature._hessian import LossFn, PyTree, hessian_operator
from curvature._lanczos import REORTHO, lanczos


class Density(NamedTuple):
    """A broadened spectral density and the quadrature it came from.

    Attributes:
        grid: (num_points,) eigenvalue grid.
        density: (num_points,) Gaussian-broadened density, trapezoid integral 1 over ``grid``.
        ritz_values: (num_probes, num_matvecs) Ritz values (quadrature nodes) of each probe.
        ritz_weights: (num_probes, num_matvecs) quadrature weights, squared first components
            of the tridiagonal eigenvectors; each row sums to 1. Re-broaden with
            :func:`broaden`.
    """

    grid: jax.Array
    density: jax.Array
    ritz_values: jax.Array
    ritz_weights: jax.Array


@compiled
def broaden(
    ritz_values: jax.Array, ritz_weights: jax.Array, grid: jax.Array, sigma: float | jax.Array
) -> jax.Array:
    """Gaussian-broadened density of weighted nodes, averaged over probes.

    Args:
        ritz_values: (num_probes, m) nodes (or (m,)).
        ritz_weights: weights of the same shape; each probe's weights should sum to 1.
        grid: (num_points,) points at which to evaluate the density.
        sigma: standard deviation of the Gaussian kernel (> 0).

    Returns:
        (num_points,) density, renormalised to trapezoid integral 1 over ``grid`` (mass of the
        kernels outside the grid is discarded).
    """
    values = jnp.reshape(ritz_values, (-1,))
    weights = jnp.reshape(ritz_weights, (-1,))
    z = (grid[:, None] - values[None, :]) / sigma
    kernel = jnp.exp(-0.5 * z**2) / (sigma * jnp.sqrt(2.0 * jnp.pi))
    density = kernel @ weights
    return density / jnp.trapezoid(density, grid)


DEFAULT_NUM_PROBES = 8
"""Default number of probes of :func:`spectral_density`."""

DENSITY_NUM_MATVECS = 80
"""Default Lanczos depth of :func:`spectral_density` (capped at the number of parameters). With
8 probes it puts the width-100 spiral MLP's density (P = 603) within 1% of the spectral range of
the exact eigenvalue histogram in Wasserstein-1 distance (tests/test_density.py)."""


@compiled(dynamic=("params",))
def spectral_density(
    loss_fn: LossFn,
    params: PyTree,
    *,
    num_probes: int = DEFAULT_NUM_PROBES,
    num_matvecs: int | None = None,
    grid: jax.Array | None = None,
    num_points: int = 1024,
    sigma: float | None = None,
    key: jax.Array | None = None,
    reortho: str = "full",
) -> Density:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature.

    For each of ``num_probes`` Rademacher probe vectors, ``num_matvecs`` Lanczos steps
    (:func:`lanczos`) give a tridiagonal matrix whose eigenvalues are the quadrature nodes
    and whose squared first eigenvector components are the weights; the density is the
    probe average of weighted Gaussians (Ghorbani, Krishnan & Xiao 2019). Where a probe's
    Krylov space is exhausted early (a low-rank Hessian), Lanczos restarts and the extra
    nodes get zero weight.

    Args:
        loss_fn: scalar function of the parameters.
        params: parameter pytree (P entries).
        num_probes: number of random probes (>= 1; default 8).
        num_matvecs: Lanczos depth per probe, ``1 <= num_matvecs <= P``; None (default) is
            ``min(DENSITY_NUM_MATVECS, P)`` = ``min(80, P)``.
        grid: (num_points,) evaluation grid; default ``num_points`` points spanning the Ritz
            values extended by 5 sigma on both sides.
        num_points: grid size when ``grid`` is None.
        sigma: kernel width; default 1% of the Ritz-value range, at least 1e-3 of the
            largest |Ritz value| (a spectrum of one repeated value gets a finite width; a
            zero spectrum width 1), so it scales with the Hessian.
        key: PRNG key for the probes (default ``jax.random.key(0)``).
        reortho: ``"full"`` (default) or ``"none"`` reorthogonalisation.

    Returns:
        :class:`Density` with grid and density (num_points,) and the raw ritz_values and
        ritz_weights (num_probes, num_matvecs).
    """
    flat, _ = ravel_pytree(params)
    p = flat.shape[0]
    num_probes = positive_int("num_probes", num_probes)
    if num_matvecs is None:
        num_matvecs = min(DENSITY_NUM_MATVECS, p)
    if not is_integer(num_matvecs) or not 1 <= num_matvecs <= p:
        raise ValueError(
            f"num_matvecs must be an integer with 1 <= num_matvecs <= P = {p}, the number of "
            f"parameters (got {num_matvecs!r})."
        )
    if reortho not in REORTHO:
        raise ValueError(
            f"reortho must be 'full' (full reorthogonalisation) or 'none' (plain three-term "
            f"recurrence) (got {reortho!r})."
        )
    if grid is None and (not is_integer(num_points) or num_points < 2):
        raise ValueError(f"num_points must be an integer >= 2 (got {num_points!r}).")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be > 0 (got {sigma!r}).")
    num_matvecs = int(num_matvecs)
    key = jax.random.key(0) if key is None else key
    op = hessian_operator(loss_fn, params)
    algorithm = lanczos(num_matvecs, reortho=reortho)
    probes = jax.random.rademacher(key, (num_probes, p), dtype=flat.dtype)

    def quadrature(probe: jax.Array) -> tuple[jax.Array, jax.Array]:
        values, vectors = jnp.linalg.eigh(algorithm(op.matvec, probe).matrix)
        return values, vectors[0, :] ** 2

    ritz_values, ritz_weights = jax.lax.map(quadrature, probes)
    if sigma is None:
        spread = jnp.max(ritz_values) - jnp.min(ritz_values)
        scale = jnp.max(jnp.abs(ritz_values))
        width = jnp.maximum(0.01 * spread, 1e-3 * scale)
        # Relative at every scale; an absolute floor (it was sqrt(tiny), 1e-19 in float32)
        # widened the density of a Hessian of scale 1e-18. Only a width below the smallest
        # normal number is raised to it, and a zero spectrum gets width 1.
        tiny = jnp.finfo(flat.dtype).tiny
        sigma = jnp.where(width >= tiny, width, jnp.where(scale > 0, tiny, 1.0))
    if grid is None:
        grid = jnp.linspace(
            jnp.min(ritz_values) - 5 * sigma, jnp.max(ritz_values) + 5 * sigma, num_points
        )
    density = broaden(ritz_values, ritz_weights, grid, sigma)
    return Density(grid=grid, density=density, ritz_values=ritz_values, ritz_weights=ritz_weights)
