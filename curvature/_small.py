"""Small dense linear algebra in array operations alone, for the warm tracker on accelerators.

On a GPU every ``jnp.linalg.eigh`` or ``qr`` of a tiny matrix is a solver-library call costing
several plain training steps (benchmarks/small_ops.py: 170-314 us for eigh of 3x3-9x9 on an
H100, against a 30 us spiral step), while the same work written as element-wise operations
with constant gathers compiles to a few fused kernels. On CPU the LAPACK calls are cheaper
than these unrolled loops, so the tracker uses them there (see ``curvature._tracking``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from curvature._norm import unit


@functools.cache
def _rounds(n: int) -> tuple[np.ndarray, ...]:
    """Round-robin schedule of disjoint pairs covering n (even) indices in n - 1 rounds.

    Returns, per round, ``pairs`` (n // 2, 2) the pairs (smaller index first), and per index
    ``partner`` (n,) the index it is paired with, ``first`` (n,) whether it is the smaller of
    its pair and ``slot`` (n,) its pair's position in ``pairs``.
    """
    players = list(range(n))
    rounds = []
    for _ in range(n - 1):
        pairs = np.array(
            [sorted((players[i], players[n - 1 - i])) for i in range(n // 2)], np.int32
        )
        p, q = pairs[:, 0], pairs[:, 1]
        partner, first, slot = np.empty(n, np.int32), np.zeros(n, bool), np.empty(n, np.int32)
        partner[p], partner[q], first[p] = q, p, True
        slot[p] = slot[q] = np.arange(n // 2)
        rounds.append((pairs, partner, first, slot))
        players = [players[0], players[-1], *players[1:-1]]
    return tuple(np.stack(column) for column in zip(*rounds, strict=True))


#: Largest matrix :func:`jacobi_eigh` takes: its unrolled rounds grow as n log n.
MAX_JACOBI_SIZE = 16

# Sweeps by (float64?, size up to): measured on 420 matrices per size (60 each of random,
# clustered, repeated, graded, nearly diagonal, diagonal and rank-deficient b b^T, the slowest)
# as the fewest that bring every residual and orthogonality error within 5 n + 5 eps ||A||
# (float64 at n >= 12 only within 20 n + 20: n = 16 needed 16 sweeps for 176), plus one for
# margin. tests/test_small.py checks 20 n + 20.
_SWEEPS = {
    False: ((4, 5), (6, 6), (9, 8), (12, 8), (16, 9)),
    True: ((4, 6), (6, 8), (9, 11), (12, 14), (16, 17)),
}


def default_sweeps(n: int, dtype: jnp.dtype) -> int:
    """Jacobi sweeps for a symmetric n x n matrix (n <= 16): residuals and orthogonality of a
    few tens of eps * ||A|| (at most 20 n + 20 in the tests)."""
    if n > MAX_JACOBI_SIZE:
        raise ValueError(
            f"jacobi_eigh takes matrices up to {MAX_JACOBI_SIZE} x {MAX_JACOBI_SIZE} (got n = {n})."
        )
    wide = jnp.finfo(dtype).bits > 32
    return next(sweeps for size, sweeps in _SWEEPS[wide] if n <= size)


def jacobi_eigh(matrix: jax.Array, sweeps: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Eigen-decomposition of one small symmetric matrix by parallel cyclic Jacobi.

    The contract of ``jnp.linalg.eigh`` for one (n, n) matrix (``jax.vmap`` it for batches):
    the input symmetrised, eigenvalues ascending, eigenvectors as columns. A fixed number of
    sweeps, each of n - 1 rounds of n / 2 disjoint rotations (an odd n is padded by one
    decoupled index), written as element-wise operations and gathers with constant indices:
    no solver call, no loop, no host synchronisation. A NaN or inf anywhere in the input makes
    every output NaN.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"jacobi_eigh takes one square matrix (got shape {tuple(matrix.shape)}); use "
            "jax.vmap for a batch."
        )
    n = matrix.shape[-1]
    dtype = matrix.dtype
    sweeps = default_sweeps(n, dtype) if sweeps is None else sweeps
    size = n + n % 2
    a = 0.5 * (matrix + matrix.T)
    if size != n:
        a = jnp.pad(a, ((0, 1), (0, 1)))
    v = jnp.eye(size, dtype=dtype)
    schedule = _rounds(size)
    diagonal = np.arange(size)
    for _ in range(sweeps):
        for pairs, partner, first, slot in zip(*schedule, strict=True):
            p, q = pairs[:, 0], pairs[:, 1]
            app, aqq, apq = a[p, p], a[q, q], a[p, q]
            zero = apq == 0
            tau = (aqq - app) / (2 * jnp.where(zero, 1, apq))
            t = jnp.where(tau >= 0, 1, -1) / (jnp.abs(tau) + jnp.sqrt(1 + tau * tau))
            t = jnp.where(zero, 0, t)
            c = 1 / jnp.sqrt(1 + t * t)
            s = t * c
            # Per index: the cosine of its pair, and J[partner(i), i] (-s for the first).
            cos = c[slot]
            off = jnp.where(first, -s[slot], s[slot])
            b = a * cos[None, :] + a[:, partner] * off[None, :]
            a = cos[:, None] * b + off[:, None] * b[partner, :]
            v = v * cos[None, :] + v[:, partner] * off[None, :]
    values = a[diagonal, diagonal][:n]
    order = jnp.argsort(values)
    return values[order], v[:n, :n][:, order]


def gram_schmidt_rows(vectors: jax.Array) -> jax.Array:
    """Orthonormal rows spanning ``vectors`` (m, P) by modified Gram-Schmidt applied twice.

    Lengths are taken after scaling each row by a power of two near its largest entry
    (:func:`curvature._norm.unit`), so rows of any representable size come out of unit
    length. Unlike Householder QR, a row dependent on the earlier ones does not come out as
    an arbitrary orthonormal completion: it is rounding
    noise made unit and orthogonal to them, or exactly zero when it cancels exactly. Callers
    check lengths (the block tracker drops or restarts on rows shorter than 1/2).
    """
    rows = []
    for i in range(vectors.shape[0]):
        row = vectors[i]
        for _ in range(2):
            for done in rows:
                row = row - jnp.vdot(done, row) * done
            row = unit(row)
        rows.append(row)
    return jnp.stack(rows)
