"""Lanczos with full reorthogonalisation and restarts at breakdown; top-k Hessian eigenpairs."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from curvature._checks import is_integer, positive_int
from curvature._compiled import compiled
from curvature._hessian import Eigen, FlatOperator, LossFn, PyTree, hessian_operator
from curvature._norm import norm, unit
from curvature._precision import full_precision

WHICH = ("largest", "smallest")
REORTHO = ("full", "none")

#: Default Krylov depth of ``hessian_top_k`` (capped at P). In float64 on the width-100
#: spiral MLP (P = 603) 40 steps already bring the top 3 to ~1e-15 relative error (see
#: tests/test_lanczos.py). Kept at 64 because ``jnp.linalg.eigh`` on CPU is ~25x slower for
#: matrices larger than 64 x 64 (measured, jax 0.10.2: 0.26 ms at n = 64, 6.9 ms at 65,
#: 59 ms at 80), which then dominates the cost.
DEFAULT_NUM_MATVECS = 64


def default_num_matvecs(k: int, p: int) -> int:
    """Default Krylov depth for k eigenpairs of P parameters: ``min(P, max(64, 2k + 20))``."""
    return min(p, max(DEFAULT_NUM_MATVECS, 2 * k + 20))


def check_k(k: object, p: int) -> None:
    """Reject a number of eigenpairs outside 1..P with a message naming both."""
    if not is_integer(k) or not 1 <= k <= p:
        raise ValueError(
            f"k must be an integer with 1 <= k <= P = {p}, the number of parameters (got {k!r})."
        )


def check_which(which: object) -> None:
    """Reject an unknown end of the spectrum."""
    if which not in WHICH:
        raise ValueError(
            f"which must be 'largest' (most positive eigenvalues) or 'smallest' (most "
            f"negative eigenvalues) (got {which!r})."
        )


def check_num_matvecs(num_matvecs: object, k: int, p: int) -> None:
    """Reject a Krylov depth that cannot hold k Ritz pairs or exceeds P."""
    if not is_integer(num_matvecs):
        raise ValueError(f"num_matvecs must be an integer (got {num_matvecs!r}).")
    if num_matvecs < k or num_matvecs > p:
        raise ValueError(
            f"num_matvecs must satisfy k <= num_matvecs <= P, i.e. {k} <= num_matvecs <= {p} "
            f"(got {num_matvecs}); a Krylov space of dimension num_matvecs holds at most "
            "num_matvecs Ritz pairs and cannot exceed the number of parameters."
        )


class Krylov(NamedTuple):
    """An orthonormal basis built by :func:`lanczos` and the operator projected onto it.

    Attributes:
        basis: (m, P) orthonormal rows; row 0 is the normalised start vector.
        matrix: (m, m) symmetric ``basis @ A @ basis.T``: tridiagonal while the Krylov space
            grows, block diagonal up to rounding where it was restarted (see :func:`lanczos`).
    """

    basis: jax.Array
    matrix: jax.Array


def lanczos(num_matvecs: int, *, reortho: str = "full") -> Callable[..., Krylov]:
    """Symmetric Lanczos of ``num_matvecs`` steps, restarted at breakdown (a factory).

    ``algorithm = lanczos(m)`` then ``algorithm(matvec, v0) -> Krylov``, as matfree's
    ``tridiag_sym``. With ``reortho="full"`` every new vector is orthogonalised twice against
    the whole basis (classical Gram-Schmidt, twice) and ``matrix`` holds all the projections
    ``q_i^T A q_j`` (i <= j) so computed, mirrored: the exact Rayleigh-Ritz matrix of the
    basis. With ``"none"`` only the three-term recurrence is used and ``matrix`` is its
    tridiagonal (cheaper; the basis loses orthogonality once Ritz values converge, and
    converged eigenvalues then reappear as copies: use it for SLQ densities, not eigenpairs).

    Breakdown: when the start vector has components along fewer than ``m`` eigenvectors (a
    low-rank Hessian, a dead network, ``A = c I``, or ``v0 = 0``), the new vector shrinks to
    rounding noise. Normalising that noise, as plain Lanczos does (matfree 0.6.3's
    ``tridiag_sym`` among them, which is why this module has its own loop), gives a basis
    that is not orthogonal and Ritz values far outside the spectrum. Here, once the new
    vector is shorter than ``sqrt(eps) * ||A q_j||``, or ``A q_j`` itself is rounding noise
    (below ``100 eps max_i ||A q_i||``, after a restart into a null space), the recurrence
    restarts from a pseudo-random vector orthogonalised against the basis, with zero
    coupling; the Ritz values stay those of a true Rayleigh-Ritz step on an orthonormal
    basis. With full reorthogonalisation a restart vector is projected at every step
    alongside the new one (no branch, so the loop stays cheap under ``jax.vmap``); the
    restart vectors are drawn up front, (m + 1, P) numbers besides the (m, P) basis.

    Args:
        num_matvecs: number of steps ``m``, ``1 <= m <= P`` (``P`` of the start vector).
        reortho: ``"full"`` or ``"none"``.

    Returns:
        ``algorithm(matvec, v0)``: ``matvec`` maps (P,) to (P,) for a symmetric operator,
        ``v0`` is the (P,) start vector (a zero vector is replaced by a pseudo-random one);
        returns :class:`Krylov` with basis (m, P) and matrix (m, m).
    """
    if reortho not in REORTHO:
        raise ValueError(
            f"reortho must be 'full' (full reorthogonalisation) or 'none' (plain three-term "
            f"recurrence) (got {reortho!r})."
        )
    m = positive_int("num_matvecs", num_matvecs)

    def algorithm(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array) -> Krylov:
        (p,) = v0.shape
        if m > p:
            raise ValueError(
                f"num_matvecs must be <= P = {p}, the length of the start vector (got {m})."
            )
        dtype = v0.dtype
        eps = jnp.finfo(dtype).eps
        threshold = jnp.sqrt(eps)
        tiny = jnp.finfo(dtype).tiny
        # Restart vectors, drawn at once (cheaper than one draw per step on CPU).
        randoms = jax.random.normal(jax.random.key(0x1A2C05), (m + 1, p), dtype)

        def project(basis: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
            """``v`` orthogonalised twice against the rows, and its coefficients on them.

            Matrix-vector products, not one (2, P) block of vectors: ~5x faster on CPU."""
            h = basis @ v
            v = v - h @ basis
            h2 = basis @ v
            return v - h2 @ basis, h + h2

        def fresh(basis: jax.Array, j: jax.Array | int) -> jax.Array:
            return unit(project(basis, randoms[j])[0])

        def step(j: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            basis, matrix, q, previous, beta, scale = carry
            basis = basis.at[j].set(q)
            w = matvec(q)
            # Largest ||A q_i|| so far: after a restart into a null space A q is rounding noise,
            # and comparing the new vector with that noise alone would not flag the breakdown.
            size = norm(w)
            scale = jnp.maximum(scale, size)
            noise = size <= 100 * eps * scale
            if reortho == "full":
                w, column = project(basis, w)
                matrix = matrix.at[:, j].set(column)
                restart = fresh(basis, j)
                broke = (norm(w) <= threshold * size) | noise
            else:
                alpha = q @ w
                w = w - alpha * q - beta * previous
                # Column j of the tridiagonal: alpha_j and, above it, beta_{j-1}.
                column = jnp.zeros((m,), dtype).at[j].set(alpha)
                matrix = matrix.at[:, j].set(column.at[jnp.maximum(j - 1, 0)].add(beta))
                broke = (norm(w) <= threshold * size) | noise
                restart = jax.lax.cond(
                    broke, lambda: fresh(basis, j), lambda: jnp.zeros((p,), dtype)
                )
            length = norm(w)
            q_next = jnp.where(broke, restart, w / jnp.maximum(length, tiny))
            return basis, matrix, q_next, q, jnp.where(broke, 0.0, length).astype(dtype), scale

        basis = jnp.zeros((m, p), dtype)
        start_length = norm(v0)
        q = jnp.where(start_length > 0, v0 / jnp.maximum(start_length, tiny), fresh(basis, m))
        zero = jnp.zeros((), dtype)
        init = (basis, jnp.zeros((m, m), dtype), q, jnp.zeros((p,), dtype), zero, zero)
        basis, matrix, *_ = jax.lax.fori_loop(0, m, step, init)
        upper = jnp.triu(matrix)
        return Krylov(basis=basis, matrix=upper + jnp.triu(upper, 1).T)

    return full_precision(algorithm)


def lanczos_top_k(
    op: FlatOperator,
    k: int,
    v0: jax.Array,
    *,
    num_matvecs: int,
    reortho: str = "full",
    which: str = "largest",
) -> Eigen:
    """Top-k (or bottom-k) eigenpairs of a flat operator by Lanczos from ``v0`` (shape (P,)).

    Arguments are assumed validated (see :func:`hessian_top_k`). Returns :class:`Eigen`
    with eigenvalues sorted descending and residuals from ``op.matmat``.
    """
    basis, matrix = lanczos(num_matvecs, reortho=reortho)(op.matvec, v0)
    ritz_values, ritz_vectors = jnp.linalg.eigh(matrix)  # ascending
    if which == "largest":
        idx = jnp.arange(num_matvecs - 1, num_matvecs - 1 - k, -1)
    else:
        idx = jnp.arange(k - 1, -1, -1)
    values = ritz_values[idx]
    vectors = (basis.T @ ritz_vectors[:, idx]).T  # (k, P)
    vectors = unit(vectors, axis=1)
    return with_residuals(op, values, canonical_signs(vectors))


def canonical_signs(vectors: jax.Array, reference: jax.Array | None = None) -> jax.Array:
    """Fix the arbitrary sign of each row of ``vectors`` (k, P).

    Without ``reference`` the entry of largest magnitude of each row is made positive; with a
    ``reference`` (k, P) each row is flipped to have a non-negative overlap with its row there.
    """
    if reference is None:
        pivot = jnp.take_along_axis(
            vectors, jnp.argmax(jnp.abs(vectors), axis=1, keepdims=True), axis=1
        )
    else:
        pivot = jnp.sum(vectors * reference, axis=1, keepdims=True)
    return jnp.where(pivot < 0, -vectors, vectors)


def with_residuals(op: FlatOperator, values: jax.Array, vectors: jax.Array) -> Eigen:
    """Attach true residuals ``||H v - lambda v||`` (k Hessian-vector products) to pairs."""
    hv = op.matmat(vectors)
    residuals = norm(hv - values[:, None] * vectors, axis=1)
    return Eigen(eigenvalues=values, eigenvectors=vectors, residuals=residuals)


@compiled(dynamic=("params",))
def hessian_top_k(
    loss_fn: LossFn,
    params: PyTree,
    k: int,
    *,
    num_matvecs: int | None = None,
    reortho: str = "full",
    v0: PyTree | jax.Array | None = None,
    key: jax.Array | None = None,
    which: str = "largest",
) -> Eigen:
    """The k largest (or most negative) Hessian eigenpairs by Lanczos, matrix-free.

    Runs ``num_matvecs`` Lanczos steps (:func:`lanczos`, full
    reorthogonalisation by default) from ``v0`` on Hessian-vector products (the gradient is
    linearised once at ``params``), takes ``eigh`` of the projected matrix and maps the
    chosen Ritz vectors back. Residuals ``||H v - lambda v||`` are then evaluated with k
    further Hessian-vector products, so they are true residuals, not Krylov estimates.
    A repeated eigenvalue is found once per Krylov start in exact arithmetic; with full
    reorthogonalisation rounding usually reveals the copies, but check the residuals and
    prefer the tracker's block method when multiplicities matter.

    Args:
        loss_fn: scalar function of the parameters.
        params: parameter pytree (``P`` entries in all).
        k: number of eigenpairs, ``1 <= k <= P``.
        num_matvecs: Krylov depth, ``k <= num_matvecs <= P``; default
            ``min(P, max(64, 2k + 20))`` (top 3 to ~1e-15 relative on the 603-parameter
            spiral MLP in float64; above 64 the CPU ``eigh`` of the tridiagonal matrix
            becomes the dominant cost).
        reortho: ``"full"`` (default; needed for accurate eigenvectors) or ``"none"``.
        v0: start vector, a flat (P,) array or a pytree like ``params``; overrides ``key``.
        key: PRNG key for a Gaussian start vector; ``jax.random.key(0)`` if both are None.
        which: ``"largest"`` (most positive) or ``"smallest"`` (most negative eigenvalues).

    Returns:
        :class:`Eigen`: eigenvalues (k,) sorted descending (for ``"smallest"``, the k most
        negative ones, still in descending order), eigenvectors (k, P) as unit rows in the
        ``ravel_pytree(params)`` layout (see :func:`unravel_eigenvectors`), each with its
        largest-magnitude entry positive, and residuals (k,).
    """
    flat, _ = ravel_pytree(params)
    p = flat.shape[0]
    check_k(k, p)
    check_which(which)
    if reortho not in REORTHO:
        raise ValueError(
            f"reortho must be 'full' (full reorthogonalisation) or 'none' (plain three-term "
            f"recurrence) (got {reortho!r})."
        )
    if num_matvecs is None:
        num_matvecs = default_num_matvecs(k, p)
    check_num_matvecs(num_matvecs, k, p)
    start = start_vector(params, v0, key)
    op = hessian_operator(loss_fn, params)
    return lanczos_top_k(op, k, start, num_matvecs=num_matvecs, reortho=reortho, which=which)


def start_vector(params: PyTree, v0: PyTree | jax.Array | None, key: jax.Array | None) -> jax.Array:
    """Flat (P,) start vector from ``v0`` (flat or pytree), else Gaussian from ``key``."""
    flat, _ = ravel_pytree(params)
    p = flat.shape[0]
    if v0 is not None:
        v = v0 if isinstance(v0, jax.Array) and v0.ndim == 1 else ravel_pytree(v0)[0]
        if v.shape != (p,):
            raise ValueError(
                f"v0 must be a flat vector of shape ({p},) or a pytree like params "
                f"(got a flat shape {v.shape})."
            )
        return v.astype(flat.dtype)
    if key is None:
        key = jax.random.key(0)
    return jax.random.normal(key, (p,), dtype=flat.dtype)
