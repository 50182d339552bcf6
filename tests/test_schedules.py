"""Identities of the oscillation schedules Γ(t)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedules import constant, make_schedule, sine, square, triangle

SHAPES = [triangle, sine, square]

classes = st.integers(min_value=2, max_value=10)
periods = st.integers(min_value=1, max_value=500)
amplitudes = st.floats(min_value=1.0, max_value=100.0)
steps = st.integers(min_value=0, max_value=100_000)

# The identities below run in float64 (the `x64` fixture) with tight tolerances; the fixture
# is entered once per test function, not per example, which hypothesis would flag.
identity = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(identity, max_examples=60)
@given(C=classes, T=periods, A=amplitudes, t=steps, shape=st.sampled_from(SHAPES))
def test_sum_and_bounds(x64, C, T, A, t, shape):
    # sum_i Γ_i = C and C/(A+C-1) <= Γ_i <= C·A/(A+C-1)
    gamma = shape(C, T, A)(t)
    assert gamma.dtype == jnp.float64 and gamma.shape == (C,)
    gamma = np.asarray(gamma)
    np.testing.assert_allclose(gamma.sum(), C, rtol=1e-14)
    lo, hi = C / (A + C - 1), C * A / (A + C - 1)
    assert np.all(gamma >= lo * (1 - 1e-14)) and np.all(gamma <= hi * (1 + 1e-14))


@settings(identity, max_examples=40)
@given(C=classes, T=periods, A=amplitudes, t=steps, shape=st.sampled_from(SHAPES))
def test_periodic_over_all_classes(x64, C, T, A, t, shape):
    # Γ(t) = Γ(t + C·T): every class has had its period (integer T: τ is exact)
    s = shape(C, T, A)
    np.testing.assert_allclose(s(t), s(t + C * T), rtol=1e-14, atol=0)


@settings(identity, max_examples=30)
@given(C=classes, T=periods, t=steps, shape=st.sampled_from(SHAPES))
def test_amplitude_one_is_static(x64, C, T, t, shape):
    # A = 1 gives Γ ≡ 1 exactly
    np.testing.assert_array_equal(shape(C, T, 1.0)(t), np.ones(C))


@settings(identity, max_examples=30)
@given(C=classes, T=st.integers(2, 400), A=amplitudes, k=st.integers(0, 50))
def test_ones_at_period_boundaries(x64, C, T, A, k):
    # g(0) = 1 for every shape, so Γ ≡ 1 at t = k·T
    for shape in SHAPES:
        np.testing.assert_allclose(shape(C, T, A)(k * T), np.ones(C), rtol=1e-15, atol=0)


def test_triangle_hand_values(x64):
    # C = 3, T = 200, A = 10: class 0 in focus for t in [0, 200), peak 10 at t = 100.
    s = triangle(3, 200, 10.0)
    np.testing.assert_allclose(s(100), [3 * 10 / 12, 3 / 12, 3 / 12], rtol=1e-14)
    g = 1 + 2 * 9 / 200 * 50  # rising edge at t = 50
    np.testing.assert_allclose(s(50), 3 * np.array([g, 1, 1]) / (g + 2), rtol=1e-14)
    g = 2 * 10 - 2 * 9 / 200 * 150 - 1  # falling edge at t = 150
    np.testing.assert_allclose(s(150), 3 * np.array([g, 1, 1]) / (g + 2), rtol=1e-14)
    # the focus moves to class 1, then class 2, then back to 0
    assert np.argmax(s(300)) == 1 and np.argmax(s(500)) == 2 and np.argmax(s(700)) == 0


def test_stop_after():
    s = triangle(3, 200, 10.0, stop_after=1000)
    assert not np.allclose(s(99), 1.0)  # oscillating before the stop step
    for t in (1000, 1001, 1100, 50_000):
        np.testing.assert_array_equal(s(t), np.ones(3))
    # a stop step inside a period: Γ ≠ 1 one step before, Γ ≡ 1 from the stop step on
    s = triangle(3, 200, 10.0, stop_after=1050)
    assert not np.allclose(s(1049), 1.0)
    np.testing.assert_array_equal(s(1050), np.ones(3))
    np.testing.assert_array_equal(make_schedule("sine", 3, 200, 10.0, stop_after=0)(50), np.ones(3))


def test_sine_and_square_hand_values(x64):
    # C = 3, T = 200, A = 10, class 0 in focus; Γ = 3·raw / sum(raw)
    def gamma(g):
        return 3 * np.array([g, 1.0, 1.0]) / (g + 2)

    s = sine(3, 200, 10.0)
    for t in (25, 50, 130):  # g = 1 + (A-1) sin²(π τ / T)
        g = 1 + 9 * np.sin(np.pi * t / 200) ** 2
        np.testing.assert_allclose(s(t), gamma(g), rtol=1e-14)
    np.testing.assert_allclose(s(50), gamma(5.5), rtol=1e-14)  # sin²(π/4) = 1/2
    q = square(3, 200, 10.0)
    # g = A on [T/4, 3T/4), 1 elsewhere: both edges of the half-open interval
    for t, g in ((49, 1.0), (50, 10.0), (149, 10.0), (150, 1.0), (199, 1.0)):
        np.testing.assert_allclose(q(t), gamma(g), rtol=1e-14, err_msg=f"t = {t}")


@pytest.mark.parametrize(
    ("residual", "t", "focus"),
    [
        # t = 200.0005 is past 2·T but before 2·(T + dT): still period 1 (class 1)
        (1e-3, 200.0005, 1),
        # dT < 0: t = 199.9995 is before 2·T but past 2·(T + dT): already period 2 (class 2)
        (-1e-3, 199.9995, 2),
    ],
)
def test_period_residual_moves_the_focus_across_a_boundary(x64, residual, t, focus):
    # (τ, k) with t ≈ k·(T + dT) + τ, 0 <= τ < T: the class in focus is k mod C, and near the
    # boundary its factor is barely above 1 (τ ≈ 0 or τ ≈ T)
    gamma = np.asarray(triangle(3, 100.0, 10.0, period_residual=residual)(t))
    assert np.argmax(gamma) == focus
    others = np.delete(gamma, focus)
    assert gamma[focus] > 1 > others[0] == others[1]
    np.testing.assert_allclose(gamma.sum(), 3.0, rtol=1e-14)
    assert gamma[focus] - 1 < 1e-3


def test_shapes_share_peak_and_normalisation(x64):
    for shape in SHAPES:
        np.testing.assert_allclose(shape(3, 200, 10.0)(100), [2.5, 0.25, 0.25], rtol=1e-12)
    np.testing.assert_allclose(square(3, 200, 10.0)(10), np.ones(3))
    np.testing.assert_array_equal(constant(4)(123), np.ones(4))
    np.testing.assert_array_equal(make_schedule("constant", 3, 200, 10.0)(7), np.ones(3))


def test_jit_and_vmap_over_traced_parameters():
    amplitudes = jnp.array([1.0, 10.0, 70.0])
    periods = jnp.array([100.0, 200.0, 5000.0])
    stops = jnp.array([0, 10**9, 10**9])

    @jax.jit
    def gammas(A, T, stop):
        return triangle(3, T, A, stop_after=stop)(50)

    out = jax.vmap(gammas)(amplitudes, periods, stops)
    for i in range(3):
        stop = None if i else 0
        expected = triangle(3, float(periods[i]), float(amplitudes[i]), stop_after=stop)(50)
        np.testing.assert_allclose(out[i], expected, rtol=1e-6)
    np.testing.assert_array_equal(out[0], np.ones(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amplitude": 0.5}, "amplitude must be finite and >= 1"),
        ({"amplitude": np.float32(0.5)}, "amplitude must be finite and >= 1"),
        ({"amplitude": float("inf")}, "amplitude must be finite and >= 1"),
        ({"period": 0}, "period must be a finite number of steps > 0"),
        ({"period": -3}, "period must be a finite number of steps > 0"),
        ({"period": np.int64(0)}, "period must be a finite number of steps > 0"),
        ({"period": float("inf")}, "period must be a finite number of steps > 0"),
        ({"num_classes": 0}, "num_classes must be an integer >= 1"),
        ({"num_classes": 3.0}, "num_classes must be an integer >= 1"),
        ({"stop_after": -1}, "stop_after must be a step >= 0"),
        ({"stop_after": np.int64(-5)}, "stop_after must be a step >= 0"),
    ],
)
def test_bad_input(kwargs, message):
    args = {"num_classes": 3, "period": 200, "amplitude": 10.0} | kwargs
    stop = args.pop("stop_after", None)
    with pytest.raises(ValueError, match=message):
        triangle(args["num_classes"], args["period"], args["amplitude"], stop_after=stop)


def test_numpy_numbers_are_accepted_like_python_numbers():
    expected = triangle(3, 200.0, 10.0, stop_after=500)(150)
    got = triangle(np.int64(3), np.float64(200.0), np.float32(10.0), stop_after=np.int64(500))
    np.testing.assert_allclose(got(150), expected, rtol=1e-6)


def test_unknown_shape():
    with pytest.raises(ValueError, match="schedule must be one of"):
        make_schedule("sawtooth", 3, 200, 10.0)


def _triangle_reference(t: int, T: float, A: float, C: int = 3) -> np.ndarray:
    """Γ(t) in float64 NumPy, straight from SCIENCE.md."""
    k = np.floor(t / T)
    tau = t - k * T
    m = 2 * (A - 1) / T
    raw = np.ones(C)
    raw[int(k) % C] = 1 + m * tau if tau <= T / 2 else 2 * A - m * tau - 1
    return C * raw / raw.sum()


@pytest.mark.parametrize("T", [5000 / 3, 5000 / 0.3, 5000 / 7])
def test_float32_fractional_period_stays_in_phase_over_many_periods(T):
    # The learning-rate study's T = 5000/η: float32(T) is off by up to 1e-3 steps, which k
    # periods multiply; without period_residual Γ drifted by 1e-3 at A = 70 within 7e5 steps.
    from training import TrainConfig
    from training._trainer import hyper_of

    A = 70.0
    ts = np.unique(
        np.concatenate(
            [
                np.arange(0, 700_001, 97),
                np.floor(np.arange(1, 420) * T),
                np.ceil(np.arange(1, 420) * T),
            ]
        ).astype(np.int64)
    )
    ts = ts[ts <= 2_000_000]
    expected = np.array([_triangle_reference(int(t), T, A) for t in ts])
    hyper = hyper_of(TrainConfig(period=T, amplitude=A), jnp.float32)
    traced = jax.jit(
        jax.vmap(
            lambda t, p, a, r: triangle(3, p, a, period_residual=r)(t),
            in_axes=(0, None, None, None),
        )
    )
    for got in (
        jax.vmap(triangle(3, T, A))(jnp.asarray(ts)),  # concrete period: residual computed
        traced(jnp.asarray(ts), hyper.period, hyper.amplitude, hyper.period_residual),
    ):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), expected, atol=3e-5)
    without = traced(jnp.asarray(ts), hyper.period, hyper.amplitude, jnp.float32(0))
    assert np.abs(np.asarray(without) - expected).max() > 3e-4  # the drift it removes


def test_float32_triangle_is_accurate_on_both_halves():
    # The falling half as 1 + m (T - τ): the algebraically equal 2A - m τ - 1 cancelled to
    # 1.8e-6 relative error (15 ulp) at A = 70; now within a few float32 ulp everywhere.
    T, A, C = 2000.0, 70.0, 3
    ts = np.arange(0, 700_001, 7)
    k, tau = np.floor(ts / T), np.mod(ts, T)
    g = 1 + 2 * (A - 1) / T * np.where(tau <= T / 2, tau, T - tau)
    raw = np.ones((len(ts), C))
    raw[np.arange(len(ts)), (k % C).astype(int)] = g
    expected = C * raw / raw.sum(axis=1, keepdims=True)
    got = jax.jit(jax.vmap(triangle(C, T, A)))(jnp.asarray(ts))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=4 * 2.0**-23)
