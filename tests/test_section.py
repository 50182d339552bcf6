"""Landscape sections: grid values, centre, and the projected trajectory."""

import jax.numpy as jnp
import numpy as np
import pytest

from curvature import landscape_section


def test_quadratic_section_and_centre(x64):
    a = jnp.diag(jnp.asarray([3.0, 1.0, 0.5]))
    centre = {"x": jnp.asarray([0.1, -0.2, 0.3])}
    loss = lambda p: 0.5 * p["x"] @ a @ p["x"]  # noqa: E731
    sec = landscape_section(
        loss,
        centre,
        jnp.asarray([2.0, 0, 0]),
        jnp.asarray([1.0, 1.0, 0]),
        extent=1.0,
        num_points=5,
        chunk_size=7,
    )
    s = sec.surface
    assert s.dims == ("a", "b") and s.shape == (5, 5) and sec.path is None
    assert float(s.sel(a=0.0, b=0.0)) == pytest.approx(float(loss(centre)), rel=1e-14)
    # u1 = e1, u2 = e2 after orthonormalisation.
    x = np.asarray(centre["x"]) + np.array([1.0, -0.5, 0.0])
    assert float(s.sel(a=1.0, b=-0.5)) == pytest.approx(0.5 * x @ np.asarray(a) @ x, rel=1e-12)


def test_trajectory_projection(x64):
    loss = lambda z: jnp.sum(z**2)  # noqa: E731
    centre = jnp.zeros(3)
    traj = jnp.asarray([[1.0, 2.0, 0.0], [0.0, 0.0, 5.0], [3.0, -1.0, 2.0]])
    sec = landscape_section(
        loss,
        centre,
        jnp.asarray([1.0, 0, 0]),
        jnp.asarray([0, 2.0, 0]),
        extent=(1.0, 2.0),
        num_points=(3, 5),
        trajectory=traj,
        steps=[10, 20, 30],
    )
    assert sec.surface.shape == (3, 5)
    np.testing.assert_allclose(sec.path["a"], [1.0, 0.0, 3.0])
    np.testing.assert_allclose(sec.path["b"], [2.0, 0.0, -1.0])
    np.testing.assert_allclose(sec.path["distance"], [0.0, 5.0, 2.0])
    assert list(sec.path["step"].values) == [10, 20, 30]


def test_trajectory_is_projected_relative_to_the_centre(x64):
    # Coordinates of theta_s - theta: the centre itself is (0, 0) at distance 0.
    centre = {"w": jnp.asarray([1.0, -2.0]), "b": jnp.asarray([0.5])}  # flat (b, w)
    flat = jnp.asarray([0.5, 1.0, -2.0])
    traj = jnp.stack([flat, flat + jnp.asarray([3.0, -1.0, 2.0])])
    sec = landscape_section(
        lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2),
        centre,
        jnp.asarray([2.0, 0, 0]),
        jnp.asarray([0, -1.0, 0]),
        num_points=3,
        trajectory=traj,
    )
    # u1 = e1, u2 = -e2.
    np.testing.assert_allclose(sec.path["a"], [0.0, 3.0], atol=1e-15)
    np.testing.assert_allclose(sec.path["b"], [0.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(sec.path["distance"], [0.0, 2.0], atol=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"v2": jnp.asarray([2.0, 0, 0])}, "linearly independent"),
        ({"v1": jnp.ones(2)}, r"v1 must be a flat vector of shape \(3,\)"),
        ({"extent": 0.0}, r"extent must be > 0"),
        ({"num_points": 0}, r"num_points must be an integer >= 2"),
        ({"num_points": (5, 1)}, r"num_points must be an integer >= 2 or a pair of them"),
        ({"v1": jnp.asarray([jnp.nan, 0, 0])}, "must be finite, non-zero"),
        ({"trajectory": jnp.zeros((2, 4))}, r"trajectory must have shape \(S, P\) with P = 3"),
        ({"trajectory": jnp.zeros((2, 3)), "steps": [1]}, r"steps must have shape \(2,\)"),
    ],
)
def test_bad_inputs_are_rejected(kwargs, message):
    options = {"v1": jnp.asarray([1.0, 0, 0]), "v2": jnp.asarray([0, 1.0, 0]), **kwargs}
    with pytest.raises(ValueError, match=message):
        landscape_section(lambda z: jnp.sum(z**2), jnp.zeros(3), **options)


@pytest.mark.parametrize("factor", [1.0, 2.0, -0.5])
def test_parallel_directions_are_refused_in_float32(factor):
    # In float32 the part of v2 = c v1 orthogonal to v1 is rounding, ~1e-7 |v2|: not a plane.
    v1 = jnp.asarray(np.random.default_rng(0).standard_normal(603), jnp.float32)
    with pytest.raises(ValueError, match="linearly independent"):
        landscape_section(lambda z: jnp.sum(z**2), jnp.zeros(603, jnp.float32), v1, factor * v1)


def test_integer_options_may_be_numpy_integers():
    section = landscape_section(
        lambda z: jnp.sum(z**2),
        jnp.zeros(3),
        jnp.asarray([1.0, 0, 0]),
        jnp.asarray([0, 1.0, 0]),
        num_points=np.int64(3),
    )
    assert section.surface.shape == (3, 3)
