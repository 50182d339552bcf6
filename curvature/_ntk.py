"""The empirical neural tangent kernel of ``apply_fn(params, x) -> (N, C)``.

Definition (SCIENCE.md): ``Theta[n, m, a, b] = sum_p df_a(x1_n)/dw_p * df_b(x2_m)/dw_p`` over
every parameter ``p`` of the pytree ``params``. Untraced it has shape (N1, N2, C, C), as in
neural-tangents' ``empirical_ntk_fn(..., trace_axes=())``; :func:`ntk_matrix` reshapes it to the
(N1*C, N2*C) matrix, sample-major (row ``n*C + a``).

Two native implementations compute the same numbers:

- ``"jacobian"``: per-sample Jacobians ``J`` from ``jax.jacrev`` (vmapped over the samples of a
  block), contracted leaf by leaf, ``Theta = J1 J2^T``. Fast on CPU (one BLAS contraction).
- ``"ntvp"``: NTK-vector products. Column ``(m, b)`` of the kernel is ``J1 (J2^T e_{m,b})``: one
  per-sample vjp (of sample ``m`` with cotangent ``e_b``) followed by one jvp over the block of
  ``x1``. No Jacobian is ever held; the price is one forward-mode pass over ``x1`` per column.

Both work block by block over the samples (``batch_size``), which bounds memory. Both assume
that ``apply_fn`` maps every row of ``x`` independently of the other rows (no batch statistics),
which holds for the MLPs and conv nets of this project; neural-tangents calls this
``vmap_axes=0``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from curvature._checks import is_integer, positive_int
from curvature._precision import full_precision

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]

#: Implementations accepted by :func:`empirical_ntk`.
IMPLEMENTATIONS = ("auto", "jacobian", "ntvp", "neural_tangents")

#: ``implementation="auto"`` picks ``"jacobian"`` while the per-sample Jacobians of one
#: contraction (both blocks together, ``(B1 + B2) * C * P`` numbers) fit in this many bytes,
#: and ``"ntvp"`` above it. See :func:`resolve_implementation`.
AUTO_JACOBIAN_MAX_BYTES = 2**30

_NT_HINT = (
    "neural-tangents 0.6.5 does not import on current JAX; it works in a separate environment: "
    "python3 -m venv /tmp/ntvenv && /tmp/ntvenv/bin/pip install jax==0.4.38 jaxlib==0.4.38 "
    "neural-tangents==0.6.5 tf2jax==0.3.6 (see data/nt_reference/README.md). "
    "implementation='jacobian' or 'ntvp' compute the same kernel natively"
)


def ntk_matrix(kernel: jax.Array) -> jax.Array:
    """Reshape an untraced kernel (N1, N2, C, C) to the (N1*C, N2*C) matrix, sample-major.

    Entry ``[n*C + a, m*C + b]`` of the result is ``kernel[n, m, a, b]``. The row order matches
    ``outputs.reshape(-1)`` for outputs of shape (N, C), so the matrix acts on flattened
    output residuals.

    Returns:
        Array of shape (N1*C, N2*C), same dtype as ``kernel``.
    """
    kernel = jnp.asarray(kernel)
    if kernel.ndim != 4 or kernel.shape[2] != kernel.shape[3]:
        raise ValueError(
            "kernel must be an untraced NTK of shape (N1, N2, C, C) "
            f"(got shape {tuple(kernel.shape)}); compute it with trace_axes=() and "
            "diagonal_axes=()"
        )
    n1, n2, c, _ = kernel.shape
    return jnp.transpose(kernel, (0, 2, 1, 3)).reshape(n1 * c, n2 * c)


def num_params(params: PyTree) -> int:
    """Return the total number of scalar entries in the parameter pytree."""
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def output_shape(apply_fn: ApplyFn, params: PyTree, x: jax.Array) -> tuple[int, int]:
    """Return ``(N, C)``, the shape of ``apply_fn(params, x)``, without computing it.

    Raises a ValueError when ``apply_fn`` cannot take ``x`` (JAX's own message attached) or
    its output is not 2-D with one row per input.
    """
    try:
        out = jax.eval_shape(apply_fn, params, x)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"apply_fn(params, x) failed for inputs x of shape {tuple(x.shape)}; check that "
            f"their trailing shape is what the model takes. JAX said: {err}"
        ) from err
    if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            "apply_fn(params, x) must return outputs of shape (N, C) with one row per input "
            f"(got {tuple(out.shape)} for x of shape {tuple(x.shape)})"
        )
    return int(out.shape[0]), int(out.shape[1])


def _normalise_axes(axes: object, name: str, allowed: Sequence[int]) -> tuple[int, ...]:
    """Map output axes of the (N, C) outputs to {0, 1}; reject anything else."""
    if is_integer(axes):
        axes = (axes,)
    if not isinstance(axes, (tuple, list)):
        raise ValueError(f"{name} must be a tuple of output axes (got {axes!r})")
    out = []
    for ax in axes:
        if not is_integer(ax) or not -2 <= ax <= 1:
            raise ValueError(
                f"{name} entries must be axes of the (N, C) outputs, i.e. 0, 1, -1 or -2 "
                f"(got {axes!r})"
            )
        out.append(int(ax) % 2)
    out_set = tuple(sorted(set(out)))
    if any(ax not in allowed for ax in out_set):
        # Only trace_axes restricts the set further: the batch axis cannot be traced.
        raise ValueError(
            f"{name} may contain only the output axis: () or (-1,) (got {axes!r}); the batch "
            "axis 0 cannot be traced, use diagonal_axes=(0,) for per-sample kernels"
        )
    return out_set


def _check_batch_size(batch_size: object) -> int | None:
    if batch_size is None:
        return None
    return positive_int("batch_size", batch_size, " or None")


def resolve_implementation(
    implementation: str,
    params: PyTree,
    num_outputs: int,
    block_samples: int,
) -> str:
    """Return the implementation ``"auto"`` stands for (others are returned unchanged).

    The rule: ``"jacobian"`` when the per-sample Jacobians held by one block contraction,
    ``block_samples * C * P`` numbers (``block_samples`` = samples of the x1 block plus those
    of the x2 block), fit in :data:`AUTO_JACOBIAN_MAX_BYTES` (1 GiB); ``"ntvp"`` otherwise.
    Measured on CPU (``benchmarks/ntk.py``), the Jacobian contraction is the faster of the two
    for the spiral MLP at widths 100 and 1000 and for the small conv net, so memory is what
    decides.
    """
    if implementation != "auto":
        return implementation
    leaves = jax.tree_util.tree_leaves(params)
    itemsize = max((jnp.asarray(leaf).dtype.itemsize for leaf in leaves), default=4)
    jac_bytes = block_samples * num_outputs * num_params(params) * itemsize
    return "jacobian" if jac_bytes <= AUTO_JACOBIAN_MAX_BYTES else "ntvp"


# --------------------------------------------------------------------------- building blocks


def _per_sample_jacobian(apply_fn: ApplyFn, params: PyTree, xb: jax.Array) -> list[jax.Array]:
    """Jacobians of the block's outputs: one array (B, C, P_leaf) per parameter leaf."""

    def single(p: PyTree, xi: jax.Array) -> jax.Array:
        return apply_fn(p, xi[None])[0]

    jac = jax.vmap(jax.jacrev(single), in_axes=(None, 0))(params, xb)
    b = xb.shape[0]
    return [leaf.reshape(b, leaf.shape[1], -1) for leaf in jax.tree_util.tree_leaves(jac)]


def _contract(
    j1: list[jax.Array], j2: list[jax.Array], trace: bool, diag_out: bool, diag_batch: bool
) -> jax.Array:
    """Sum over leaves of the Jacobian contraction, reduced as requested."""
    if not (trace or diag_out or diag_batch):
        return _full_contract(j1, j2)
    batch = "nn" if diag_batch else "nm"
    out_b = "n" if diag_batch else "nm"
    if trace:
        spec = f"ncp,{batch[1]}cp->{out_b}"
    elif diag_out:
        spec = f"ncp,{batch[1]}cp->{out_b}c"
    else:
        spec = f"ncp,{batch[1]}dp->{out_b}cd"
    total = sum(jnp.einsum(spec, a, b) for a, b in zip(j1, j2, strict=True))
    if trace:
        total = total / j1[0].shape[1]
    return total


def _full_contract(j1: list[jax.Array], j2: list[jax.Array]) -> jax.Array:
    """The (N1, N2, C, C) block ``Σ_leaves J1 J2ᵀ`` as 2-D matrix products, one transpose.

    Peak memory (what the compiled kernel allocates, ``benchmarks/ntk.py``): a 4-D einsum per
    leaf made XLA hold ~2× the Jacobians plus kernel-sized temporaries (2.1–3.1× the kernel
    plus one Jacobian block). Concatenating the leaves into one (N·C, P) matrix costs one more
    copy of the Jacobians; summing per-leaf products can cost a kernel-sized buffer per leaf.
    The cheaper of the two is used: at width 100 on the spiral the concatenation (1.2× the
    target), at width 1000 the per-leaf sum (1.26×).
    """
    n1, c1 = j1[0].shape[:2]
    n2, c2 = j2[0].shape[:2]
    same = j2 is j1
    a = [leaf.reshape(n1 * c1, -1) for leaf in j1]
    b = a if same else [leaf.reshape(n2 * c2, -1) for leaf in j2]
    jacobian_size = sum(x.size for x in a) + (0 if same else sum(x.size for x in b))
    if jacobian_size <= (len(a) - 1) * n1 * c1 * n2 * c2:
        a_all = jnp.concatenate(a, axis=1)
        b_all = a_all if same else jnp.concatenate(b, axis=1)
        total = a_all @ b_all.T
    else:
        total = a[0] @ b[0].T
        for x, y in zip(a[1:], b[1:], strict=True):
            total = total + x @ y.T
    return jnp.transpose(total.reshape(n1, c1, n2, c2), (0, 2, 1, 3))


def _reduce_outputs(block: jax.Array, trace: bool, diag_out: bool) -> jax.Array:
    """Reduce the last two (output) axes of a (..., C, C) block."""
    if trace:
        return jnp.trace(block, axis1=-2, axis2=-1) / block.shape[-1]
    if diag_out:
        return jnp.diagonal(block, axis1=-2, axis2=-1)
    return block


NTVP_SAMPLES = 8
"""x2 samples whose NTK-vector products run together (vmapped) in the ``"ntvp"`` kernel.

Measured (``benchmarks/ntk.py``, compiled memory / kernel + Jacobian block, float32): the whole
block at once (50 samples) took 2.5-6.2x; 8 at a time 1.2-1.3x, at 1.1x the time for the
width-1000 spiral and 1.3x for the conv net; 1 at a time ~1x but up to 1.6x slower.
"""


def _ntvp_block(apply_fn: ApplyFn, params: PyTree, xa: jax.Array, xb: jax.Array) -> jax.Array:
    """Kernel block (Ba, Bb, C, C) by NTK-vector products (no Jacobian held)."""
    _, jvp_a = jax.linearize(lambda p: apply_fn(p, xa), params)

    def columns(xm: jax.Array) -> jax.Array:
        out, vjp_m = jax.vjp(lambda p: apply_fn(p, xm[None]), params)
        c = out.shape[-1]
        basis = jnp.eye(c, dtype=out.dtype)[:, None, :]  # (C, 1, C) cotangents
        (tangents,) = jax.vmap(vjp_m)(basis)  # leaves (C, ...): J_m^T e_b
        return jax.vmap(jvp_a)(tangents)  # (C_b, Ba, C_a)

    # NTVP_SAMPLES samples of xb at a time: a vmap over the whole block held Bb * C forward-mode
    # tangents of xa's activations at once (6x the kernel + Jacobian block at width 1000).
    cols = jax.lax.map(columns, xb, batch_size=min(NTVP_SAMPLES, xb.shape[0]))
    return jnp.transpose(cols, (2, 0, 3, 1))  # cols: (Bb, C_b, Ba, C_a)


def _ntvp_diag(apply_fn: ApplyFn, params: PyTree, xb: jax.Array) -> jax.Array:
    """Per-sample kernels (B, C, C) by NTK-vector products."""

    def single(xm: jax.Array) -> jax.Array:
        return _ntvp_block(apply_fn, params, xm[None], xm[None])[0, 0]

    return jax.vmap(single)(xb)


def _blocks(x: jax.Array, size: int) -> jax.Array:
    """Pad ``x`` along axis 0 to a multiple of ``size`` (repeating row 0); reshape to blocks."""
    n = x.shape[0]
    nb = -(-n // size)
    pad = nb * size - n
    if pad:
        x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, *x.shape[1:]))])
    return x.reshape(nb, size, *x.shape[1:])


def _map_blocks(fn: Callable[[jax.Array], jax.Array], xs: jax.Array) -> jax.Array:
    """``lax.map`` over blocks, calling ``fn`` directly when there is only one."""
    if xs.shape[0] == 1:
        return fn(xs[0])[None]
    return jax.lax.map(fn, xs)


@functools.partial(
    jax.jit,
    static_argnames=(
        "apply_fn",
        "implementation",
        "trace",
        "diag_out",
        "diag_batch",
        "size1",
        "size2",
    ),
)
def _native_ntk(
    apply_fn: ApplyFn,
    params: PyTree,
    x1: jax.Array,
    x2: jax.Array | None,
    *,
    implementation: str,
    trace: bool,
    diag_out: bool,
    diag_batch: bool,
    size1: int,
    size2: int,
) -> jax.Array:
    n1 = x1.shape[0]
    if diag_batch:
        # Per-sample kernels Theta(x1_n, x2_n); x2 (if given) has the same length as x1.
        if implementation == "jacobian":

            def diag_fn(pair: tuple[jax.Array, jax.Array]) -> jax.Array:
                a, b = pair
                ja = _per_sample_jacobian(apply_fn, params, a)
                jb = ja if x2 is None else _per_sample_jacobian(apply_fn, params, b)
                return _contract(ja, jb, trace, diag_out, True)

        else:

            def diag_fn(pair: tuple[jax.Array, jax.Array]) -> jax.Array:
                a, b = pair
                if x2 is None:
                    block = _ntvp_diag(apply_fn, params, a)
                else:
                    block = jax.vmap(
                        lambda u, v: _ntvp_block(apply_fn, params, u[None], v[None])[0, 0]
                    )(a, b)
                return _reduce_outputs(block, trace, diag_out)

        xb1 = _blocks(x1, size1)
        xb2 = xb1 if x2 is None else _blocks(x2, size1)
        if xb1.shape[0] == 1:
            out = diag_fn((xb1[0], xb2[0]))[None]
        else:
            out = jax.lax.map(diag_fn, (xb1, xb2))
        return out.reshape(-1, *out.shape[2:])[:n1]

    x2_eff = x1 if x2 is None else x2
    n2 = x2_eff.shape[0]
    if implementation == "jacobian" and x2 is None and size1 >= n1:
        # One block: compute the Jacobian once and contract it with itself.
        j = _per_sample_jacobian(apply_fn, params, x1)
        return _contract(j, j, trace, diag_out, False)

    if implementation == "jacobian":

        def pair_fn(a: jax.Array, b: jax.Array) -> jax.Array:
            ja = _per_sample_jacobian(apply_fn, params, a)
            jb = _per_sample_jacobian(apply_fn, params, b)
            return _contract(ja, jb, trace, diag_out, False)

    else:

        def pair_fn(a: jax.Array, b: jax.Array) -> jax.Array:
            return _reduce_outputs(_ntvp_block(apply_fn, params, a, b), trace, diag_out)

    xb1 = _blocks(x1, size1)
    xb2 = _blocks(x2_eff, size2)
    nb2 = xb2.shape[0]

    def row(a: jax.Array) -> jax.Array:
        # (nb2, size1, size2, ...) -> (size1, nb2*size2, ...): a copy of one row of blocks
        # only, so the full kernel is never held twice (it was, when the block axes were
        # moved after the map: 2.2x the kernel for the 1000-sample conv net).
        blocks = _map_blocks(lambda b: pair_fn(a, b), xb2)
        return jnp.moveaxis(blocks, 0, 1).reshape(size1, nb2 * size2, *blocks.shape[3:])

    out = _map_blocks(row, xb1)  # (nb1, size1, nb2*size2, ...)
    out = out.reshape(out.shape[0] * size1, *out.shape[2:])
    return out[:n1, :n2]


def _neural_tangents_ntk(
    apply_fn: ApplyFn,
    params: PyTree,
    x1: jax.Array,
    x2: jax.Array | None,
    trace_axes: tuple[int, ...],
    diagonal_axes: tuple[int, ...],
) -> jax.Array:
    try:
        import neural_tangents as nt
    except Exception as err:  # neural-tangents fails with several error types on new JAX
        raise ImportError(
            "implementation='neural_tangents' needs the optional neural-tangents package, "
            f"which failed to import ({type(err).__name__}: {err}). {_NT_HINT}."
        ) from err
    fn = nt.empirical_ntk_fn(
        apply_fn,
        trace_axes=trace_axes,
        diagonal_axes=diagonal_axes,
        vmap_axes=0,
        implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION,
    )
    return fn(x1, x2, params)


@full_precision
def empirical_ntk(
    apply_fn: ApplyFn,
    params: PyTree,
    x1: jax.Array,
    x2: jax.Array | None = None,
    *,
    implementation: str = "auto",
    trace_axes: Sequence[int] = (),
    diagonal_axes: Sequence[int] = (),
    batch_size: int | None = None,
) -> jax.Array:
    """Empirical NTK ``Theta(x1, x2)`` of ``apply_fn`` at ``params``.

    Args:
        apply_fn: ``apply_fn(params, x) -> (N, C)``; rows of ``x`` must be processed
            independently of each other (no batch statistics).
        params: any pytree of arrays; every leaf counts as trainable.
        x1: inputs (N1, ...).
        x2: inputs (N2, ...) with the same trailing shape as ``x1``; ``None`` means ``x1``
            (the training kernel, computed without a second Jacobian).
        implementation: ``"jacobian"`` (J1 J2^T from ``jax.jacrev``), ``"ntvp"``
            (NTK-vector products, no Jacobian held), ``"auto"`` (``"jacobian"`` unless the
            Jacobians of one block exceed 1 GiB, see :func:`resolve_implementation`), or
            ``"neural_tangents"`` (neural-tangents' ``empirical_ntk_fn`` with
            ``JACOBIAN_CONTRACTION`` and ``vmap_axes=0``; raises ImportError where the package
            does not import, which is the case on current JAX).
        trace_axes: ``()`` or ``(-1,)``. With ``(-1,)`` the output axis is traced and
            *averaged*: ``mean_a Theta[n, m, a, a]`` (neural-tangents' convention).
        diagonal_axes: any of ``0`` and ``-1``. ``0`` keeps only the per-sample kernels
            ``Theta(x1_n, x2_n)`` (needs N1 == N2); ``-1`` keeps only equal output indices.
        batch_size: samples per block (for x1 and for x2). ``None`` computes everything in one
            block. The ``"jacobian"`` implementation then holds the Jacobians of at most
            ``2 * batch_size`` samples, ``2 * batch_size * C * P`` numbers; ``"ntvp"`` holds
            ``NTVP_SAMPLES * C`` parameter-space tangents (8 x2 samples at a time) and the
            forward-mode activations of ``batch_size`` samples for each of them.

    Returns:
        The kernel, same dtype as the outputs. Shapes follow neural-tangents (axes present
        twice unless traced or diagonal):

        ========================  ============  ================
        ``trace_axes``            ``()``        ``(-1,)``
        ========================  ============  ================
        ``diagonal_axes=()``      (N1, N2, C, C)  (N1, N2)
        ``diagonal_axes=(-1,)``   (N1, N2, C)   not allowed
        ``diagonal_axes=(0,)``    (N, C, C)     (N,)
        ``diagonal_axes=(0, -1)`` (N, C)        not allowed
        ========================  ============  ================
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {', '.join(repr(i) for i in IMPLEMENTATIONS)} "
            f"(got {implementation!r})"
        )
    trace = _normalise_axes(trace_axes, "trace_axes", allowed=(1,))
    diag = _normalise_axes(diagonal_axes, "diagonal_axes", allowed=(0, 1))
    if set(trace) & set(diag):
        raise ValueError(
            "an axis cannot be both traced and diagonal "
            f"(got trace_axes={tuple(trace_axes)!r}, diagonal_axes={tuple(diagonal_axes)!r})"
        )
    size = _check_batch_size(batch_size)
    x1 = jnp.asarray(x1)
    if x1.ndim < 1 or x1.shape[0] < 1:
        raise ValueError(f"x1 must have a leading batch axis of length >= 1 (got {x1.shape})")
    if x2 is not None:
        x2 = jnp.asarray(x2)
        if x2.ndim != x1.ndim or x2.shape[1:] != x1.shape[1:]:
            raise ValueError(
                "x1 and x2 must have the same shape apart from the batch axis "
                f"(got x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)})"
            )
        if 0 in diag and x2.shape[0] != x1.shape[0]:
            raise ValueError(
                "diagonal_axes=(0,) pairs x1[n] with x2[n], so x1 and x2 need the same number "
                f"of samples (got {x1.shape[0]} and {x2.shape[0]})"
            )
    n1, c = output_shape(apply_fn, params, x1)
    n2 = n1 if x2 is None else int(x2.shape[0])

    if implementation == "neural_tangents":
        if size is not None:
            raise ValueError(
                "batch_size is not supported with implementation='neural_tangents' "
                f"(got {size}); wrap the kernel function with neural_tangents.batch yourself "
                "or use implementation='jacobian'"
            )
        nt_trace = tuple(-1 for _ in trace)
        nt_diag = tuple(-1 if a == 1 else 0 for a in diag)
        return _neural_tangents_ntk(apply_fn, params, x1, x2, nt_trace, nt_diag)

    size1 = min(size or n1, n1)
    size2 = min(size or n2, n2)
    block = size1 + (0 if (x2 is None and size1 >= n1 and 0 not in diag) else size2)
    impl = resolve_implementation(implementation, params, c, block)
    return _native_ntk(
        apply_fn,
        params,
        x1,
        x2,
        implementation=impl,
        trace=1 in trace,
        diag_out=1 in diag,
        diag_batch=0 in diag,
        size1=size1,
        size2=size2,
    )


@full_precision
def ntk_operator(
    apply_fn: ApplyFn, params: PyTree, x: jax.Array
) -> Callable[[jax.Array], jax.Array]:
    """Matrix-free NTK product ``v -> Theta v`` on flattened outputs, without forming Theta.

    ``Theta v = J (J^T v)``: one vjp of ``p -> apply_fn(p, x)`` at cotangent ``v`` followed by
    one jvp, both from a single linearisation at ``params`` (one forward pass, reused).

    Returns:
        ``matvec(v)`` mapping (N*C,) to (N*C,), sample-major like :func:`ntk_matrix`; it also
        accepts a block (N*C, k) and returns (N*C, k) (columns multiplied in one vmapped call).
    """
    out, jvp_fn = jax.linearize(lambda p: apply_fn(p, x), params)
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    shape = out.shape

    def single(v: jax.Array) -> jax.Array:
        (t,) = vjp_fn(v.reshape(shape).astype(out.dtype))
        return jvp_fn(t).reshape(-1)

    def matvec(v: jax.Array) -> jax.Array:
        if v.ndim == 1:
            return single(v)
        return jax.vmap(single, in_axes=1, out_axes=1)(v)

    # jvp_fn and its transpose keep the precision they were linearised with (full, above).
    return matvec


__all__ = [
    "AUTO_JACOBIAN_MAX_BYTES",
    "IMPLEMENTATIONS",
    "empirical_ntk",
    "ntk_matrix",
    "ntk_operator",
    "resolve_implementation",
]
