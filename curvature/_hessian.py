"""Hessian-vector products and the dense Hessian built from them.

Everything here works on a scalar ``loss_fn(params)`` and an arbitrary parameter pytree.
The linear algebra runs on the flat parameter vector of length ``P`` given by
``jax.flatten_util.ravel_pytree(params)``; the flattening order is that of ravel_pytree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from curvature._checks import positive_int
from curvature._compiled import compiled
from curvature._norm import norm
from curvature._precision import full_precision

PyTree = Any
LossFn = Callable[[PyTree], jax.Array]

#: Default memory budget for ``hessian_exact``: bytes of the dense (P, P) matrix (1 GiB).
DEFAULT_MAX_BYTES = 2**30
_UNROLL = 8

#: How ``FlatOperator.matmat`` multiplies several vectors: ``None`` picks by backend (see
#: :func:`vmap_products`); ``True`` / ``False`` force one way (benchmarks compare both).
VMAP_PRODUCTS: bool | None = None


class Eigen(NamedTuple):
    """Eigenpairs of a Hessian.

    Attributes:
        eigenvalues: shape (k,), sorted descending.
        eigenvectors: shape (k, P); row ``i`` is the unit eigenvector of ``eigenvalues[i]`` in
            the flat parameter space of ``ravel_pytree(params)``. Use
            :func:`unravel_eigenvectors` to turn the rows into parameter pytrees.
        residuals: shape (k,), ``||H v_i - lambda_i v_i||`` computed with Hessian-vector
            products (not from the Krylov recurrence), so they say what has converged.
    """

    eigenvalues: jax.Array
    eigenvectors: jax.Array
    residuals: jax.Array


class FlatOperator(NamedTuple):
    """The Hessian at ``params`` as a linear operator on flat vectors.

    Attributes:
        matvec: ``v (P,) -> H v (P,)``.
        matmat: ``V (m, P) -> (H V^T)^T (m, P)``: the rows of ``V`` multiplied one after the
            other (unrolled for m <= 8, ``lax.map`` above) or as one vmapped product, as
            :func:`vmap_products` says.
        flat_params: the flat parameter vector, shape (P,).
        unravel: maps a flat (P,) vector back to a parameter pytree.
    """

    matvec: Callable[[jax.Array], jax.Array]
    matmat: Callable[[jax.Array], jax.Array]
    flat_params: jax.Array
    unravel: Callable[[jax.Array], PyTree]


@compiled(dynamic=("params", "v"))
def hvp(loss_fn: LossFn, params: PyTree, v: PyTree) -> PyTree:
    """Hessian-vector product ``H(params) v`` by forward-over-reverse differentiation.

    Args:
        loss_fn: scalar function of the parameters.
        params: parameter pytree at which the Hessian is taken.
        v: a pytree with the structure, shapes and dtypes of ``params``.

    Returns:
        A pytree like ``params`` holding ``H v``. Jit-able; ``loss_fn`` is closed over.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


@full_precision
def hessian_operator(loss_fn: LossFn, params: PyTree) -> FlatOperator:
    """Linearise the gradient once at ``params`` and return the Hessian as a flat operator.

    The forward and backward pass at ``params`` are evaluated once (``jax.linearize`` of the
    gradient); every product afterwards costs only the tangent (forward-over-reverse) part.
    This is what the iterative solvers use when they need many products at one point.

    Returns:
        A :class:`FlatOperator` with ``matvec`` on (P,) vectors and ``matmat`` on (m, P) rows.
    """
    flat, unravel = ravel_pytree(params)

    def flat_grad(x: jax.Array) -> jax.Array:
        return ravel_pytree(jax.grad(loss_fn)(unravel(x)))[0]

    _, matvec = jax.linearize(flat_grad, flat)

    def matmat(vectors: jax.Array) -> jax.Array:
        if vmap_products():
            if vectors.shape[0] <= _UNROLL:
                return jax.vmap(matvec)(vectors)
            return jax.lax.map(matvec, vectors, batch_size=_UNROLL)
        if vectors.shape[0] <= _UNROLL:
            return jnp.stack([matvec(v) for v in vectors])
        return jax.lax.map(matvec, vectors)

    # Products in ``matvec`` keep the precision they were linearised with (full, above).
    return FlatOperator(matvec=matvec, matmat=matmat, flat_params=flat, unravel=unravel)


def vmap_products() -> bool:
    """Whether ``FlatOperator.matmat`` vmaps its products (else it runs them in sequence).

    ``VMAP_PRODUCTS`` when set; else sequential when JAX's default backend (read when the
    products are traced) is the CPU and vmapped otherwise. Measured
    (``benchmarks/curvature.py``, spiral MLP, float32 at full precision, 3 products inside a
    training step, in plain steps): on a 2-core CPU 4.1 sequential against 7.4 vmapped at
    width 100 and 3.5 against 6.8 at width 1000 (XLA's batched small matmuls are slow there);
    on an H100 3.1 against 1.0 at width 100 and 2.5 against 1.7 at width 1000 (one launch
    instead of three). Vmapped products go 8 at a time (``lax.map`` with ``batch_size``).
    """
    if VMAP_PRODUCTS is not None:
        return VMAP_PRODUCTS
    return jax.default_backend() != "cpu"


def num_params(params: PyTree) -> int:
    """Return ``P``, the number of scalar entries in the parameter pytree."""
    return int(sum(jnp.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def _check_budget(p: int, itemsize: int, max_bytes: int) -> None:
    needed = p * p * itemsize
    if needed > max_bytes:
        raise ValueError(
            f"hessian_exact refuses to build the dense Hessian: P = {p} parameters need "
            f"{needed:,} bytes ({needed / 2**20:.1f} MiB) for the ({p}, {p}) matrix, above "
            f"the budget max_bytes = {max_bytes:,} bytes ({max_bytes / 2**20:.1f} MiB). "
            f"Pass a larger max_bytes (e.g. max_bytes={needed}) if the memory is there "
            "(peak use is about three times the matrix), or use the matrix-free "
            "hessian_top_k / spectral_density instead."
        )


@compiled(dynamic=("params",))
def hessian_exact(
    loss_fn: LossFn,
    params: PyTree,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    chunk_size: int = 1,
) -> jax.Array:
    """The dense Hessian of ``loss_fn`` at ``params``, built from batched Hessian-vector products.

    Columns ``H e_i`` are computed in chunks of ``chunk_size`` basis vectors (a vmapped
    product inside ``lax.map``, after linearising the gradient once), then the matrix is
    symmetrised, ``(H + H^T) / 2``, which removes the rounding asymmetry of the products.
    The default chunk of 1 (a sequential loop) is fastest on CPU: width-1000 spiral MLP in
    float64, 9.4 s with chunks of 1, 18.4 s with 8, 19.2 s with 64 (2-core CPU,
    ``benchmarks/curvature.py --widths 1000 --exact --dtype float64``); on a GPU larger
    chunks pay.

    Args:
        loss_fn: scalar function of the parameters.
        params: parameter pytree; ``P`` is its total number of entries.
        max_bytes: budget for the (P, P) matrix, ``P * P * itemsize`` bytes (1 GiB by
            default: width-1000 spiral MLP, P = 6,003, needs 288 MB in float64). Peak memory
            is about three matrices. Larger problems are refused with a ``ValueError``.
        chunk_size: number of basis vectors per vmapped product (memory vs. speed).

    Returns:
        Array of shape (P, P) in the dtype of the flat parameters, rows and columns in the
        order of ``ravel_pytree(params)``.
    """
    positive_int("chunk_size", chunk_size)
    flat, _ = ravel_pytree(params)
    p = flat.shape[0]
    _check_budget(p, flat.dtype.itemsize, max_bytes)
    op = hessian_operator(loss_fn, params)

    def column(i: jax.Array) -> jax.Array:
        return op.matvec(jax.nn.one_hot(i, p, dtype=flat.dtype))

    batch = None if chunk_size == 1 else min(chunk_size, p)
    columns = jax.lax.map(column, jnp.arange(p), batch_size=batch)
    return 0.5 * (columns + columns.T)


@compiled(dynamic=("params",))
def hessian_eigh(
    loss_fn: LossFn, params: PyTree, *, max_bytes: int = DEFAULT_MAX_BYTES, chunk_size: int = 1
) -> Eigen:
    """All eigenpairs of the dense Hessian (``hessian_exact`` followed by ``eigh``).

    The reference against which the iterative solvers are tested. Same memory budget as
    :func:`hessian_exact`.

    Returns:
        :class:`Eigen` with eigenvalues (P,) sorted descending, eigenvectors (P, P) as rows,
        and residuals (P,) ``||H v - lambda v||`` evaluated with the dense matrix.
    """
    h = hessian_exact(loss_fn, params, max_bytes=max_bytes, chunk_size=chunk_size)
    values, vectors = jnp.linalg.eigh(h)
    values = values[::-1]
    vectors = vectors[:, ::-1].T
    residuals = norm(vectors @ h - values[:, None] * vectors, axis=1)
    return Eigen(eigenvalues=values, eigenvectors=vectors, residuals=residuals)


def unravel_eigenvectors(eigenvectors: jax.Array, params: PyTree) -> PyTree:
    """Turn flat eigenvectors (k, P) into a parameter pytree whose leaves gain a leading axis k.

    Args:
        eigenvectors: array of shape (k, P), rows as returned in ``Eigen.eigenvectors``.
        params: any pytree with the structure of the parameters (only its layout is used).

    Returns:
        A pytree like ``params`` whose every leaf has shape ``(k, *leaf.shape)``.
    """
    _, unravel = ravel_pytree(params)
    return jax.vmap(unravel)(eigenvectors)
