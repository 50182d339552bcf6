"""Per-step tracking of the top-k Hessian eigenpairs, warm-started from the previous step.

An optax-style stateful transform: ``tracker = hessian_tracker(k)``, ``state =
tracker.init(params, key)``, then every step ``eig, state = tracker.update(loss_fn, params,
state)``. Shapes are fixed, there is no host synchronisation, so ``update`` runs inside
``jax.lax.scan``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from curvature._checks import is_integer, positive_int
from curvature._compiled import compiled
from curvature._hessian import Eigen, FlatOperator, LossFn, PyTree, hessian_operator
from curvature._lanczos import (
    canonical_signs,
    check_k,
    check_num_matvecs,
    check_which,
    default_num_matvecs,
    lanczos_top_k,
    with_residuals,
)
from curvature._lobpcg import scaled_lobpcg
from curvature._norm import norm
from curvature._small import MAX_JACOBI_SIZE, gram_schmidt_rows, jacobi_eigh

METHODS = ("block", "jax_lobpcg", "lanczos")
DEFAULT_TOL = 1e-4

#: How the block tracker does its small dense work: ``None`` picks by backend (see
#: :func:`small_linalg`); ``"library"`` / ``"arrays"`` force one way (benchmarks compare both).
SMALL_LINALG: str | None = None


def small_linalg() -> str:
    """How the block tracker orthonormalises and solves its small eigenproblems.

    ``"library"``: ``jnp.linalg.qr`` / ``eigh`` (LAPACK on CPU, solver-library calls on a
    GPU); ``"arrays"``: :mod:`curvature._small` (parallel Jacobi and Gram-Schmidt written as
    element-wise operations, no solver call; both unrolled, so only for blocks of at most
    ``MAX_JACOBI_SIZE`` rows or columns, library calls beyond). ``SMALL_LINALG`` when set;
    else "library" when JAX's default backend (read when the update is traced) is the CPU and
    "arrays" otherwise. tests/test_tracking.py checks both against the dense Hessian. On the
    spiral benchmark below they made the same expansions and restarts (largest eigenvalues;
    for the most negative ones, where restarts are frequent, a few steps differ). Measured
    (``benchmarks/curvature.py``, spiral DCE run, float32, top-3 block tracker, cost per step
    in plain steps, widths 100 / 1000): on an H200 38.2 / 63.0 with library calls
    against 20.7 / 39.2 in arrays (an eigh of 9 x 9 there is a 316 us solver call, Jacobi
    118 us with the 7 sweeps of then; the table now gives 8); on a 2-core CPU 16.4 / 20.5
    against 21.8 / 21.0.
    """
    if SMALL_LINALG is not None:
        if SMALL_LINALG not in ("library", "arrays"):
            raise ValueError(
                f"curvature._tracking.SMALL_LINALG must be None, 'library' or 'arrays' (got "
                f"{SMALL_LINALG!r})."
            )
        return SMALL_LINALG
    return "library" if jax.default_backend() == "cpu" else "arrays"


def max_tracked_k(num_params: int, method: str = "block") -> int:
    """The most eigenpairs :func:`hessian_tracker` with ``method`` tracks for P parameters:
    ``"block"`` needs room for a residual block beside the vectors (2k <= P), LOBPCG 5k < P."""
    limits = {"block": num_params // 2, "jax_lobpcg": (num_params - 1) // 5}
    return limits.get(method, num_params)


class TrackerState(NamedTuple):
    """State of :func:`hessian_tracker` (a pytree; every field has a fixed shape).

    Attributes:
        eigenvectors: (k, P) the last reported eigenvectors (zeros before the first update).
        eigenvalues: (k,) the last reported eigenvalues.
        key: PRNG key for the start vectors of cold restarts.
        count: int32 scalar, number of updates done.
        restarted: bool scalar, whether the last update was a cold start (always true for
            the first update).
        num_restarts: int32 scalar, cold starts so far (the first update included).
        iterations: int32 scalar, warm iterations used by the last update (0 when it started
            cold at the first update).
    """

    eigenvectors: jax.Array
    eigenvalues: jax.Array
    key: jax.Array
    count: jax.Array
    restarted: jax.Array
    num_restarts: jax.Array
    iterations: jax.Array


class Tracker(NamedTuple):
    """A pair of pure functions, as optax's ``GradientTransformation``.

    Attributes:
        init: ``(params, key) -> TrackerState``.
        update: ``(loss_fn, params, state) -> (Eigen, TrackerState)``.
    """

    init: Callable[[PyTree, jax.Array], TrackerState]
    update: Callable[[LossFn, PyTree, TrackerState], tuple[Eigen, TrackerState]]


def hessian_tracker(
    k: int,
    *,
    num_iterations: int = 8,
    tol: float | None = None,
    restart_tol: float | None = None,
    num_matvecs: int | None = None,
    method: str = "block",
    which: str = "largest",
) -> Tracker:
    """Track the k largest (or most negative) Hessian eigenpairs along a trajectory.

    Every update starts from the previous update's eigenvectors (warm start) and refines
    them at the new parameters; if afterwards some relative residual
    ``||H v_i - lambda_i v_i|| / |lambda_i|`` exceeds ``restart_tol``, the update falls back
    (``lax.cond``) to a cold Lanczos start (:func:`hessian_top_k`'s algorithm from a fresh
    random vector). The first update is always cold. The relative residual's denominator is
    floored at ``1e-6 * max_j |lambda_j|``, so eigenvalues near zero do not force restarts.

    Warm methods (all tested against dense ``eigh``; costs in Hessian-vector products, HVPs):

    - ``"block"`` (default): hand-written block LOBPCG that reuses its products. ``H X`` for
      the previous vectors X (k HVPs) and Rayleigh-Ritz in their span, then up to
      ``num_iterations`` Rayleigh-Ritz expansions by the residual block and the previous
      update direction (k HVPs each), stopping once every relative residual is below
      ``tol``. The residuals come from the same products, so a step that is already
      converged costs k HVPs. Chosen because it was the cheapest for the accuracy in
      benchmarks/curvature.py (it needs no extra products for residuals). Its small QR and
      eigh are LAPACK calls on CPU and Jacobi / Gram-Schmidt in array operations elsewhere
      (:func:`small_linalg`; 1.6-1.9x faster tracking on an H200).
    - ``"jax_lobpcg"``: ``jax.experimental.sparse.linalg.lobpcg_standard`` with at most
      ``num_iterations`` iterations, then k HVPs for the residuals. Needs ``5 k < P``.
    - ``"lanczos"``: Lanczos of depth ``num_iterations`` (>= k) started from the sum of the
      previous eigenvectors, then k HVPs for the residuals.

    Under ``jax.vmap`` (batched runs) ``lax.cond`` evaluates both branches, so every step
    pays for the cold start; track per run or accept the cost.

    ``which="smallest"`` is harder: the most negative eigenvalues of a trained network are
    small and packed close together, so the relative residuals are strict and moving
    eigenvectors slow to converge. On the spiral DCE run (width 100, float32, the first 200
    steps) the warm start fell back to a cold start on 161 of 200 steps at the default
    ``tol`` (41 with ``tol=1e-2``), against 1 of 200 for ``"largest"``.

    Args:
        k: number of eigenpairs, ``1 <= k <= P`` (checked at ``init``; ``"block"`` needs
            ``2k <= P``).
        num_iterations: the most warm expansions per update (``"block"``, >= 0), the most
            LOBPCG iterations (``"jax_lobpcg"``, >= 1), or the warm Lanczos depth (>= k).
            Default 8. A typical update needs 1-2 expansions; the cap only matters on hard
            steps (early training), where a cap of 4 fell back to cold starts 4x as often
            and cost about a quarter more in total (spiral DCE run from initialisation,
            width 1000: 14.1 against 11.0 plain steps per step, benchmarks/curvature.py).
        tol: relative residual at which warm iterations stop (default ``max(1e-4, 1e4 eps)``:
            1e-4 in float64, 1.2e-3 in float32, whose Hessian-vector products bottom out
            near 1e-4 at width 1000; eigenvalues come to about ``tol**2 * |lambda| / gap``).
            Use ``sqrt(eps)`` (1.5e-8 in float64) for eigenvalues to rounding level, at
            several times the cost.
        restart_tol: relative residual above which the update restarts cold; default
            ``10 * tol``. Must be >= ``tol``.
        num_matvecs: Krylov depth of cold starts; default ``min(P, max(64, 2k + 20))``.
        method: ``"block"``, ``"jax_lobpcg"`` or ``"lanczos"`` (see above).
        which: ``"largest"`` (most positive) or ``"smallest"`` (most negative eigenvalues).

    Returns:
        :class:`Tracker` ``(init, update)``. ``update`` returns :class:`Eigen` (eigenvalues
        (k,) descending, eigenvectors (k, P) flat with signs aligned to the previous step,
        residuals (k,) from true HVPs) and the new :class:`TrackerState`, whose ``restarted``
        says whether this update started cold.
    """
    check_which(which)
    if method not in METHODS:
        raise ValueError(
            f"method must be one of {', '.join(repr(m) for m in METHODS)} (got {method!r})."
        )
    k = positive_int("k", k)
    min_iterations = {"block": 0, "jax_lobpcg": 1, "lanczos": k}[method]
    if not is_integer(num_iterations) or num_iterations < min_iterations:
        raise ValueError(
            f"num_iterations must be an integer >= {min_iterations} for method {method!r} "
            f"(got {num_iterations!r})."
        )
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be > 0 (got {tol!r}).")
    if restart_tol is not None and not restart_tol > 0:
        raise ValueError(f"restart_tol must be > 0 (got {restart_tol!r}).")
    if restart_tol is not None and tol is not None and restart_tol < tol:
        raise ValueError(
            f"restart_tol must be >= tol (got restart_tol={restart_tol!r}, tol={tol!r}); "
            "warm results already accepted at tol would otherwise trigger restarts."
        )
    num_iterations = int(num_iterations)
    sign = 1.0 if which == "largest" else -1.0

    def init(params: PyTree, key: jax.Array) -> TrackerState:
        flat, _ = ravel_pytree(params)
        p = flat.shape[0]
        check_k(k, p)
        if method == "jax_lobpcg" and k > max_tracked_k(p, method):
            raise ValueError(
                f"method 'jax_lobpcg' needs 5 * k < P (got k = {k}, P = {p}); use method "
                "'block' for small problems."
            )
        if method == "block" and k > max_tracked_k(p, method):
            raise ValueError(
                f"method 'block' needs 2 * k <= P, room for the residual block beside the "
                f"vectors (got k = {k}, P = {p}); use method 'lanczos' with "
                f"num_iterations = {p} for so small a problem."
            )
        if method == "lanczos" and num_iterations > p:
            raise ValueError(
                f"num_iterations, the Lanczos depth of method 'lanczos', must satisfy "
                f"k <= num_iterations <= P, i.e. {k} <= num_iterations <= {p} (got "
                f"{num_iterations})."
            )
        if num_matvecs is not None:
            check_num_matvecs(num_matvecs, k, p)
        default_tol = _default_tol(flat.dtype)
        if restart_tol is not None and tol is None and restart_tol < default_tol:
            raise ValueError(
                f"restart_tol must be >= tol (got restart_tol={restart_tol!r}, default tol "
                f"{default_tol:.3g} in {jnp.dtype(flat.dtype).name}); warm results already "
                "accepted at tol would otherwise trigger restarts."
            )
        return TrackerState(
            eigenvectors=jnp.zeros((k, p), flat.dtype),
            eigenvalues=jnp.zeros((k,), flat.dtype),
            key=key,
            count=jnp.zeros((), jnp.int32),
            restarted=jnp.zeros((), bool),
            num_restarts=jnp.zeros((), jnp.int32),
            iterations=jnp.zeros((), jnp.int32),
        )

    def update(loss_fn: LossFn, params: PyTree, state: TrackerState) -> tuple[Eigen, TrackerState]:
        op = hessian_operator(loss_fn, params)
        p = op.flat_params.shape[0]
        dtype = op.flat_params.dtype
        warm_tol = jnp.asarray(_default_tol(dtype) if tol is None else tol, dtype)
        cold_tol = 10.0 * warm_tol if restart_tol is None else jnp.asarray(restart_tol, dtype)
        depth = default_num_matvecs(k, p) if num_matvecs is None else num_matvecs
        key, cold_key = jax.random.split(state.key)
        previous = state.eigenvectors.astype(dtype)

        def warm() -> tuple[Eigen, jax.Array, jax.Array]:
            if method == "block":
                eig, iters = _block(op, previous, num_iterations, warm_tol, sign)
            elif method == "jax_lobpcg":
                size = jnp.max(jnp.abs(state.eigenvalues)).astype(dtype)
                eig, iters = _lobpcg(op, previous, size, num_iterations, warm_tol, sign)
            else:
                start = jnp.sum(previous, axis=0)
                eig = lanczos_top_k(op, k, start, num_matvecs=num_iterations, which=which)
                iters = jnp.asarray(num_iterations, jnp.int32)
            bad = jnp.any(relative_residuals(eig) > cold_tol) | ~jnp.all(
                jnp.isfinite(eig.residuals)
            )
            return eig, iters, bad

        def skip() -> tuple[Eigen, jax.Array, jax.Array]:
            empty = Eigen(
                eigenvalues=jnp.zeros((k,), dtype),
                eigenvectors=jnp.zeros((k, p), dtype),
                residuals=jnp.zeros((k,), dtype),
            )
            return empty, jnp.zeros((), jnp.int32), jnp.ones((), bool)

        first = state.count == 0
        warm_eig, iters, restart = jax.lax.cond(first, skip, warm)

        def cold() -> Eigen:
            start = jax.random.normal(cold_key, (p,), dtype)
            return lanczos_top_k(op, k, start, num_matvecs=depth, which=which)

        eig = jax.lax.cond(restart, cold, lambda: warm_eig)
        aligned = jnp.where(
            first, canonical_signs(eig.eigenvectors), canonical_signs(eig.eigenvectors, previous)
        )
        eig = eig._replace(eigenvectors=aligned)
        new_state = TrackerState(
            eigenvectors=eig.eigenvectors,
            eigenvalues=eig.eigenvalues,
            key=key,
            count=state.count + 1,
            restarted=restart,
            num_restarts=state.num_restarts + restart.astype(jnp.int32),
            iterations=iters,
        )
        return eig, new_state

    # Called with concrete arrays (a user's loop), one compiled program per shape.
    return Tracker(init=init, update=compiled(update, dynamic=("params", "state")))


def _default_tol(dtype: jnp.dtype) -> float:
    """The warm tolerance when none is given: ``max(1e-4, 1e4 eps)``."""
    return max(DEFAULT_TOL, 1e4 * float(jnp.finfo(dtype).eps))


def relative_residuals(eig: Eigen) -> jax.Array:
    """Residuals divided by ``max(|lambda_i|, 1e-6 max_j |lambda_j|)``, shape (k,)."""
    scale = jnp.abs(eig.eigenvalues)
    floor = 1e-6 * jnp.max(scale) + jnp.finfo(scale.dtype).tiny
    return eig.residuals / jnp.maximum(scale, floor)


def _in_arrays(size: int) -> bool:
    """Whether a block of ``size`` rows goes to :mod:`curvature._small` (unrolled, so capped)."""
    return small_linalg() == "arrays" and size <= MAX_JACOBI_SIZE


def _orthonormal_rows(vectors: jax.Array) -> jax.Array:
    """Orthonormal rows spanning the rows of ``vectors`` (m, P): Householder QR or
    Gram-Schmidt (see :func:`small_linalg`)."""
    if _in_arrays(vectors.shape[0]):
        return gram_schmidt_rows(vectors)
    q, _ = jnp.linalg.qr(vectors.T)
    return q.T


def _eigh(matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``jnp.linalg.eigh`` of a small symmetric matrix, or Jacobi (see :func:`small_linalg`)."""
    if _in_arrays(matrix.shape[-1]):
        return jacobi_eigh(matrix)
    return jnp.linalg.eigh(matrix)


def _ritz(basis: jax.Array, h_basis: jax.Array, k: int) -> tuple[jax.Array, ...]:
    """Rayleigh-Ritz on orthonormal rows ``basis`` with their products ``h_basis``.

    Returns the top-k Ritz values (descending), vectors, their products and residuals.
    """
    gram = basis @ h_basis.T
    gram = 0.5 * (gram + gram.T)
    values, coeffs = _eigh(gram)
    coeffs = coeffs[:, ::-1][:, :k]
    values = values[::-1][:k]
    vectors = coeffs.T @ basis
    h_vectors = coeffs.T @ h_basis
    resid = h_vectors - values[:, None] * vectors
    return values, vectors, h_vectors, resid


def _block(
    op: FlatOperator, previous: jax.Array, num_iterations: int, tol: jax.Array, sign: float
) -> tuple[Eigen, jax.Array]:
    """Block LOBPCG-style refinement on ``sign * H`` from ``previous`` (k, P).

    ``H X`` for the orthonormalised previous vectors (k products) and a Rayleigh-Ritz step in
    their span; then, while a relative residual exceeds ``tol`` and fewer than
    ``num_iterations`` expansions were made, Rayleigh-Ritz on ``[X, Z, P]`` with Z the
    orthonormalised residual block (k new products) and P the previous update direction
    (its product is a combination of known ones). P's rows are normalised; directions of P
    left shorter than ``eps**0.25`` after projection are dropped (their Ritz value is pushed
    below the spectrum), so rounding in the known products is amplified by at most
    ``eps**-0.25``. Residuals come from the same products.
    """
    k, p = previous.shape
    dtype = previous.dtype
    drop_below = jnp.finfo(dtype).eps ** 0.25

    def matmat(v: jax.Array) -> jax.Array:
        return sign * op.matmat(v)

    def project(v: jax.Array, hv: jax.Array, basis: jax.Array, h_basis: jax.Array):
        coeffs = v @ basis.T
        return v - coeffs @ basis, hv - coeffs @ h_basis

    x = _orthonormal_rows(previous)
    # Stored vectors that are linearly dependent leave a short row after Gram-Schmidt (QR
    # completes them instead): such a warm start is reported unconverged, so it restarts cold.
    dependent = jnp.any(norm(x, axis=1) < 0.5)
    values, x, hx, resid = _ritz(x, matmat(x), k)

    def cond(carry: tuple[jax.Array, ...]) -> jax.Array:
        i, values, _, _, resid, _, _ = carry
        norms = norm(resid, axis=1)
        converged = jnp.all(relative_residuals(Eigen(values, resid, norms)) <= tol)
        return (i < num_iterations) & ~converged & ~dependent

    def body(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        i, _, x, hx, resid, d, hd = carry
        # Residual block, orthonormal and orthogonal to x (projected twice). QR turns a row
        # that projects to zero (an exact eigenvector's residual) into an arbitrary unit
        # vector, possibly inside span(x): rows left shorter than 1/2 by a last projection
        # are dropped like those of the previous direction below.
        z = resid - (resid @ x.T) @ x
        z = _orthonormal_rows(z - (z @ x.T) @ x)
        z = _orthonormal_rows(z - (z @ x.T) @ x)
        z = z - (z @ x.T) @ x
        lengths = norm(z, axis=1)
        keep_z = lengths > 0.5
        z = z * jnp.where(keep_z, 1.0 / jnp.where(keep_z, lengths, 1.0), 0.0)[:, None]
        hz = matmat(z)
        xz = jnp.concatenate([x, z])
        hxz = jnp.concatenate([hx, hz])
        # Previous direction: rows normalised (no cancellation: its rows are combinations of
        # orthonormal rows), projected twice, whitened; nearly dependent directions dropped.
        norms = norm(d, axis=1, keepdims=True)
        inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
        d, hd = d * inv, hd * inv
        d, hd = project(d, hd, xz, hxz)
        d, hd = project(d, hd, xz, hxz)
        gram_values, gram_vectors = _eigh(d @ d.T)
        lengths = jnp.sqrt(jnp.maximum(gram_values, 0.0))
        keep = lengths > drop_below
        scale = jnp.where(keep, 1.0 / jnp.where(keep, lengths, 1.0), 0.0)
        whiten = gram_vectors * scale[None, :]
        d, hd = whiten.T @ d, whiten.T @ hd
        basis = jnp.concatenate([xz, d])
        h_basis = jnp.concatenate([hxz, hd])
        gram = basis @ h_basis.T
        gram = 0.5 * (gram + gram.T)
        # Dropped directions (zero rows) get a diagonal below the spectrum, relative to it:
        # an absolute floor would swamp the eigh of a Hessian of scale 1e-10 with rounding.
        penalty = 10.0 * jnp.maximum(jnp.max(jnp.abs(gram)), jnp.finfo(dtype).tiny)
        mask = jnp.concatenate([jnp.ones((k,), bool), keep_z, keep])
        gram = jnp.where(jnp.diag(~mask), -penalty, gram)
        values, coeffs = _eigh(gram)
        coeffs = coeffs[:, ::-1][:, :k]
        values = values[::-1][:k]
        x, hx = coeffs.T @ basis, coeffs.T @ h_basis
        d, hd = coeffs[k:].T @ basis[k:], coeffs[k:].T @ h_basis[k:]
        resid = hx - values[:, None] * x
        return i + 1, values, x, hx, resid, d, hd

    zeros = jnp.zeros((k, p), dtype)
    init = (jnp.zeros((), jnp.int32), values, x, hx, resid, zeros, zeros)
    iters, values, x, _, resid, _, _ = jax.lax.while_loop(cond, body, init)
    residuals = jnp.where(dependent, jnp.inf, norm(resid, axis=1))
    eig = _signed(Eigen(values, x, residuals), sign)
    return eig, iters


def _lobpcg(
    op: FlatOperator,
    previous: jax.Array,
    size: jax.Array,
    num_iterations: int,
    tol: jax.Array,
    sign: float,
) -> tuple[Eigen, jax.Array]:
    """Warm LOBPCG (jax.experimental) on ``sign * H``, residuals from k more products.

    It stops at the tracker's relative criterion ``r < tol |lambda|`` and runs on the operator
    scaled by a power of two near ``size``, the previous step's largest |lambda| (see
    :func:`curvature._lobpcg.scaled_lobpcg`).
    """

    def matmat_columns(v: jax.Array) -> jax.Array:
        return sign * op.matmat(v.T).T

    values, vectors, iters = scaled_lobpcg(
        matmat_columns, previous.T, num_iterations, size=size, tol=tol
    )
    eig = with_residuals(op, sign * values, vectors.T)
    order = jnp.argsort(-eig.eigenvalues)
    eig = Eigen(eig.eigenvalues[order], eig.eigenvectors[order], eig.residuals[order])
    return eig, jnp.asarray(iters, jnp.int32)


def _signed(eig: Eigen, sign: float) -> Eigen:
    """Undo the sign flip of the operator: eigenvalues of H, sorted descending."""
    if sign > 0:
        return eig
    return Eigen(-eig.eigenvalues[::-1], eig.eigenvectors[::-1], eig.residuals[::-1])
