"""Public curvature functions run as one compiled program when called outside ``jit``.

Called with concrete arrays, JAX executes a function op by op and compiles every primitive
on its own the first time it meets it: a Hessian-vector product of a small MLP is a few
hundred primitives, so the first eager ``hessian_top_k`` on a run restored from a file took
7.8–9.0 s, nearly all of it compiling 198 programs (2-core CPU, width-32 spiral MLP), against
2.7–3.6 s as one ``jax.jit`` program (``benchmarks/first_call.py``). :func:`compiled` makes
that the default: called with concrete arrays, the function is traced once and compiled as a
whole; called inside a trace (``jit``, ``vmap``, ``scan``, a training step), it runs as
written and becomes part of the caller's program.
"""

from __future__ import annotations

import collections
import functools
import inspect
import os
import sys
import types
import warnings
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

import jax
import numpy as np

from curvature._precision import full_precision

F = TypeVar("F", bound=Callable)
T = TypeVar("T")

#: False runs every decorated function as written (op by op when called eagerly):
#: ``benchmarks/first_call.py`` measures both ways.
ENABLED = True

#: Compiled programs kept per decorated function (least recently used first out). Each entry
#: holds its static arguments (a loss function and what it closes over) alive.
CACHE_SIZE = 8

#: A decorated function warns (once per case) when it compiles for this many different
#: function objects made by the same code of a user's, all else equal: a lambda or closure
#: built anew at every call.
REPEATS_BEFORE_WARNING = 3

#: Folders of this project's packages: functions made there (a model's ``apply``) are not the
#: user's to rebuild, and warnings point at the first frame outside them.
_OURS = tuple(
    str(Path(__file__).resolve().parent.parent / package) + os.sep
    for package in ("analysis", "curvature", "schedules", "training")
)


def cached(
    cache: collections.OrderedDict, key: Hashable, make: Callable[[], T], size: int = CACHE_SIZE
) -> T:
    """``cache[key]``, made by ``make()`` when missing; keeps the ``size`` most recent only."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    while len(cache) > size:
        cache.popitem(last=False)
    return value


def traced(tree: object) -> bool:
    """Whether any leaf of ``tree`` is a JAX tracer (the call is part of a program being traced)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def _is_argument(leaf: object) -> bool:
    """An array the program takes as an argument: PRNG keys and arrays of one or more
    dimensions; numbers (0-d arrays too) stay concrete."""
    if not isinstance(leaf, jax.Array | np.ndarray):
        return False
    return np.ndim(leaf) > 0 or jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _is_number(leaf: object) -> bool:
    """A leaf a ``dynamic`` argument passes to the program: any array, and a real or complex
    number (a Python or NumPy float: a parameter's value, which changes as it trains).
    Integers and booleans stay constants (a counter or a flag is not differentiated)."""
    if isinstance(leaf, jax.Array | np.ndarray):
        return True
    if isinstance(leaf, bool | int):
        return False
    return isinstance(leaf, float | complex | np.inexact)


def _static_key(leaf: object) -> Hashable:
    if isinstance(leaf, np.ndarray):  # 0-d: unhashable, keyed by dtype and value
        return (np.ndarray, str(leaf.dtype), leaf.item())
    return (type(leaf), leaf)


def _key_of(structure: Hashable, constants: list) -> Hashable | None:
    """A cache key of ``constants`` (each with its type) under ``structure``; None when one
    of them cannot be hashed."""
    key = (structure, tuple(map(_static_key, constants)))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def reused(fn: F) -> F:
    """``fn`` returning the same object for equal arguments (compared with their types), so a
    program compiled for that object is compiled once.

    For factories of diagnostics (``training.hessian_metric``): a jitted function of the
    object they return is cached by that object, and a new object per call would compile
    again each time. Arguments are compared as :func:`compiled` compares constants (``k=3``
    and ``k=3.0`` give different objects); a call with an unhashable argument (an array)
    makes a new object. The 8 most recent objects are kept.
    """
    made: collections.OrderedDict = collections.OrderedDict()

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        leaves, treedef = jax.tree.flatten((args, kwargs))
        key = _key_of(treedef, leaves)
        if key is None:
            return fn(*args, **kwargs)
        return cached(made, key, lambda: fn(*args, **kwargs))

    return wrapped  # type: ignore[return-value]


def compiled(fn: F | None = None, /, *, dynamic: tuple[str, ...] = ()) -> F:
    """``fn`` with full-precision products (:func:`full_precision`), and run as one ``jit``
    program when no argument is being traced.

    PRNG keys and arrays of one or more dimensions (JAX or NumPy, alone or as leaves of
    pytrees such as parameters) become the program's arguments. Every other argument (loss
    functions, Python numbers, other 0-d arrays, strings, None) stays a concrete constant (a
    0-d JAX array as a NumPy one), so checks of its value work as without compilation, and is
    part of the cache key with its type (``k=3`` and ``k=3.0`` are checked separately). Calls
    with the same constants and array shapes reuse the program; a loss function that is a
    ``jax.tree_util.Partial`` (as ``training.restore`` and diagnostics' contexts give) passes
    its arrays as arguments, so only its function is a constant. ``fn`` must return a pytree
    of arrays and decide nothing from the values of its array arguments (it has to run under
    ``jit`` anyway, as it does inside training steps).

    ``dynamic``: names of parameters of ``fn`` whose every array leaf, 0-d ones included, and
    every float leaf (a Python or NumPy number) is an argument of the program (a model's
    parameters, which may hold a scalar; an eigensolver's state, whose step counter changes
    every call). Inside the program such a float is a 0-d array of JAX's default precision
    (float32 unless x64 is on), as ``jax.jit`` makes it. Used as
    ``@compiled(dynamic=("params",))``.
    """
    if fn is None:
        return functools.partial(compiled, dynamic=dynamic)  # type: ignore[return-value]
    precise = full_precision(fn)
    programs: collections.OrderedDict = collections.OrderedDict()
    repeats: collections.OrderedDict = collections.OrderedDict()  # see _warn_on_repeats
    names = list(inspect.signature(fn).parameters)
    unknown = set(dynamic) - set(names)
    if unknown:
        raise TypeError(f"compiled: {fn.__name__} has no parameters {sorted(unknown)}.")

    def forced(args: tuple, kwargs: dict) -> list[bool] | None:
        """For each leaf of ``jax.tree.flatten((args, kwargs))``: whether it lies in a
        ``dynamic`` argument; None for a call ``fn`` itself must refuse (too many arguments)."""
        if len(args) > len(names):
            return None
        marks: list[bool] = []
        for name, arg in zip(names, args, strict=False):  # the rest by name or default
            marks += [name in dynamic] * len(jax.tree.leaves(arg))
        for name in sorted(kwargs):  # a dict flattens in the order of its sorted keys
            marks += [name in dynamic] * len(jax.tree.leaves(kwargs[name]))
        return marks

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        leaves, treedef = jax.tree.flatten((args, kwargs))
        if not ENABLED or traced(leaves):
            return precise(*args, **kwargs)
        force = forced(args, kwargs) if dynamic else [False] * len(leaves)
        if force is None or len(force) != len(leaves):  # let fn raise its own TypeError
            return precise(*args, **kwargs)
        mask = tuple(
            _is_argument(leaf) or (f and _is_number(leaf))
            for leaf, f in zip(leaves, force, strict=True)
        )
        # A 0-d JAX array as a NumPy one: operations on it would be staged into the program.
        statics = [
            np.asarray(leaf) if isinstance(leaf, jax.Array) else leaf
            for leaf, is_argument in zip(leaves, mask, strict=True)
            if not is_argument
        ]
        key = _key_of((treedef, mask), statics)
        if key is None:  # an unhashable static argument: run as written
            return precise(*args, **kwargs)

        def make() -> Callable:
            def program(inputs: list) -> object:
                arrays, constants = iter(inputs), iter(statics)
                merged = [next(arrays) if is_arg else next(constants) for is_arg in mask]
                call_args, call_kwargs = jax.tree.unflatten(treedef, merged)
                return precise(*call_args, **call_kwargs)

            return jax.jit(program)

        arrays = [leaf for leaf, is_argument in zip(leaves, mask, strict=True) if is_argument]
        if key not in programs:
            _warn_on_repeats(fn.__name__, (treedef, mask), statics, arrays, repeats)
        return cached(programs, key, make)(arrays)

    return wrapped  # type: ignore[return-value]


def _warn_on_repeats(
    name: str, structure: Hashable, statics: list, arrays: list, repeats: dict
) -> None:
    """Warn (once per case) when a call compiles for the :data:`REPEATS_BEFORE_WARNING`-th
    function object made by the same code of the user's, all else equal: the other
    constants, and the shapes and dtypes of the arrays. Another model or data shape is not a
    repeat, nor are functions this project makes (they are not the user's to rebuild)."""
    functions = [
        leaf
        for leaf in statics
        if isinstance(leaf, types.FunctionType) and not leaf.__code__.co_filename.startswith(_OURS)
    ]
    if not functions:
        return
    others = tuple(
        ("code", leaf.__code__) if isinstance(leaf, types.FunctionType) else _static_key(leaf)
        for leaf in statics
    )
    case = (
        structure,
        others,
        tuple((np.shape(a), str(getattr(a, "dtype", type(a)))) for a in arrays),
    )
    try:
        seen = cached(repeats, case, set, size=64)
    except TypeError:  # unhashable: nothing to compare
        return
    if len(seen) >= REPEATS_BEFORE_WARNING:  # warned already; the set stops growing
        return
    seen.add(tuple(id(f) for f in functions))
    if len(seen) == REPEATS_BEFORE_WARNING:
        code = functions[0].__code__
        warnings.warn(
            f"{name} compiled programs for {REPEATS_BEFORE_WARNING} different functions made "
            f"by the same code ({code.co_name!r}, {code.co_filename}:{code.co_firstlineno}) "
            "with arguments of the same shapes: a lambda or closure built anew at every call "
            "is a new constant each time, and each one costs a compilation. Build the "
            "function once, or pass jax.tree_util.Partial(f, *arrays), whose arrays are the "
            "program's arguments.",
            stacklevel=_first_frame_outside(),
        )


def _first_frame_outside() -> int:
    """The ``stacklevel`` of the innermost caller outside this project's packages, counted
    as ``warnings.warn`` counts it when called by this function's caller."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_OURS):
        frame, level = frame.f_back, level + 1
    return level
