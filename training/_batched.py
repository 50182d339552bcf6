"""Many runs of one shape in one compiled program: the engine under ``analysis.sweep``.

Runs that differ only in the fields of :data:`BATCHED_FIELDS` (seed, amplitude, period,
stop_after, learning_rate, momentum) share every array shape and code path, so one compiled
``lax.scan`` chunk advances all of them. Their per-run hyperparameters travel in the scan carry
as a :class:`training._trainer.Hyper` and the trainer's own step function
(:func:`training._trainer.make_step`) rebuilds Γ and the optimiser from them, so a batched run is
the same computation as :func:`training.train` of that run alone.

Layout (measured, see ``benchmarks/sweep_throughput.py``): a batch of ``R`` runs is cut into
``R / lanes`` groups of ``lanes`` runs; each group is ``jax.vmap``-ed over its lanes (the runs
advance in lockstep) and the groups run one after the other inside the same program
(``lax.map``). ``lanes=1`` runs each run alone, one after the other, in one compiled call: on a
2-core CPU at width 100 that is the fastest layout, because XLA:CPU executes the batched
matrix products of a vmapped step much less efficiently than the plain ones (a vmapped batch of
2–50 runs measured ~0.45–0.65× the per-run speed of one run alone). Process-level parallelism
(one process per core, see ``analysis.sweep(workers=...)``) is what scales.

Divergence: a run whose loss becomes non-finite keeps computing NaNs inside the batch (nothing
crashes); it is flagged with the first non-finite step, its later records are set to NaN and its
final metrics are NaN. A run file of a diverged run ends at that step with ``status="diverged"``,
exactly as :func:`training.train` writes it.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from curvature._checks import integer_at_least
from training._config import TrainConfig
from training._runfile import RunWriter
from training._trainer import (
    COMPILED_CACHE_SIZE,
    HYPER_DEFAULTS,
    Hyper,
    Problem,
    _flat,
    accuracy,
    build,
    cached,
    hyper_of,
    initial_state,
    make_step,
    open_writer,
    precision,
    specialise,
)

BATCHED_FIELDS = ("seed", *HYPER_DEFAULTS)
"""``TrainConfig`` fields that may differ between the runs of one batch."""

SUMMARY_VARIABLES = (
    "loss",
    "static_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "grad_norm",
)
"""Per-step records kept at the summary steps (run-file names; see ``training.STEP_VARIABLES``)."""

FINAL_VARIABLES = (
    "final_loss",
    "final_static_loss",
    "final_train_accuracy",
    "final_val_loss",
    "final_val_accuracy",
)
"""Metrics of the trained parameters (after the last update), see :func:`train_batch`."""

DEFAULT_LANES = 1
"""Runs advanced in lockstep by ``jax.vmap``; 1 measured fastest on a 2-core CPU (module doc)."""

BatchProgress = Callable[[int, int], None]
"""``progress(steps_done, steps_total)`` called after every chunk of a batch."""


class BatchResult(NamedTuple):
    """Per-run results of :func:`train_batch`; every array has the run axis first.

    Fields:
      final: ``{name: (R,)}`` for :data:`FINAL_VARIABLES`, evaluated on each run's parameters
        after its last update (NaN for diverged runs). ``final_loss`` is the dynamical loss with
        Γ of step ``steps`` (equal to the static loss once the oscillation has stopped).
      diverged: (R,) bool, True when the loss became non-finite.
      diverged_at_step: (R,) int64, the first step with a non-finite loss (-1 if none).
      summary_steps: (S,) int64, the steps kept in ``summaries`` (multiples of summary_every).
      summaries: ``{name: (R, S)}`` for :data:`SUMMARY_VARIABLES` at ``summary_steps`` (NaN
        after a run's divergence step).
    """

    final: dict[str, np.ndarray]
    diverged: np.ndarray
    diverged_at_step: np.ndarray
    summary_steps: np.ndarray
    summaries: dict[str, np.ndarray]


def shape_key(config: TrainConfig) -> TrainConfig:
    """``config`` with the batchable fields reset: runs with equal keys can share a batch."""
    return config.replace(seed=0, output=None, **HYPER_DEFAULTS)


def default_summary_every(config: TrainConfig) -> int:
    """A multiple of ``eval_every`` giving at most about 100 summary steps per run."""
    per = -(-config.steps // (100 * config.eval_every))
    return config.eval_every * max(per, 1)


def check_batch(
    configs: Sequence[TrainConfig], summary_every: int, lanes: int
) -> list[TrainConfig]:
    """Validate a batch; returns the configs as a list. Errors name the offending parameter."""
    configs = list(configs)
    if not configs:
        raise ValueError("configs must hold at least one TrainConfig (got an empty sequence).")
    for c in configs:
        if not isinstance(c, TrainConfig):
            raise TypeError(f"configs must be TrainConfig instances (got {type(c).__name__}).")
    first = configs[0]
    key = shape_key(first)
    for i, c in enumerate(configs):
        if shape_key(c) != key:
            diff = sorted(
                name
                for name, value in shape_key(c).to_dict().items()
                if key.to_dict()[name] != value
            )
            raise ValueError(
                f"configs[{i}] differs from configs[0] in {diff}; the runs of one batch may "
                f"differ only in {list(BATCHED_FIELDS)} (group the others into separate batches)."
            )
    if first.hessian_top_k or first.ntk_top_k:
        raise ValueError(
            "batched runs do not track curvature: set hessian_top_k=0 and ntk_top_k=0 (got "
            f"{first.hessian_top_k} and {first.ntk_top_k}); compute Hessian/NTK trajectories of "
            "chosen runs afterwards from their run files."
        )
    summary_every = integer_at_least("summary_every", summary_every, 1)
    if summary_every % first.eval_every:
        raise ValueError(
            f"summary_every must be a multiple of eval_every={first.eval_every} so that the "
            f"validation metrics exist at every summary step (got {summary_every})."
        )
    integer_at_least("lanes", lanes, 1)
    return configs


def _chunk_bounds(steps: int, chunk_steps: int, checkpoint_every: int | None) -> list[tuple]:
    cuts = set(range(0, steps, chunk_steps))
    if checkpoint_every is not None:
        cuts |= set(range(0, steps, checkpoint_every))
    edges = [*sorted(cuts), steps]
    return list(itertools.pairwise(edges))


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _make_chunk(step_fn: Callable, lanes: int) -> Callable:
    """``chunk(carry, start, length)``: ``length`` steps of every run of a stacked carry.

    The carry has a leading run axis of size ``G·lanes``; records come back as (R, length, ...).
    """
    vstep = jax.vmap(step_fn, in_axes=(0, None))

    @partial(jax.jit, static_argnums=2)
    def chunk(carry: tuple, start: jax.Array, length: int) -> tuple[tuple, dict]:
        steps = start + jnp.arange(length)
        if lanes == 1:  # each run alone: no vmap, so no batched matrix products

            def one(c: tuple) -> tuple[tuple, dict]:
                return jax.lax.scan(step_fn, c, steps)

            return jax.lax.map(one, carry)

        grouped = jax.tree.map(lambda a: a.reshape(-1, lanes, *a.shape[1:]), carry)

        def group(c: tuple) -> tuple[tuple, dict]:
            return jax.lax.scan(vstep, c, steps)

        new, records = jax.lax.map(group, grouped)  # records (G, length, lanes, ...)
        new = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), new)
        records = {
            k: jnp.swapaxes(v, 1, 2).reshape(-1, length, *v.shape[3:]) for k, v in records.items()
        }
        return new, records

    return chunk


def _make_final(problem: Problem, steps: int) -> Callable:
    """Vmapped evaluation of the trained parameters (see :class:`BatchResult`)."""
    dtype = problem.dtype
    x = jnp.asarray(problem.data.x_train, dtype)
    y = jnp.asarray(problem.data.y_train)
    x_val = jnp.asarray(problem.data.x_val, dtype)
    y_val = jnp.asarray(problem.data.y_val)
    apply = problem.model.apply

    def final(params: Any, hyper: Hyper) -> dict[str, jax.Array]:
        run = specialise(problem, hyper)
        gamma = run.schedule(steps).astype(dtype)
        out = apply(params, x)
        out_val = apply(params, x_val)
        return {
            "final_loss": run.loss(out, y, gamma),
            "final_static_loss": run.static_loss(out, y),
            "final_train_accuracy": accuracy(out, y, dtype),
            "final_val_loss": run.static_loss(out_val, y_val),
            "final_val_accuracy": accuracy(out_val, y_val, dtype),
        }

    return jax.jit(jax.vmap(final))


_COMPILED: collections.OrderedDict = collections.OrderedDict()


def _compiled(
    config: TrainConfig, lanes: int, x64: bool, summary_every: int | None
) -> tuple[Problem, Callable, Callable]:
    """Problem, chunk and final-evaluation functions of a shape, built once per process.

    Reusing the same jitted functions lets every later batch of the shape (a sweep's next
    batch, a dask worker's next task) skip compilation. ``summary_every`` is passed to
    :func:`training._trainer.make_step` (None: every per-step record, for run files).
    """

    def make() -> tuple[Problem, Callable, Callable]:
        problem = build(shape_key(config).replace(steps=config.steps))
        return (
            problem,
            _make_chunk(make_step(problem, summary_every=summary_every), lanes),
            _make_final(problem, config.steps),
        )

    key = (shape_key(config), lanes, x64, summary_every)
    return cached(_COMPILED, key, make, size=COMPILED_CACHE_SIZE)


def _writer(
    path: Path, config: TrainConfig, problem: Problem, state: tuple, overwrite: bool
) -> RunWriter:
    """A run file laid out exactly as :func:`training.train` writes it (no metrics)."""
    problem = problem._replace(config=config.replace(output=str(path)))
    return open_writer(path, problem, state, overwrite=overwrite)


def check_run_files(
    run_files: Sequence[str | Path | None], num_runs: int, *, overwrite: bool = False
) -> list[Path | None]:
    """Validate the run-file targets of a batch before anything is written; returns them as paths.

    The policy of :func:`training.train`: an existing file is refused with ``FileExistsError``
    unless ``overwrite``. Every target is checked, so a refused batch leaves every file as it was.
    """
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False (got {overwrite!r}).")
    if isinstance(run_files, str | bytes | Path):
        raise ValueError(
            f"run_files must be a list of paths, one per config (got the single path "
            f"{str(run_files)!r})."
        )
    paths = [None if p is None else Path(p) for p in run_files]
    if len(paths) != num_runs:
        raise ValueError(f"run_files must hold one path per config ({num_runs}); got {len(paths)}.")
    seen: dict[Path, int] = {}
    for i, path in enumerate(paths):
        if path is None:
            continue
        key = path.resolve()
        if key in seen:
            raise ValueError(
                f"run_files[{seen[key]}] and run_files[{i}] are the same file {str(path)!r}; "
                "give every run its own path."
            )
        seen[key] = i
        if path.is_dir():
            raise IsADirectoryError(
                f"run_files[{i}] {str(path)!r} is a directory; give a file path."
            )
    existing = [str(p) for p in paths if p is not None and p.exists()]
    if existing and not overwrite:
        more = (
            f" (and {len(existing) - 1} more of the {num_runs} run files)"
            if len(existing) > 1
            else ""
        )
        raise FileExistsError(
            f"run file {existing[0]!r} already exists{more}; choose another path or pass "
            "overwrite=True to replace it. Nothing was written."
        )
    return paths


def train_batch(
    configs: Sequence[TrainConfig],
    *,
    summary_every: int | None = None,
    run_files: Sequence[str | Path | None] | None = None,
    overwrite: bool = False,
    lanes: int = DEFAULT_LANES,
    chunk_steps: int | None = None,
    progress: BatchProgress | None = None,
) -> BatchResult:
    """Train runs of one shape together; return their final metrics and per-step summaries.

    Every run is the computation :func:`training.train` performs for its config alone (the
    trainer's own step function, vmapped or mapped over the runs): float64 trajectories agree
    to rounding (≤ 1e-12 relative while the dynamics are stable).

    Args:
      configs: the runs; they may differ only in :data:`BATCHED_FIELDS`. Curvature tracking
        (``hessian_top_k``, ``ntk_top_k``) must be off; ``output`` is ignored (see run_files).
      summary_every: keep the per-step records of :data:`SUMMARY_VARIABLES` at the steps that are
        multiples of this (a multiple of ``eval_every``; default
        :func:`default_summary_every`).
      run_files: one path per run: write each run's full run file there, in the format of
        :func:`training.train` (checkpoints every ``checkpoint_every`` steps); None for a run
        writes no file for it. An existing file is refused (``FileExistsError``, checked for
        every path before anything runs) unless ``overwrite``.
      overwrite: replace existing run files, deleting their post-hoc siblings
        ``RUN.<kind>.nc`` as :func:`training.train` does.
      lanes: runs advanced in lockstep by ``jax.vmap`` inside each group; the batch is cut into
        groups of ``lanes`` runs executed one after the other in one program (1: every run
        alone, measured fastest on CPU; see the module docstring).
      chunk_steps: steps per compiled chunk (default the configs' ``chunk_steps``).
      progress: optional ``progress(steps_done, steps_total)`` after every chunk.
    """
    first = configs[0] if len(configs) else None
    if summary_every is None and isinstance(first, TrainConfig):
        summary_every = default_summary_every(first)
    configs = check_batch(configs, summary_every, lanes)
    first = configs[0]
    num_runs = len(configs)
    if run_files is not None:
        run_files = check_run_files(run_files, num_runs, overwrite=overwrite)
    elif not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False (got {overwrite!r}).")
    chunk_steps = first.chunk_steps if chunk_steps is None else chunk_steps
    chunk_steps = integer_at_least("chunk_steps", chunk_steps, 1)
    with precision(first.dtype):
        return _train_batch(
            configs, summary_every, run_files, lanes, chunk_steps, progress, overwrite
        )


def _train_batch(
    configs: list[TrainConfig],
    summary_every: int,
    run_files: list[Path | None] | None,
    lanes: int,
    chunk_steps: int,
    progress: BatchProgress | None,
    overwrite: bool,
) -> BatchResult:
    first = configs[0]
    num_runs, steps = len(configs), first.steps
    # Without run files only the summary steps are kept, so the secondary records (static
    # loss, accuracies, gradient norm, validation) are computed on those steps only (~5% faster).
    problem, chunk, final_fn = _compiled(
        first, lanes, jax.config.jax_enable_x64, summary_every if run_files is None else None
    )
    dtype = problem.dtype
    np_dtype = np.float64 if first.dtype == "float64" else np.float32
    states = [initial_state(problem._replace(config=c)) for c in configs]
    hypers = [hyper_of(c, dtype) for c in configs]
    padded = -(-num_runs // lanes) * lanes  # pad with copies of the last run, dropped after
    index = [*range(num_runs), *[num_runs - 1] * (padded - num_runs)]
    carry = _stack([(*states[i], (), hypers[i]) for i in index])

    summary_steps = np.arange(0, steps, summary_every, dtype=np.int64)
    summaries = {
        name: np.full((num_runs, summary_steps.size), np.nan, np_dtype)
        for name in SUMMARY_VARIABLES
    }
    diverged_at = np.full(num_runs, -1, np.int64)
    writers = None
    if run_files is not None:
        writers = []
        try:  # overwrite (checked): each old run's post-hoc results go once its new file is open
            for p, c, s in zip(run_files, configs, states, strict=True):
                writers.append(None if p is None else _writer(p, c, problem, s, overwrite))
        except BaseException as error:
            for writer in writers:
                if writer is not None:
                    writer.mark_failed(error)
                    writer.close()
            raise
    keys = [np.asarray(jax.random.key_data(s[2]), np.uint32) for s in states]
    checkpoint_every = first.checkpoint_every if writers is not None else None
    try:
        for start, stop in _chunk_bounds(steps, chunk_steps, checkpoint_every):
            if writers is not None and start % first.checkpoint_every == 0:
                _checkpoint(writers, diverged_at, carry, start, keys, np_dtype)
            carry, records = chunk(carry, jnp.asarray(start), stop - start)
            records = {k: np.asarray(v)[:num_runs] for k, v in records.items()}
            _record(records, start, diverged_at, summary_steps, summaries, writers)
            if progress is not None:
                progress(stop, steps)
            if np.all(diverged_at >= 0):
                break
        final = final_fn(carry[0], carry[4])
        final = {k: np.asarray(v)[:num_runs].astype(np_dtype) for k, v in final.items()}
        diverged = diverged_at >= 0
        for values in final.values():
            values[diverged] = np.nan
        if writers is not None:
            _checkpoint(writers, diverged_at, carry, steps, keys, np_dtype)
            for writer, bad in zip(writers, diverged_at, strict=True):
                if writer is not None and bad < 0:
                    writer.set_attrs(status="complete")
    except BaseException as error:
        for writer, bad in zip(writers or (), diverged_at, strict=False):
            if writer is not None and bad < 0:
                writer.mark_failed(error)
        raise
    finally:
        for writer in writers or ():
            if writer is not None:
                writer.close()
    return BatchResult(final, diverged_at >= 0, diverged_at, summary_steps, summaries)


def _checkpoint(
    writers: list[RunWriter | None],
    diverged_at: np.ndarray,
    carry: tuple,
    step: int,
    keys: list[np.ndarray],
    np_dtype: Any,
) -> None:
    params, opt_state = carry[0], carry[1]
    for i, writer in enumerate(writers):
        if writer is None or diverged_at[i] >= 0:
            continue
        p = jax.tree.map(lambda a, i=i: a[i], params)
        o = jax.tree.map(lambda a, i=i: a[i], opt_state)
        writer.append_checkpoint(step, _flat(p, np_dtype), _flat(o, np_dtype), keys[i])


def _record(
    records: dict[str, np.ndarray],
    start: int,
    diverged_at: np.ndarray,
    summary_steps: np.ndarray,
    summaries: dict[str, np.ndarray],
    writers: list[RunWriter | None] | None,
) -> None:
    """Fold one chunk of per-step records (R, length, ...) into summaries, flags and files."""
    loss = records["loss"]
    length = loss.shape[1]
    was_diverged = diverged_at >= 0
    bad = ~np.isfinite(loss)
    newly = (~was_diverged) & bad.any(axis=1)
    diverged_at[newly] = start + np.argmax(bad[newly], axis=1)
    picked = (summary_steps >= start) & (summary_steps < start + length)
    cols = np.flatnonzero(picked)
    if cols.size:
        offsets = summary_steps[cols] - start
        dead = (diverged_at[:, None] >= 0) & (summary_steps[cols][None, :] > diverged_at[:, None])
        for name in SUMMARY_VARIABLES:
            values = records[name][:, offsets].copy()
            values[dead] = np.nan
            summaries[name][:, cols] = values
    if writers is None:
        return
    for i, writer in enumerate(writers):
        if writer is None or was_diverged[i]:
            continue
        if newly[i]:
            keep = int(diverged_at[i] - start) + 1
            writer.append_steps(start, {k: v[i, :keep] for k, v in records.items()})
            writer.set_attrs(status="diverged", diverged_at_step=np.int64(diverged_at[i]))
        else:
            writer.append_steps(start, {k: v[i] for k, v in records.items()})
