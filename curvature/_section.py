"""Two-dimensional sections of the loss landscape, F(theta + a v1 + b v2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from curvature._checks import is_integer, positive_int
from curvature._compiled import compiled
from curvature._hessian import LossFn, PyTree
from curvature._norm import norm
from curvature._precision import full_precision

A = "a"
B = "b"
POINT = "point"


class Section(NamedTuple):
    """A landscape section and, optionally, a trajectory projected into its plane.

    Attributes:
        surface: ``xarray.DataArray`` of the loss with dims ("a", "b") and coords a, b:
            ``F(theta + a u1 + b u2)`` where (u1, u2) are v1, v2 orthonormalised
            (Gram-Schmidt: u1 = v1/|v1|, u2 along v2's part orthogonal to u1).
        path: ``xarray.Dataset`` on dim "point" with variables ``a``, ``b`` (coordinates of
            ``theta_s - theta`` in the plane) and ``distance`` (the out-of-plane distance
            ``|theta_s - theta - a u1 - b u2|``), coordinate ``step`` (the labels given or
            0..S-1); None when no trajectory was given.
    """

    surface: xr.DataArray
    path: xr.Dataset | None


@full_precision
def landscape_section(
    loss_fn: LossFn,
    params: PyTree,
    v1: jax.Array | PyTree,
    v2: jax.Array | PyTree,
    *,
    extent: float | tuple[float, float] = 1.0,
    num_points: int | tuple[int, int] = 41,
    trajectory: jax.Array | None = None,
    steps: Sequence[int] | np.ndarray | None = None,
    chunk_size: int = 256,
) -> Section:
    """Evaluate the loss on a plane through ``params`` spanned by two directions.

    Args:
        loss_fn: scalar function of the parameters.
        params: the centre theta (pytree, P entries).
        v1, v2: directions, flat (P,) arrays or pytrees like ``params`` (e.g. the top two
            Hessian eigenvectors); orthonormalised before use, so a and b are distances.
        extent: half-width of the grid, one number or (extent_a, extent_b); a and b run
            over ``linspace(-extent, extent, num_points)``.
        num_points: points per axis (>= 2), one number or (num_a, num_b); odd numbers put the
            centre on the grid.
        trajectory: optional (S, P) flat parameter states theta_s to project into the plane.
        steps: optional (S,) labels of the trajectory points (default 0..S-1).
        chunk_size: grid points evaluated per vmapped batch (memory bound).

    Returns:
        :class:`Section` ``(surface, path)``; ``surface`` has shape (num_a, num_b).
    """
    flat, _ = ravel_pytree(params)
    p = flat.shape[0]
    u1 = _as_flat(v1, p, "v1").astype(flat.dtype)
    u2 = _as_flat(v2, p, "v2").astype(flat.dtype)
    ext_a, ext_b = _pair(extent, "extent")
    num_a, num_b = _pair(num_points, "num_points")
    if not (ext_a > 0 and ext_b > 0):
        raise ValueError(f"extent must be > 0 (got {extent!r}).")
    if not all(is_integer(n) and n >= 2 for n in (num_a, num_b)):
        raise ValueError(
            f"num_points must be an integer >= 2 or a pair of them (got {num_points!r})."
        )
    positive_int("chunk_size", chunk_size)
    u1, u2, n1, n2, length2 = _orthonormal(u1, u2)
    # v2 parallel to v1 leaves rounding, ~eps |v2|: independence needs more than sqrt(eps).
    floor = float(jnp.finfo(flat.dtype).eps) ** 0.5
    if not (float(n1) > 0.0 and float(n2) > floor * float(length2)):  # also NaN or inf
        raise ValueError(
            "v1 and v2 must be finite, non-zero and linearly independent to span a plane "
            f"(got |v1| = {float(n1):.3g}, |v2 orthogonal to v1| = {float(n2):.3g})."
        )
    a, b, values = _surface(
        loss_fn, params, u1, u2, float(ext_a), float(ext_b), int(num_a), int(num_b), chunk_size
    )
    surface = xr.DataArray(
        np.asarray(values),
        dims=(A, B),
        coords={A: np.asarray(a), B: np.asarray(b)},
        name="loss",
        attrs={"long_name": "loss on the plane theta + a u1 + b u2"},
    )
    path = None
    if trajectory is not None:
        path = _project_path(jnp.asarray(trajectory), flat, u1, u2, steps)
    return Section(surface=surface, path=path)


@compiled
def _orthonormal(v1: jax.Array, v2: jax.Array) -> tuple[jax.Array, ...]:
    """Gram-Schmidt of (v1, v2) with the lengths that decide whether they span a plane."""
    n1 = norm(v1)
    u1 = v1 / n1
    u2 = v2 - (v2 @ u1) * u1
    u2 = u2 - (u2 @ u1) * u1  # twice: one projection leaves rounding along u1
    n2 = norm(u2)
    return u1, u2 / n2, n1, n2, norm(v2)


@compiled(dynamic=("params",))
def _surface(
    loss_fn: LossFn,
    params: PyTree,
    u1: jax.Array,
    u2: jax.Array,
    ext_a: float,
    ext_b: float,
    num_a: int,
    num_b: int,
    chunk_size: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The grid axes a (num_a,), b (num_b,) and the loss on it, (num_a, num_b)."""
    flat, unravel = ravel_pytree(params)
    a = jnp.linspace(-ext_a, ext_a, num_a, dtype=flat.dtype)
    b = jnp.linspace(-ext_b, ext_b, num_b, dtype=flat.dtype)
    aa, bb = jnp.meshgrid(a, b, indexing="ij")

    def point_loss(ab: jax.Array) -> jax.Array:
        return loss_fn(unravel(flat + ab[0] * u1 + ab[1] * u2))

    points = jnp.stack([aa.ravel(), bb.ravel()], axis=1)
    values = jax.lax.map(point_loss, points, batch_size=min(chunk_size, points.shape[0]))
    return a, b, values.reshape(num_a, num_b)


@compiled
def _path_coordinates(
    trajectory: jax.Array, centre: jax.Array, u1: jax.Array, u2: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    delta = trajectory.astype(centre.dtype) - centre[None, :]
    a = delta @ u1
    b = delta @ u2
    return a, b, norm(delta - a[:, None] * u1 - b[:, None] * u2, axis=1)


def _project_path(
    trajectory: jax.Array,
    centre: jax.Array,
    u1: jax.Array,
    u2: jax.Array,
    steps: Sequence[int] | np.ndarray | None,
) -> xr.Dataset:
    p = centre.shape[0]
    if trajectory.ndim != 2 or trajectory.shape[1] != p:
        raise ValueError(
            f"trajectory must have shape (S, P) with P = {p}, flattened parameters "
            f"(got shape {trajectory.shape})."
        )
    s = trajectory.shape[0]
    if steps is None:
        steps = np.arange(s)
    steps = np.asarray(steps)
    if steps.shape != (s,):
        raise ValueError(
            f"steps must have shape ({s},), one label per trajectory point "
            f"(got shape {steps.shape})."
        )
    a, b, distance = _path_coordinates(trajectory, centre, u1, u2)
    return xr.Dataset(
        {
            A: (POINT, np.asarray(a), {"long_name": "coordinate along u1"}),
            B: (POINT, np.asarray(b), {"long_name": "coordinate along u2"}),
            "distance": (POINT, np.asarray(distance), {"long_name": "distance from the plane"}),
        },
        coords={"step": (POINT, steps)},
    )


def _as_flat(v: jax.Array | PyTree, p: int, name: str) -> jax.Array:
    flat = v if isinstance(v, jax.Array | np.ndarray) and np.ndim(v) == 1 else ravel_pytree(v)[0]
    flat = jnp.asarray(flat)
    if flat.shape != (p,):
        raise ValueError(
            f"{name} must be a flat vector of shape ({p},) or a pytree like params "
            f"(got a flat shape {flat.shape})."
        )
    return flat


def _pair(value: object, name: str) -> tuple:
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ValueError(f"{name} must be one number or a pair (got {value!r}).")
        return tuple(value)
    return (value, value)
