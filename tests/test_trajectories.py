"""Hessian/NTK of trained runs, online and post hoc, against exact linear algebra (float64)."""

import jax
import numpy as np
import pytest

import analysis._trajectories
from analysis import checkpoint_section, hessian_trajectory, map_checkpoints, ntk_trajectory
from curvature import empirical_ntk, hessian_eigh, ntk_matrix
from training import TrainConfig, hessian_metric, open_run, restore, train

STEPS = (0, 100, 200)


@pytest.fixture(scope="module")
def run64(tmp_path_factory):
    """A float64 DCE run at width 100 (603 parameters) with λ1..λ3 tracked every step."""
    path = tmp_path_factory.mktemp("traj") / "dce64.nc"
    config = TrainConfig(
        hidden_widths=(100,),
        loss="dce",
        amplitude=10.0,
        period=100.0,
        steps=201,
        checkpoint_every=100,
        dtype="float64",
        output=str(path),
    )
    eps = float(np.finfo(np.float64).eps)
    train(config, metrics={"h": hessian_metric(3, projection=True, tol=np.sqrt(eps))})
    return path


@pytest.fixture(scope="module")
def exact(run64):
    # restore() of a float64 run turns 64-bit mode on process-wide; a module fixture is
    # outside conftest's per-test restore, so put the flag back for the modules after this.
    before = jax.config.jax_enable_x64
    out = {}
    for step in STEPS:
        r = restore(run64, step)
        out[step] = (r, hessian_eigh(r.loss_fn, r.params))
    yield out
    jax.config.update("jax_enable_x64", before)


def _check_vectors(vectors, exact_vectors, values):
    for i in range(3):
        gaps = np.abs(values[i] - np.delete(values[:4], i))
        if np.min(gaps) > 1e-6 * abs(values[0]):  # compare only separated eigenvalues
            cos = abs(float(np.dot(vectors[i], exact_vectors[i])))
            assert cos >= 1 - 1e-8


def test_online_tracking_equals_exact_eigh(run64, exact):
    ds = open_run(run64)
    for step in STEPS:
        _, eig = exact[step]
        tracked = ds["hessian_eigenvalues"].sel(step=step).values
        np.testing.assert_allclose(tracked, eig.eigenvalues[:3], rtol=1e-10)
        assert ds["hessian_eigenvalues"].dims == ("step", "eigen_index")
        np.testing.assert_array_equal(ds["eigen_index"], [1, 2, 3])


@pytest.mark.parametrize("warm", [True, False])
def test_post_hoc_top_k_equals_exact_eigh(run64, exact, warm):
    # Steps out of order: a warm trajectory still runs forward in time (and says so).
    result = hessian_trajectory(run64, steps=[200, 0, 100], k=3, warm=warm)
    assert ("hessian_restarted" in result) == warm
    np.testing.assert_array_equal(result["eigen_index"], [1, 2, 3])  # λ1 is eigen_index=1
    if warm:
        np.testing.assert_array_equal(result["step"], [0, 100, 200])
        # The first checkpoint starts cold, the next ones from the previous vectors.
        np.testing.assert_array_equal(result["hessian_restarted"], [1, 0, 0])
    for step in STEPS:
        _, eig = exact[step]
        np.testing.assert_allclose(
            result["hessian_eigenvalues"].sel(step=step), eig.eigenvalues[:3], rtol=1e-10
        )
    proj = result["grad_projection"] ** 2
    np.testing.assert_allclose(
        proj.sum("eigen_index") + result["grad_perpendicular"] ** 2, 1.0, rtol=1e-10
    )


def test_post_hoc_eigenvectors(run64, exact):
    from curvature import hessian_top_k

    for step in STEPS:
        r, eig = exact[step]
        top = hessian_top_k(r.loss_fn, r.params, 3, key=jax.random.key(0))
        _check_vectors(
            np.asarray(top.eigenvectors), np.asarray(eig.eigenvectors), np.asarray(eig.eigenvalues)
        )


def test_density_and_append(run64):
    result = hessian_trajectory(run64, steps=[100], k=2, density=True, append=True)
    grid = result["hessian_density_grid"].values[0]
    density = result["hessian_density"].values[0]
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-2)
    merged = open_run(run64)
    assert "hessian_eigenvalues_hessian" in merged  # online values are not hidden
    np.testing.assert_allclose(
        merged["hessian_eigenvalues_hessian"].sel(step=100)[:2],
        merged["hessian_eigenvalues"].sel(step=100)[:2],
        rtol=1e-10,
    )


def test_ntk_full_and_top_k_agree_with_exact_kernel(run64):
    r = restore(run64, 100)
    kernel = np.asarray(ntk_matrix(empirical_ntk(r.model.apply, r.params, r.data.x_train)))
    exact = np.linalg.eigvalsh(kernel)[::-1]
    full = ntk_trajectory(run64, steps=[100], full=True)
    np.testing.assert_allclose(full["ntk_spectrum"].values[0, :10], exact[:10], rtol=1e-10)
    np.testing.assert_allclose(
        full["ntk_stability_factors"].values[0],
        1 - 1.0 * full["ntk_spectrum"].values[0] / 300,
        rtol=1e-12,
    )
    top = ntk_trajectory(run64, steps=[100], k=2)
    np.testing.assert_allclose(top["ntk_eigenvalues"].values[0], exact[:2], rtol=1e-8)


def test_ntk_subset(run64):
    r = restore(run64, 0)
    idx = np.round(np.linspace(0, 299, 30)).astype(int)
    kernel = ntk_matrix(empirical_ntk(r.model.apply, r.params, r.data.x_train[idx]))
    sub = ntk_trajectory(run64, steps=[0], full=True, subset=np.int64(30))  # NumPy's too
    assert sub.sizes["ntk_mode"] == 90
    np.testing.assert_allclose(
        sub["ntk_spectrum"].values[0],
        np.linalg.eigvalsh(np.asarray(kernel))[::-1],
        rtol=1e-9,
        atol=1e-9,
    )
    # The stability factors 1 − ηλ/N count the subset's samples: N = 30, not 300.
    np.testing.assert_allclose(
        sub["ntk_stability_factors"].values[0],
        1 - 1.0 * sub["ntk_spectrum"].values[0] / 30,
        rtol=1e-12,
    )
    for subset in (0, True, 30.0):
        with pytest.raises(ValueError, match=r"subset must be an integer in \[1, 300\]"):
            ntk_trajectory(run64, steps=[0], full=True, subset=subset)
    with pytest.raises(ValueError, match="eigenvectors=True needs full=True"):
        ntk_trajectory(run64, steps=[0], eigenvectors=True)


def test_checkpoint_section_centre(run64):
    section = checkpoint_section(run64, 100, extent=0.2, num_points=5)
    r = restore(run64, 100)
    np.testing.assert_allclose(
        float(section.surface.sel(a=0.0, b=0.0)), float(r.loss_fn(r.params)), rtol=1e-12
    )
    assert section.path.sizes["point"] == 4  # checkpoints 0, 100, 200 and the final 201


def test_bad_steps_and_append_are_refused_before_computing(run64, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("computed before refusing")

    monkeypatch.setattr(analysis._trajectories, "map_checkpoints", fail)
    with pytest.raises(ValueError, match="append=True needs the run's file path"):
        hessian_trajectory(open_run(run64), k=2, append=True)
    with pytest.raises(ValueError, match="append=True needs the run's file path"):
        ntk_trajectory(open_run(run64), k=2, append=True)
    with pytest.raises(ValueError, match=r"steps must be whole step numbers \(got \[100.5\]\)"):
        hessian_trajectory(run64, steps=[100.5], k=2)
    # k's range comes first, also when results with other options are already next to the run.
    monkeypatch.undo()
    hessian_trajectory(run64, steps=[0], k=1, projection=False, append=True, overwrite=True)
    monkeypatch.setattr(analysis._trajectories, "map_checkpoints", fail)
    with pytest.raises(ValueError, match=r"k must be an integer with 1 <= k <= P = 603"):
        hessian_trajectory(run64, k=0, append=True)
    with pytest.raises(ValueError, match=r"k must be <= P/2 = 301 for the warm.*--cold"):
        hessian_trajectory(run64, k=302)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"steps must be whole step numbers \(got \[10.7, 19.9\]"):
        map_checkpoints(run64, lambda ctx: 1.0, name="one", steps=[10.7, 19.9])
    # Whole numbers given as floats are steps.
    assert map_checkpoints(run64, lambda ctx: 1.0, name="one", steps=[100.0])["step"] == 100


def test_hessian_tol_sets_the_online_tracker_tolerance(tmp_path):
    base = TrainConfig(
        hidden_widths=(16,),
        amplitude=10.0,
        period=40.0,
        steps=60,
        hessian_top_k=2,
        checkpoint_every=60,
        dtype="float64",
    )
    relres = {}
    for tol in (1e-1, 1e-7):
        config = base.replace(hessian_tol=tol, output=str(tmp_path / f"tol{tol:g}.nc"))
        train(config)
        ds = open_run(config.output)
        assert ds.attrs["config"] == config.to_json()
        values, residuals = ds["hessian_eigenvalues"].values, ds["hessian_residuals"].values
        relres[tol] = (residuals / np.abs(values))[1:]
    assert np.max(relres[1e-7]) <= 1e-6  # refined to the tight tolerance (or restarted cold)
    assert np.median(relres[1e-1]) > 10 * np.median(relres[1e-7])  # the loose one stopped early
