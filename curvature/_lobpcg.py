"""``jax.experimental.sparse.linalg.lobpcg_standard`` on an operator scaled to unit size.

JAX's LOBPCG takes its residual norms and orthonormalises with plain sums of squares. In
float32 an operator of scale 1e-20 then has residual norms of 0, so it stops after one
iteration as if converged; one of scale 1e18 overflows and makes no progress (measured on a
diagonal operator and on a small MLP's NTK). Dividing the operator by a power of two near its
size and multiplying the eigenvalues back is exact and keeps every square in range.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental.sparse.linalg import lobpcg_standard

from curvature._norm import power_of_two

#: Default relative residual at which :func:`scaled_lobpcg` stops, in units of the dtype's eps.
#: JAX's own default (``tol=None``) stops near ``20 M eps`` relative, 2e-3 in float32 for a
#: 900-sample NTK, where its third eigenvalue was off by 1.1e-5; at 100 eps it took 12
#: iterations instead of 5 and was within 3e-7 (1e-6 eps was out of float32's reach).
DEFAULT_TOL_EPS = 100.0


def scaled_lobpcg(
    matvec: Callable[[jax.Array], jax.Array],
    block: jax.Array,
    iterations: int,
    *,
    size: jax.Array | None = None,
    tol: jax.Array | float | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``lobpcg_standard`` for the top ``k`` eigenpairs of ``matvec``, run on ``matvec / c``.

    ``c`` is the power of two near ``size`` (an estimate of the operator's largest
    eigenvalue, such as the previous step's), or near the largest entry of
    ``matvec(block)`` when ``size`` is None or not a positive finite number (one extra block
    product). ``tol`` is the relative residual ``||A v - lambda v|| / |lambda|`` at which the
    iterations stop (default ``DEFAULT_TOL_EPS * eps``), at most ``iterations`` of them.

    Args:
        matvec: ``(M, k) -> (M, k)`` products of a symmetric operator.
        block: (M, k) start vectors, ``5 k < M``.

    Returns:
        ``(eigenvalues (k,), eigenvectors (M, k), iterations)`` of the unscaled operator.
    """
    m = block.shape[0]
    if tol is None:
        tol = DEFAULT_TOL_EPS * float(jnp.finfo(block.dtype).eps)

    def probed() -> jax.Array:
        return jnp.max(jnp.abs(matvec(block)))

    if size is None:
        size = probed()
    else:
        size = jnp.asarray(size, block.dtype)
        usable = jnp.isfinite(size) & (size > 0)
        size = jax.lax.cond(usable, lambda: size, probed)
    c = power_of_two(size)
    # lobpcg_standard stops once ||r|| < tol' * 10 M (|lambda| + ||A v||), about
    # 20 M tol' |lambda|: tol' = tol / (20 M) makes that the relative criterion above.
    values, vectors, done = lobpcg_standard(
        lambda v: matvec(v) / c, block, m=iterations, tol=tol / (20 * m)
    )
    return values * c, vectors, done
