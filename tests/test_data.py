"""The spiral generator."""

import numpy as np
import pytest

from training import spiral


def test_shapes_and_labels():
    d = spiral()
    assert d.x_train.shape == (300, 2) and d.x_val.shape == (300, 2)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(d.y_train), [100, 100, 100])
    assert d.num_classes == 3 and d.input_shape == (2,)


def test_arm_geometry_without_noise():
    d = spiral(points_per_class=50, num_classes=3, noise=0.0)
    r = np.linalg.norm(d.x_train, axis=1)
    for j in range(3):
        np.testing.assert_allclose(r[d.y_train == j], np.linspace(0, 1, 50), atol=1e-6)
        x = d.x_train[d.y_train == j][-1]  # r = 1: θ = 2πj/3 + 4π
        theta = 2 * np.pi * j / 3
        np.testing.assert_allclose(x, [np.cos(theta), np.sin(theta)], atol=1e-5)
    # every training point lies on its arm: (r cos θ, r sin θ) with θ = 2πj/3 + 4πr
    grid = np.linspace(0, 1, 50)
    for j in range(3):
        theta = 2 * np.pi * j / 3 + 4 * np.pi * grid
        arm = np.stack([grid * np.cos(theta), grid * np.sin(theta)], axis=-1)
        np.testing.assert_allclose(d.x_train[d.y_train == j], arm, atol=1e-6)
    r_val = np.linalg.norm(d.x_val, axis=1)
    assert not np.allclose(np.sort(r_val), np.sort(r))  # a different distribution along arms
    for j in range(3):
        # validation radii: sorted uniform draws in [0, 1] (50 draws: gaps ≪ 0.25) ...
        rv = r_val[d.y_val == j]
        assert np.all(np.diff(rv) >= 0) and 0 <= rv[0] < 0.25 and 0.75 < rv[-1] <= 1
        # ... on the same arms (no noise): θ = 2πj/3 + 4πr modulo 2π
        theta = 2 * np.pi * j / 3 + 4 * np.pi * rv
        arm = np.stack([rv * np.cos(theta), rv * np.sin(theta)], axis=-1)
        np.testing.assert_allclose(d.x_val[d.y_val == j], arm, atol=1e-5)  # r in float32


def test_noise_is_gaussian_in_the_angle():
    # θ = 2πj/C + 4πr + noise·ε, ε ~ N(0, 1): the angle off the arm has std ≈ noise
    d = spiral(points_per_class=400, noise=0.2, seed=3)
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val)):
        r = np.linalg.norm(x, axis=1)
        keep = r > 0.05  # the angle of a point at the origin is undefined
        arm = 2 * np.pi * y / 3 + 4 * np.pi * r
        off = np.angle(np.exp(1j * (np.arctan2(x[:, 1], x[:, 0]) - arm)))[keep]
        assert abs(off.mean()) < 0.03
        np.testing.assert_allclose(off.std(), 0.2, rtol=0.08)  # uniform noise: std 0.115
        assert np.abs(off).max() > 2.5 * 0.2  # Gaussian tails (|ε| <= 1 for uniform)


def test_deterministic_and_seeded():
    a, b, c = spiral(seed=0), spiral(seed=0), spiral(seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_train, a.x_val)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points_per_class": 0}, "points_per_class must be an integer >= 1"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"num_classes": True}, r"num_classes must be an integer >= 2 \(got True\)"),
        ({"points_per_class": 5.0}, r"points_per_class must be an integer >= 1 \(got 5.0\)"),
        ({"noise": -0.1}, "noise must be >= 0"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        spiral(**kwargs)
