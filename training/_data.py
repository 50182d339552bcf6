"""Built-in datasets as plain numpy arrays (float32 inputs, int32 labels)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from curvature._checks import integer_at_least


class Data(NamedTuple):
    """A labelled dataset with its training and validation splits.

    Fields: ``x_train`` (N, *input_shape), ``y_train`` (N,) integer labels, ``x_val``, ``y_val``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max())) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _arms(
    radii: np.ndarray, num_classes: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    omega = 2 * np.pi / num_classes
    xs, ys = [], []
    for j in range(num_classes):
        theta = omega * j + 4 * np.pi * radii[j] + noise * rng.standard_normal(radii[j].shape)
        xs.append(np.stack([radii[j] * np.cos(theta), radii[j] * np.sin(theta)], axis=-1))
        ys.append(np.full(radii[j].shape, j, dtype=np.int32))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def spiral(
    points_per_class: int = 100, num_classes: int = 3, noise: float = 0.2, seed: int = 0
) -> Data:
    """The spiral toy problem of the 2021 paper (the authors' generator).

    Class ``j`` follows the arm ``r ∈ [0, 1]``, ``θ = ωj + 4πr + noise·ε`` with ``ω = 2π/C`` and
    ``ε ~ N(0, 1)``; points are ``(r cos θ, r sin θ)``. Training radii are
    ``linspace(0, 1, points_per_class)`` as in the authors' notebook (so θ is their
    ``linspace(ωj, ωj + 4π)``). Validation (project choice, since the paper only says "a
    different distribution of the points along the arms"): radii drawn uniformly in [0, 1] and
    sorted, with fresh noise from a random stream independent of the training one.

    Returns:
      :class:`Data` with ``x_train`` (C·points_per_class, 2) float32, ``y_train`` int32, and a
      validation split of the same size.
    """
    points_per_class = integer_at_least("points_per_class", points_per_class, 1)
    num_classes = integer_at_least("num_classes", num_classes, 2)
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0 (got {noise!r}).")
    train_seq, val_seq = np.random.SeedSequence(seed).spawn(2)
    train_rng, val_rng = np.random.default_rng(train_seq), np.random.default_rng(val_seq)
    grid = np.linspace(0.0, 1.0, points_per_class)
    x_train, y_train = _arms([grid] * num_classes, num_classes, noise, train_rng)
    val_radii = [np.sort(val_rng.uniform(0.0, 1.0, points_per_class)) for _ in range(num_classes)]
    x_val, y_val = _arms(val_radii, num_classes, noise, val_rng)
    return Data(x_train, y_train, x_val, y_val)
