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


def scaled_lobpcg(
    matvec: Callable[[jax.Array], jax.Array],
    block: jax.Array,
    iterations: int,
    *,
    size: jax.Array | None = None,
    tol: jax.Array | float | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``lobpcg_standard(matvec, block, m=iterations, tol=tol)`` run on ``matvec / c``.

    ``c`` is the power of two near ``size`` (an estimate of the operator's largest
    eigenvalue, such as the previous step's), or near the largest entry of
    ``matvec(block)`` when ``size`` is None or not a positive finite number (one extra block
    product). LOBPCG's stopping test is relative, so ``tol`` means the same at every scale.

    Returns:
        ``(eigenvalues (k,), eigenvectors (M, k), iterations)`` of the unscaled operator.
    """

    def probed() -> jax.Array:
        return jnp.max(jnp.abs(matvec(block)))

    if size is None:
        size = probed()
    else:
        size = jnp.asarray(size, block.dtype)
        usable = jnp.isfinite(size) & (size > 0)
        size = jax.lax.cond(usable, lambda: size, probed)
    c = power_of_two(size)
    values, vectors, done = lobpcg_standard(lambda v: matvec(v) / c, block, m=iterations, tol=tol)
    return values * c, vectors, done
