"""Shared fixtures. Tests that compare numerics tightly run in float64 via the `x64` fixture."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test body with 64-bit JAX types enabled (restored afterwards)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True)
def _restore_x64_flag():
    """Keep tests independent: restoring a float64 run turns 64-bit mode on process-wide."""
    before = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", before)
