"""Shared fixtures. Tests that compare numerics tightly run in float64 via the `x64` fixture."""

import contextlib
import os
import shutil
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import pytest

_CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = "DYNLOSS_TEST_JAX_CACHE"  # set by the session that made the folder


def pytest_configure(config):
    """One persistent compilation cache per test session, shared by its processes.

    The pytest-xdist workers, the CLI's subprocesses and dask's workers inherit the folder
    through the environment, so a program that several of them compile (a training scan that
    a test runs in-process and again through ``dynloss`` or a dask worker) is compiled once.
    Only programs that take a second or more to compile are stored (JAX's default), so the
    tests that count compilations of small programs are unaffected. A folder the user set
    (``JAX_COMPILATION_CACHE_DIR``) is used and kept; the session's own is deleted at its end.
    """
    if _CACHE_VARIABLE not in os.environ:  # the first process of the session
        os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="dynloss-test-jax-cache-")
        os.environ[_OWN_CACHE] = os.environ[_CACHE_VARIABLE]
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VARIABLE])


def pytest_unconfigure(config):
    own = os.environ.get(_OWN_CACHE)
    if own and not os.environ.get("PYTEST_XDIST_WORKER"):  # the session's first process
        shutil.rmtree(own, ignore_errors=True)


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


@contextlib.contextmanager
def _compilations():
    """Collects one entry (its duration) per XLA compilation made inside the block."""
    seen = []

    def listener(event: str, duration: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture
def compilations():
    """``with compilations() as seen:`` counts the XLA compilations inside the block."""
    return _compilations
