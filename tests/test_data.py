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
    r_val = np.linalg.norm(d.x_val, axis=1)
    assert not np.allclose(np.sort(r_val), np.sort(r))  # a different distribution along arms
    assert np.all((r_val >= 0) & (r_val <= 1))


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
        ({"noise": -0.1}, "noise must be >= 0"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        spiral(**kwargs)
