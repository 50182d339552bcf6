"""NTK spectra: exact (``eigh`` of the matrix), matrix-free top-k, and stability factors.

Everything works on the (N*C, N*C) sample-major matrix of :func:`curvature.ntk_matrix`.
Eigenvectors are returned as rows, as in the Hessian half of ``curvature`` (``Eigen``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from curvature._checks import is_integer, positive_int
from curvature._compiled import compiled
from curvature._lanczos import lanczos
from curvature._lobpcg import scaled_lobpcg
from curvature._norm import norm, unit
from curvature._ntk import ApplyFn, ntk_matrix, ntk_operator, output_shape
from curvature._precision import full_precision

PyTree = Any

#: Methods accepted by :func:`ntk_top_k`.
TOP_K_METHODS = ("lanczos", "lobpcg")

#: Regime codes of :func:`stability_factors` (index into :data:`REGIME_NAMES`).
SMOOTH, OSCILLATING, MARGINAL, DIVERGENT, GROWING = 0, 1, 2, 3, 4
#: Names of the regime codes, in code order.
REGIME_NAMES = ("smooth", "oscillating", "marginal", "divergent", "growing")


class NTKSpectrum(NamedTuple):
    """Full spectrum of an NTK matrix.

    Attributes:
        eigenvalues: shape (M,), sorted descending, M = N*C (or N for a traced kernel).
        eigenvectors: shape (M, M) with row ``i`` the unit eigenvector of ``eigenvalues[i]``
            (sample-major entries), or ``None`` when not requested.
    """

    eigenvalues: jax.Array
    eigenvectors: jax.Array | None


class NTKEigen(NamedTuple):
    """Top-k eigenpairs of an NTK matrix computed matrix-free.

    Attributes:
        eigenvalues: shape (k,), sorted descending.
        eigenvectors: shape (k, M), row ``i`` the unit eigenvector of ``eigenvalues[i]``.
        residuals: shape (k,), ``||Theta v_i - lambda_i v_i||`` from fresh NTK-vector products
            (not from the Krylov recurrence), so they say what has converged.
    """

    eigenvalues: jax.Array
    eigenvectors: jax.Array
    residuals: jax.Array


class StabilityFactors(NamedTuple):
    """Per-mode factors of linearised gradient descent on the residuals.

    Attributes:
        factors: shape like ``eigenvalues``, ``1 - learning_rate * eigenvalue / num_samples``.
        regime: int32, same shape; codes index :data:`REGIME_NAMES`:
            ``0`` smooth (0 <= factor <= 1: monotone decay; 1 is a frozen zero mode, 0 removes
            the mode in one step), ``1`` oscillating (-1 < factor < 0: sign-flipping decay),
            ``2`` marginal (factor == -1 exactly: eta*lambda/N = 2, the edge of stability, the
            mode flips sign without decaying), ``3`` divergent (factor < -1: sign-flipping
            growth, the two-branch instability), ``4`` growing (factor > 1: only possible for
            a negative eigenvalue beyond ``zero_tolerance``, i.e. a non-PSD input).
            The regime is decided by ``eta * lambda`` against 0, N and 2N (the same
            boundaries, free of the division's rounding): a negative eigenvalue beyond the
            tolerance is growing even where its factor rounds to 1, and eta*lambda = 2N is
            marginal even where the factor does not round to -1 exactly. NaN is divergent.
    """

    factors: jax.Array
    regime: jax.Array


def _as_matrix(kernel: jax.Array) -> jax.Array:
    kernel = jnp.asarray(kernel)
    if kernel.ndim == 4:
        kernel = ntk_matrix(kernel)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(
            "kernel must be an untraced NTK (N, N, C, C) or a square matrix (M, M) "
            f"(got shape {tuple(kernel.shape)})"
        )
    return kernel


@compiled
def ntk_spectrum(kernel: jax.Array, *, eigenvectors: bool = False) -> NTKSpectrum:
    """Exact spectrum of an NTK by ``eigh`` of the full matrix.

    Args:
        kernel: an untraced kernel (N, N, C, C) from :func:`empirical_ntk` (reshaped with
            :func:`ntk_matrix`) or a symmetric matrix (M, M), e.g. a traced (N, N) kernel or the
            output of :func:`loss_ntk` after :func:`ntk_matrix`.
        eigenvectors: also return the eigenvectors (as rows).

    Returns:
        :class:`NTKSpectrum` with eigenvalues (M,) descending and eigenvectors (M, M) or None.
    """
    matrix = _as_matrix(kernel)
    matrix = 0.5 * (matrix + matrix.T)
    if eigenvectors:
        values, vectors = jnp.linalg.eigh(matrix)
        return NTKSpectrum(values[::-1], vectors[:, ::-1].T)
    return NTKSpectrum(jnp.linalg.eigvalsh(matrix)[::-1], None)


def _check_k(k: object, dim: int, method: str) -> int:
    if not is_integer(k):
        raise ValueError(f"k must be a positive integer (got {k!r}).")
    upper = (dim - 1) // 5 if method == "lobpcg" else dim
    if not 1 <= k <= upper:
        extra = " (LOBPCG needs 5*k < N*C)" if method == "lobpcg" else ""
        raise ValueError(f"k must be in [1, {upper}] for a kernel of size {dim}{extra} (got {k})")
    return int(k)


def _check_method(method: object) -> None:
    if method not in TOP_K_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(repr(m) for m in TOP_K_METHODS)} (got {method!r})"
        )


def _check_iterations(num_iterations: object, k: int, dim: int, method: str) -> None:
    if num_iterations is None:
        return
    low, high = (k, dim) if method == "lanczos" else (1, None)
    bad = not is_integer(num_iterations)
    if bad or num_iterations < low or (high is not None and num_iterations > high):
        allowed = f"[{low}, {high}] (k to N*C)" if high is not None else ">= 1"
        raise ValueError(
            f"num_iterations must be None or an integer in {allowed} for method={method!r} "
            f"(got {num_iterations!r})"
        )


def _ritz_residuals(
    matvec: Callable[[jax.Array], jax.Array], values: jax.Array, vectors: jax.Array
) -> jax.Array:
    """``||A v_i - lambda_i v_i||`` for rows ``v_i``; one block product."""
    av = matvec(vectors.T)  # (M, k)
    return norm(av - vectors.T * values[None, :], axis=0)


@full_precision
def top_k_eigh(
    matvec: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    k: int,
    *,
    method: str = "lanczos",
    num_iterations: int | None = None,
) -> NTKEigen:
    """Top-k eigenpairs of a symmetric PSD operator given by block products.

    Args:
        matvec: maps a block (M, j) to (M, j).
        v0: start, (M,) for Lanczos or (M, k) for LOBPCG (a (M,) vector is widened with
            deterministic pseudo-random columns).
        k: number of eigenpairs.
        method: ``"lanczos"`` (:func:`~curvature.lanczos`, full reorthogonalisation and
            restarts at breakdown, then the Ritz pairs of the projected matrix) or ``"lobpcg"``
            (``jax.experimental.sparse.linalg.lobpcg_standard``, on the kernel divided by a
            power of two near its size, so that its sums of squares stay in range, until the
            relative residuals are below 100 eps; JAX's default of about 20 M eps stopped at
            2e-3 in float32).
        num_iterations: Krylov depth for Lanczos (default ``min(M, max(2k + 20, 40))``; a
            depth above the operator's rank is fine, the recurrence restarts) or the LOBPCG
            iteration cap (default 100).

    Returns:
        :class:`NTKEigen` with eigenvalues (k,) descending, eigenvectors (k, M), residuals (k,).
    """
    _check_method(method)
    dim = v0.shape[0]
    k = _check_k(k, dim, method)
    _check_iterations(num_iterations, k, dim, method)
    if method == "lanczos":
        depth = min(dim, max(2 * k + 20, 40)) if num_iterations is None else num_iterations
        start = v0 if v0.ndim == 1 else v0[:, 0]
        basis, matrix = lanczos(depth)(lambda v: matvec(v[:, None])[:, 0], start)
        ritz, small = jnp.linalg.eigh(matrix)
        order = jnp.argsort(ritz)[::-1][:k]
        values = ritz[order]
        vectors = (basis.T @ small[:, order]).T  # basis is (depth, M)
    elif method == "lobpcg":
        iters = 100 if num_iterations is None else num_iterations
        block = v0 if v0.ndim == 2 else _widen(v0, k)
        values, vecs, _ = scaled_lobpcg(matvec, block, iters)
        order = jnp.argsort(values)[::-1]
        values, vectors = values[order], vecs[:, order].T
    vectors = unit(vectors, axis=1)
    return NTKEigen(values, vectors, _ritz_residuals(matvec, values, vectors))


def _widen(v0: jax.Array, k: int) -> jax.Array:
    """Block (M, k) whose first column is ``v0`` and the others pseudo-random."""
    extra = jax.random.normal(jax.random.PRNGKey(0), (v0.shape[0], k - 1), dtype=v0.dtype)
    return jnp.concatenate([v0[:, None], extra], axis=1)


@full_precision
def ntk_top_k(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    k: int,
    *,
    method: str = "lanczos",
    num_iterations: int | None = None,
    key: jax.Array | None = None,
) -> NTKEigen:
    """Top-k eigenpairs of the untraced training NTK, matrix-free.

    The (N*C, N*C) matrix is never formed: every product is ``Theta v = J (J^T v)`` by one
    vjp and one jvp of ``apply_fn`` at ``params`` (:func:`ntk_operator`). The eigenvalues are
    those of :func:`ntk_spectrum` on ``empirical_ntk(apply_fn, params, x)``.

    Args:
        apply_fn, params, x: model, parameter pytree, inputs (N, ...).
        k: number of eigenpairs, 1 <= k <= N*C (LOBPCG: 5*k < N*C).
        method: ``"lanczos"`` (default) or ``"lobpcg"``; see :func:`top_k_eigh`.
        num_iterations: Lanczos depth or LOBPCG iteration cap; see :func:`top_k_eigh`.
        key: PRNG key for the start vector(s) (default ``PRNGKey(0)``).

    Returns:
        :class:`NTKEigen`: eigenvalues (k,) descending, eigenvectors (k, N*C) sample-major,
        residuals (k,) ``||Theta v - lambda v||``.
    """
    _check_method(method)
    n, c = output_shape(apply_fn, params, x)
    dim = n * c
    k = _check_k(k, dim, method)
    key = jax.random.PRNGKey(0) if key is None else key
    dtype = jax.eval_shape(apply_fn, params, x).dtype
    shape = (dim,) if method == "lanczos" else (dim, k)
    v0 = jax.random.normal(key, shape, dtype=dtype)
    _check_iterations(num_iterations, k, dim, method)
    return _ntk_top_k_jit(
        apply_fn, params, x, v0, k=k, method=method, num_iterations=num_iterations
    )


@functools.partial(jax.jit, static_argnames=("apply_fn", "k", "method", "num_iterations"))
def _ntk_top_k_jit(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    v0: jax.Array,
    *,
    k: int,
    method: str,
    num_iterations: int | None,
) -> NTKEigen:
    matvec = ntk_operator(apply_fn, params, x)
    return top_k_eigh(matvec, v0, k, method=method, num_iterations=num_iterations)


def stability_factors(
    eigenvalues: jax.Array,
    learning_rate: float | jax.Array,
    num_samples: int,
    *,
    zero_tolerance: float | None = None,
) -> StabilityFactors:
    """Per-mode factors ``1 - learning_rate * lambda_j / num_samples`` and their regimes.

    For full-batch gradient descent on the mean-form MSE ``(1/(2N)) sum ||f - e_y||^2`` the
    output residual along NTK eigenvector ``j`` is multiplied by exactly this factor per step
    while the kernel is frozen (linearised dynamics); for CE/DCE use the eigenvalues of
    :func:`loss_ntk` for the same linearised statement. ``num_samples`` is the number of
    training samples N (300 for the spiral), not the matrix size N*C.

    Args:
        eigenvalues: any shape, e.g. (M,) from :func:`ntk_spectrum` or (steps, k).
        learning_rate: eta > 0 (a Python number is checked; a traced value is not).
        num_samples: N >= 1, a Python integer.
        zero_tolerance: eigenvalues with ``|lambda| <= zero_tolerance`` are zero modes (regime
            smooth, factor about 1), so that rounding of the exact zeros of a PSD kernel does
            not read as growth. Default: ``M * eps * max|lambda|`` along the last axis (finite
            values; ``M`` its length, ``eps`` of the dtype), the rank tolerance of
            ``numpy.linalg.matrix_rank``, right for a full spectrum from :func:`ntk_spectrum`
            (the spiral's 900 x 900 kernel at width 100 has rank <= P = 603; float32 ``eigh``
            returns 299 negative values, down to -9e-5 at initialisation) and negligible for a
            top-k. ``0`` counts every negative eigenvalue as growing.

    Returns:
        :class:`StabilityFactors` with ``factors`` and int32 ``regime`` of the same shape;
        boundaries: factor 0 and 1 are smooth, -1 is marginal, decided from eta * lambda
        (see the class docstring).
    """
    if not isinstance(learning_rate, jax.core.Tracer):
        lr = np.asarray(learning_rate)
        if lr.ndim == 0 and not float(lr) > 0:
            raise ValueError(f"learning_rate must be > 0 (got {float(lr)})")
        if lr.ndim > 0 and not np.all(lr > 0):
            raise ValueError(f"learning_rate must be > 0 (got {lr})")
    positive_int(
        "num_samples",
        num_samples,
        ", the number of training samples N (300 for the spiral, not N*C)",
    )
    if zero_tolerance is not None and not (
        isinstance(zero_tolerance, jax.core.Tracer) or float(zero_tolerance) >= 0
    ):
        raise ValueError(f"zero_tolerance must be >= 0 or None (got {zero_tolerance!r})")
    eigenvalues = jnp.asarray(eigenvalues)
    if zero_tolerance is None:
        dtype = eigenvalues.dtype if jnp.issubdtype(eigenvalues.dtype, jnp.floating) else float
        magnitude = jnp.where(jnp.isfinite(eigenvalues), jnp.abs(eigenvalues), 0)
        size = eigenvalues.shape[-1] if eigenvalues.ndim else 1
        largest = (
            jnp.max(magnitude, axis=-1, keepdims=True, initial=0.0)
            if eigenvalues.ndim
            else magnitude
        )
        zero_tolerance = size * jnp.finfo(dtype).eps * largest
    # Regimes from eta * lambda against 0, N and 2N (exact for N < 2**24): the factor's own
    # division is not correctly rounded on GPUs (600 / 300 gave a factor just above -1 on an
    # H200, so the marginal case read as oscillating).
    scaled = learning_rate * eigenvalues
    factors = 1 - scaled / num_samples
    regime = jnp.select(
        [
            (scaled < 0) & ~(jnp.abs(eigenvalues) <= zero_tolerance),
            scaled <= num_samples,
            scaled < 2 * num_samples,
            scaled == 2 * num_samples,
        ],
        [GROWING, SMOOTH, OSCILLATING, MARGINAL],
        default=DIVERGENT,
    ).astype(jnp.int32)
    return StabilityFactors(factors, regime)


__all__ = [
    "DIVERGENT",
    "GROWING",
    "MARGINAL",
    "OSCILLATING",
    "REGIME_NAMES",
    "SMOOTH",
    "TOP_K_METHODS",
    "NTKEigen",
    "NTKSpectrum",
    "StabilityFactors",
    "ntk_spectrum",
    "ntk_top_k",
    "stability_factors",
    "top_k_eigh",
]
