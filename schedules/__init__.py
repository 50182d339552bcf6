"""Oscillation schedules Γ(t) and the static and dynamical losses (pure functions)."""

from schedules._losses import (
    LOSSES,
    STATIC_OF,
    Loss,
    cross_entropy,
    dce,
    dmse1,
    dmse2,
    get_loss,
    is_dynamical,
    mse,
)
from schedules._schedules import (
    SHAPES,
    Schedule,
    constant,
    float_residual,
    make_schedule,
    sine,
    square,
    triangle,
)

__all__ = [
    "LOSSES",
    "SHAPES",
    "STATIC_OF",
    "Loss",
    "Schedule",
    "constant",
    "cross_entropy",
    "dce",
    "dmse1",
    "dmse2",
    "float_residual",
    "get_loss",
    "is_dynamical",
    "make_schedule",
    "mse",
    "sine",
    "square",
    "triangle",
]
