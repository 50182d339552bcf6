"""Post-hoc curvature of saved runs: Hessian and NTK along the checkpoints.

Both go through :func:`analysis.map_checkpoints` with the same built-in metrics the trainer
uses online (``training._diagnostics``), so post-hoc and online values are comparable variable
for variable. Results are Datasets on a ``step`` coordinate holding only the analysed steps;
``append=True`` writes them next to the run as ``RUN.hessian.nc`` / ``RUN.ntk.nc``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import xarray as xr

from analysis._map import integer_steps, map_checkpoints
from curvature import empirical_ntk, ntk_spectrum, spectral_density, stability_factors
from curvature._checks import is_integer
from curvature._compiled import reused
from curvature._lanczos import check_k
from curvature._tracking import max_tracked_k
from training import (
    Context,
    Metric,
    TrainConfig,
    check_sibling,
    config_of,
    open_run,
    write_sibling,
)
from training._diagnostics import hessian_metric, ntk_metric

NTK_MODE = "ntk_mode"
DENSITY_POINT = "density_point"
POST_HOC_ITERATIONS = 20
"""Most block expansions per checkpoint of a warm post-hoc Hessian trajectory (see
:func:`hessian_trajectory`): checkpoints lie further apart than training steps."""


LANCZOS_BATCH = 1
"""Checkpoints per vmapped batch for the cold Lanczos and SLQ paths. One at a time is faster
on CPU: 16 checkpoints of 64 Lanczos steps take 77 ms one by one against 117 ms vmapped at
width 100, 0.77 s against 1.56 s at width 1000 (XLA's batched matrix-vector products are slow
there; the NTK's top-1 over 101 checkpoints: 1.8 s against 2.2 s at width 100, 4.0 s against
4.9 s at width 1000); on a GPU larger batches may pay."""


@reused
def _density_metric(
    num_probes: int,
    num_matvecs: int | None,
    num_points: int,
    sigma: float | None,
) -> Metric:
    """SLQ density; ``num_matvecs=None`` is spectral_density's default, ``min(80, P)``."""

    def init(ctx: Context) -> tuple:
        return ()

    def update(ctx: Context, state: tuple) -> tuple[dict, tuple]:
        key = jax.random.fold_in(jax.random.key(ctx.config.seed), 3)
        d = spectral_density(
            ctx.loss_fn,
            ctx.params,
            num_probes=num_probes,
            num_matvecs=num_matvecs,
            num_points=num_points,
            sigma=sigma,
            key=key,
        )
        return {"hessian_density": d.density, "hessian_density_grid": d.grid}, state

    return Metric(
        init,
        update,
        {"hessian_density": (DENSITY_POINT,), "hessian_density_grid": (DENSITY_POINT,)},
        prefix=False,
        attrs={
            "hessian_density": {
                "long_name": "SLQ spectral density of the Hessian "
                "(integrates to 1 over hessian_density_grid)",
                "units": "1",
            },
            "hessian_density_grid": {
                "long_name": "eigenvalue grid of the spectral density",
                "units": "1",
            },
        },
    )


def _config_and_size(run: xr.Dataset | str | Path) -> tuple[TrainConfig, int]:
    """The run's configuration and its number of parameters P, from a path or a Dataset."""
    if isinstance(run, str | Path):
        with open_run(run, siblings=False) as dataset:
            return config_of(dataset), dataset.sizes["param"]
    return config_of(run), run.sizes["param"]


def hessian_request(
    run: xr.Dataset | str | Path,
    *,
    steps: Sequence[int] | None = None,
    k: int = 3,
    warm: bool = True,
    projection: bool = True,
    density: bool = False,
    num_probes: int = 8,
    density_num_matvecs: int | None = None,
    num_points: int = 400,
    sigma: float | None = None,
    append: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> tuple[list[int] | Sequence[int] | None, dict, dict]:
    """The checks of :func:`hessian_trajectory` (same arguments and defaults, compared in
    tests/test_cli.py), made before anything is computed: ``(steps, solver options, recorded
    options)``. The command line makes them for every run it is given before it analyses
    the first."""
    config, num_params = _config_and_size(run)
    dtype = config.dtype
    check_k(k, num_params)  # before anything is computed or refused for other reasons
    if warm and options.get("method", "block") == "block" and k > max_tracked_k(num_params):
        raise ValueError(
            f"k must be <= P/2 = {num_params // 2} for the warm-started tracker (got {k}; P = "
            f"{num_params} parameters): it needs room for a residual block beside the vectors. "
            "Use warm=False (--cold on the command line) for k up to P."
        )
    if warm:
        eps = float(np.finfo(dtype).eps)
        options = {"tol": float(np.sqrt(eps)), "num_iterations": POST_HOC_ITERATIONS, **options}
        if steps is not None:  # each checkpoint warm-starts the next: go forward in time
            steps = sorted(set(integer_steps(steps).tolist()))
    recorded = {"k": k, "warm": warm, "projection": projection, "density": density, **options}
    if density:
        recorded.update(
            num_probes=num_probes,
            density_num_matvecs=density_num_matvecs,
            num_points=num_points,
            sigma=sigma,
        )
    _check_append(run, "hessian", append, overwrite, recorded)
    return steps, options, recorded


def hessian_trajectory(
    run: xr.Dataset | str | Path,
    *,
    steps: Sequence[int] | None = None,
    k: int = 3,
    warm: bool = True,
    projection: bool = True,
    density: bool = False,
    num_probes: int = 8,
    density_num_matvecs: int | None = None,
    num_points: int = 400,
    sigma: float | None = None,
    append: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    **options: Any,
) -> xr.Dataset:
    """Top-k Hessian eigenpairs (and gradient projection, SLQ density) at saved checkpoints.

    Records ``hessian_eigenvalues(step, eigen_index)``, ``hessian_residuals`` (``‖Hv − λv‖``
    from true products), and with ``projection`` ``grad_projection`` and
    ``grad_perpendicular``; with ``density`` also ``hessian_density(step, density_point)`` on
    ``hessian_density_grid`` (SLQ with ``num_probes`` probes).

    ``warm=True`` (default): the checkpoints are visited in increasing step order and each
    starts from the previous one's eigenvectors (:func:`curvature.hessian_tracker`, block
    LOBPCG); the first checkpoint, and any whose warm residuals stay above the tracker's
    ``restart_tol``, get a cold Lanczos start, recorded in ``hessian_restarted(step)``. Unlike
    online tracking, which trades accuracy for speed, the defaults here are
    ``tol = sqrt(eps)`` of the run's dtype and up to :data:`POST_HOC_ITERATIONS` expansions:
    eigenvalues equal the cold Lanczos ones to ~1e-14 in float64 and ~2e-6 in float32
    (float32 rounding). ``warm=False``: an independent cold Lanczos run
    (:func:`curvature.hessian_top_k`) at every checkpoint, one after the other. 101
    checkpoints of the width-1000 spiral MLP take 3.5–4.1 s warm against 7.1–7.3 s cold,
    compilation included (benchmarks/curvature.py). ``options`` go to
    ``hessian_tracker`` (warm: ``tol``, ``num_iterations``, ...) or ``hessian_top_k`` (cold:
    ``num_matvecs``, ...). The density's Lanczos depth is ``density_num_matvecs`` (default
    ``min(80, P)``); its probes are drawn from ``jax.random.fold_in(jax.random.key(seed), 3)``
    with the run's ``seed`` (the same at every checkpoint), so ``spectral_density(...,
    key=that key)`` at a restored checkpoint reproduces the stored density.

    ``append=True`` writes the result to ``RUN.hessian.nc``, keeping the other steps of an
    earlier result of the same shape and options (others are refused before computing);
    ``overwrite=True`` replaces it whatever it holds (see :func:`training.write_sibling`).
    """
    steps, options, recorded = hessian_request(
        run,
        steps=steps,
        k=k,
        warm=warm,
        projection=projection,
        density=density,
        num_probes=num_probes,
        density_num_matvecs=density_num_matvecs,
        num_points=num_points,
        sigma=sigma,
        append=append,
        overwrite=overwrite,
        **options,
    )
    result = map_checkpoints(
        run,
        hessian_metric(k, projection=projection, warm=warm, **options),
        steps=steps,
        name="hessian",
        batch=LANCZOS_BATCH,
        progress=progress,
        share_programs=True,
    )
    if not warm:
        result = result.drop_vars("hessian_restarted")
    if density:
        dens = map_checkpoints(
            run,
            _density_metric(num_probes, density_num_matvecs, num_points, sigma),
            steps=steps,
            name="hessian_density",
            batch=LANCZOS_BATCH,
            progress=progress,
            share_programs=True,
        )
        result = xr.merge([result, dens])
    return _finish(run, result, "hessian", append, overwrite, recorded)


def _on_subset(metric: Metric, subset: tuple[int, ...] | None) -> Metric:
    """``metric`` evaluated on the training inputs ``x[subset]`` only."""
    if subset is None:
        return metric
    index = np.asarray(subset, np.int64)

    def restrict(ctx: Context) -> Context:
        return ctx._replace(x=ctx.x[index], y=ctx.y[index])

    return metric._replace(
        init=lambda ctx: metric.init(restrict(ctx)),
        update=lambda ctx, state: metric.update(restrict(ctx), state),
    )


@reused
def _ntk_top_metric(k: int, subset: tuple[int, ...] | None, **options: Any) -> Metric:
    return _on_subset(ntk_metric(k, warm=False, **options), subset)


@reused
def _ntk_full_metric(
    eigenvectors: bool, num_samples: int, subset: tuple[int, ...] | None
) -> Metric:
    def init(ctx: Context) -> tuple:
        return ()

    def update(ctx: Context, state: tuple) -> tuple[dict, tuple]:
        kernel = empirical_ntk(ctx.apply_fn, ctx.params, ctx.x)
        spectrum = ntk_spectrum(kernel, eigenvectors=eigenvectors)
        factors = stability_factors(spectrum.eigenvalues, ctx.learning_rate, num_samples)
        values = {"ntk_spectrum": spectrum.eigenvalues, "ntk_stability_factors": factors.factors}
        if eigenvectors:
            values["ntk_eigenvectors"] = spectrum.eigenvectors
        return values, state

    dims = {
        "ntk_spectrum": (NTK_MODE,),
        "ntk_stability_factors": (NTK_MODE,),
        "ntk_eigenvectors": (NTK_MODE, "ntk_row"),
    }
    attrs = {
        "ntk_spectrum": {
            "long_name": "all eigenvalues of the empirical NTK (N*C x N*C), descending",
            "units": "1",
        },
        "ntk_stability_factors": {
            "long_name": "per-mode factor 1 - eta*lambda_j/N (N training samples)",
            "units": "1",
        },
        "ntk_eigenvectors": {
            "long_name": "NTK eigenvectors as rows (row index n*C + c)",
            "units": "1",
        },
    }
    return _on_subset(Metric(init, update, dims, prefix=False, attrs=attrs), subset)


def ntk_request(
    run: xr.Dataset | str | Path,
    *,
    k: int = 3,
    full: bool = False,
    eigenvectors: bool = False,
    subset: int | None = None,
    append: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> tuple[int, tuple[int, ...] | None, dict]:
    """The checks of :func:`ntk_trajectory` (same arguments and defaults), made before
    anything is computed: ``(N, the subset's sample indices or None, recorded options)``."""
    if eigenvectors and not full:
        raise ValueError("eigenvectors=True needs full=True (the full kernel's eigenvectors).")
    config, _ = _config_and_size(run)
    num_samples = config.points_per_class * config.num_classes
    index = None
    if subset is not None:
        if not is_integer(subset) or not 1 <= subset <= num_samples:
            raise ValueError(
                f"subset must be an integer in [1, {num_samples}] (the training samples) "
                f"(got {subset!r})."
            )
        subset = int(subset)  # NumPy's integers too, so the options attribute serialises
        index = tuple(np.round(np.linspace(0, num_samples - 1, subset)).astype(int).tolist())
        num_samples = subset
    recorded = {"full": full, "eigenvectors": eigenvectors, "subset": subset, **options}
    if not full:  # the full spectrum does not depend on k
        recorded["k"] = k
    _check_append(run, "ntk", append, overwrite, recorded)
    return num_samples, index, recorded


def ntk_trajectory(
    run: xr.Dataset | str | Path,
    *,
    steps: Sequence[int] | None = None,
    k: int = 3,
    full: bool = False,
    eigenvectors: bool = False,
    subset: int | None = None,
    batch: int | None = None,
    append: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    **options: Any,
) -> xr.Dataset:
    """NTK eigenvalues of the training inputs at saved checkpoints.

    Default: the top ``k`` by matrix-free Lanczos (:func:`curvature.ntk_top_k`):
    ``ntk_eigenvalues(step, ntk_eigen_index)``, ``ntk_residuals``. With ``full=True``: the
    whole kernel is formed and diagonalised (:func:`curvature.ntk_spectrum`):
    ``ntk_spectrum(step, ntk_mode)``, ``ntk_stability_factors`` (1 − ηλ_j/N), and with
    ``eigenvectors=True`` ``ntk_eigenvectors(step, ntk_mode, ntk_row)``. ``subset=n`` uses
    ``n`` training samples evenly spaced through the (class-sorted) training set, so a kernel
    too large to form becomes affordable; the stability factors then use ``N = n``.
    ``batch``: checkpoints per vmapped batch (default one at a time, the fastest on CPU; see
    :data:`LANCZOS_BATCH`). ``append``/``overwrite``: as :func:`hessian_trajectory`, into
    ``RUN.ntk.nc``.
    """
    num_samples, index, recorded = ntk_request(
        run,
        k=k,
        full=full,
        eigenvectors=eigenvectors,
        subset=subset,
        append=append,
        overwrite=overwrite,
        **options,
    )
    if full:
        metric = _ntk_full_metric(eigenvectors, num_samples, index)
        result = map_checkpoints(
            run,
            metric,
            steps=steps,
            name="ntk",
            batch=batch or 1,
            progress=progress,
            share_programs=True,
        )
    else:
        result = map_checkpoints(
            run,
            _ntk_top_metric(k, index, **options),
            steps=steps,
            name="ntk",
            batch=LANCZOS_BATCH if batch is None else batch,
            progress=progress,
            share_programs=True,
        )
        result = result.drop_vars("ntk_restarted")
    return _finish(run, result, "ntk", append, overwrite, recorded)


def checkpoint_section(
    run: xr.Dataset | str | Path,
    step: int,
    *,
    extent: float = 1.0,
    num_points: int = 41,
    window: int | None = None,
) -> Any:
    """The landscape section F(θ + a·v1 + b·v2) at a saved checkpoint (2025 paper, Fig. 3).

    ``v1, v2`` are the top-2 Hessian eigenvectors of the loss at ``step`` (Γ of that step);
    the saved checkpoints within ``window`` steps of ``step`` (default: all) are projected into
    the plane. Returns :class:`curvature.Section` ``(surface, path)``.
    """
    from jax.flatten_util import ravel_pytree

    from curvature import hessian_top_k, landscape_section
    from training import restore

    if isinstance(run, str | Path):
        with open_run(run) as ds:
            return checkpoint_section(
                ds.load(), step, extent=extent, num_points=num_points, window=window
            )
    ds = run
    config = config_of(ds)
    r = restore(ds, step)
    eig = hessian_top_k(r.loss_fn, r.params, 2, key=jax.random.key(config.seed))
    saved = np.asarray(ds["checkpoint_step"].values)
    near = np.ones(saved.shape, bool) if window is None else np.abs(saved - step) <= window
    trajectory = np.asarray(ds["params"].values)[near]
    flat, _ = ravel_pytree(r.params)
    return landscape_section(
        r.loss_fn,
        r.params,
        eig.eigenvectors[0],
        eig.eigenvectors[1],
        extent=extent,
        num_points=num_points,
        trajectory=jax.numpy.asarray(trajectory, flat.dtype),
        steps=saved[near],
    )


def _options_attr(options: dict) -> str:
    """Options as sorted JSON, NumPy and JAX scalars as plain numbers (40, not "40")."""

    def plain(value: Any) -> Any:
        try:
            return np.asarray(value).tolist()
        except Exception:
            return str(value)

    return json.dumps(options, sort_keys=True, default=plain)


def _check_append(run: Any, kind: str, append: bool, overwrite: bool, options: dict) -> None:
    """Refuse before computing what ``write_sibling`` would refuse after (another run, options)."""
    if append and not isinstance(run, str | Path):
        raise ValueError("append=True needs the run's file path, not an opened Dataset.")
    if append and not overwrite:
        check_sibling(run, kind, _options_attr(options))


def _finish(
    run: Any, result: xr.Dataset, kind: str, append: bool, overwrite: bool, options: dict
) -> xr.Dataset:
    # The options that shape the values, so results computed otherwise are never merged.
    result = result.assign_attrs(options=_options_attr(options))
    for dim in ("eigen_index", "ntk_eigen_index", NTK_MODE):
        if dim in result.dims:
            index = np.arange(1, result.sizes[dim] + 1, dtype=np.int32)  # as in run files
            result = result.assign_coords({dim: index})
    if append:  # run is a path (_check_append)
        write_sibling(run, kind, result, overwrite=overwrite)
    return result
