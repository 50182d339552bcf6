"""Onset detection on synthetic dynamics with known bifurcation points.

Models (all float64 numpy, seeded):
- logistic map x ← r(t)·x(1 − x) with r ramped slowly through the period-doubling points
  r = 3, 1 + √6 ≈ 3.449, 3.544 (period 2, 4, 8) and a small additive noise (1e-7) that keeps
  the orbit off the unstable fixed point. With a slow ramp, bifurcations are seen late (the
  orbit must grow from the noise level), never early: tolerances below are one-sided.
- quadratic F = ½λ(t)(x − c(t))² under GD whose minimum c(t) moves at constant speed (the
  small forcing: it keeps x off the minimum, so F carries a term linear in the deviation and
  shows the sign flips); λ(t) ramps slowly through 2/η and drops back. Onset at λ = 2/η.
- nonlinear regression f(x) = w²·x + b, MSE, full-batch GD on F = Γ(t)·L with the loss weight
  Γ(t) ramped through the edge of stability and back (as a dynamical loss does); exact
  Hessian λ_1, λ_2 of F at every step.
"""

import json

import numpy as np
import pytest
import xarray as xr

from analysis import branch_labels, detect_onsets, threshold

DOUBLINGS = {2: 3.0, 4: 1 + np.sqrt(6), 8: 3.5440903596}


def logistic_run(n: int = 100_000, noise: float = 1e-7, seed: int = 0):
    """Logistic map with r(t) = 3.562 − 0.662·(1 − t/n)² (slowing near the cascade's end)."""
    s = np.linspace(0.0, 1.0, n)
    r = 3.562 - (3.562 - 2.9) * (1.0 - s) ** 2
    kicks = np.random.default_rng(seed).normal(0.0, noise, n)
    xs = np.empty(n)
    x = 0.5
    for t in range(n):
        xs[t] = x
        x = r[t] * x * (1.0 - x) + kicks[t]
    return r, xs


def quadratic_run(eta: float, n_up: int = 20_000, cycles: int = 2, seed: int = 0):
    """GD on F = ½λ(t)(x − v t)²; λ(t)·η/2 ramps 0.9 → 1.03 over n_up steps, then drops."""
    critical = 2.0 / eta
    one = np.concatenate(
        [np.linspace(0.9, 1.03, n_up, endpoint=False), np.linspace(1.03, 0.9, 200, endpoint=False)]
    )
    lam = np.tile(one, cycles) * critical
    kicks = np.random.default_rng(seed).normal(0.0, 1e-12, lam.size)
    speed = 1e-3
    deviation = np.empty(lam.size)
    e = 0.0
    for t in range(lam.size):
        deviation[t] = e
        e = e - eta * lam[t] * e - speed + kicks[t]
    loss = 0.5 * lam * deviation**2
    return lam, loss


def regression_runs(etas, n_up: int = 10_000, noise: float = 1e-9, seed: int = 0):
    """GD on F = Γ(t)·mean ½(w²x + b − y)², Γ(t) ramping λ_max·η/2 through 0.9 → 1.04 → 0.9."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-0.5, 1.5, 16)
    y = 1.5 * x + 0.3 + 0.1 * rng.normal(size=x.size)
    mxx, mx, mxy, my, myy = (x * x).mean(), x.mean(), (x * y).mean(), y.mean(), (y * y).mean()
    a_star, b_star = np.linalg.solve([[mxx, mx], [mx, 1.0]], [mxy, my])

    def hessian_eigenvalues(w, b):
        grad_a = w * w * mxx + b * mx - mxy
        hww, hwb, hbb = 2 * grad_a + 4 * w * w * mxx, 2 * w * mx, 1.0
        mean, det = (hww + hbb) / 2, hww * hbb - hwb**2
        root = np.sqrt(np.maximum(mean**2 - det, 0.0))
        return mean + root, mean - root

    lam0 = hessian_eigenvalues(np.sqrt(a_star), b_star)[0]
    etas = np.asarray(etas, dtype=float)
    ramp = np.concatenate(
        [np.linspace(0.9, 1.04, n_up, endpoint=False), np.linspace(1.04, 0.9, n_up)]
    )
    gamma = ramp[:, None] * (2.0 / etas)[None, :] / lam0
    w = np.full(etas.size, np.sqrt(a_star))
    b = np.full(etas.size, b_star)
    W, B = np.empty(gamma.shape), np.empty(gamma.shape)
    kicks = rng.normal(0.0, noise, (ramp.size, 2, 1))  # the same kicks for every η
    for t in range(ramp.size):
        W[t], B[t] = w, b
        a = w * w
        grad_a, grad_b = a * mxx + b * mx - mxy, a * mx + b - my
        step = gamma[t] * etas
        w, b = w - step * 2 * w * grad_a + kicks[t, 0], b - step * grad_b + kicks[t, 1]
    a = W * W
    static = 0.5 * (a * a * mxx + B * B + 2 * a * B * mx - 2 * a * mxy - 2 * B * my + myy)
    lam1, lam2 = hessian_eigenvalues(W, B)
    runs = []
    for k, eta in enumerate(etas):
        runs.append(
            make_run(
                gamma[:, k] * static[:, k],
                np.stack([gamma[:, k] * lam1[:, k], gamma[:, k] * lam2[:, k]], axis=1),
                learning_rate=eta,
                static_loss=static[:, k],
            )
        )
    return runs


def make_run(loss, eigenvalues=None, *, learning_rate=None, config=None, **extra):
    """A Dataset following the run-file conventions with the given per-step series."""
    n = len(loss)
    data = {"loss": ("step", np.asarray(loss, dtype=float))}
    coords = {"step": np.arange(n, dtype=np.int64)}
    if eigenvalues is not None:
        eigenvalues = np.asarray(eigenvalues, dtype=float)
        eigenvalues = eigenvalues.reshape(n, -1) if eigenvalues.ndim < 2 else eigenvalues
        data["hessian_eigenvalues"] = (("step", "eigen_index"), eigenvalues)
        coords["eigen_index"] = np.arange(1, eigenvalues.shape[1] + 1)
    if learning_rate is not None:
        data["learning_rate"] = ("step", np.full(n, float(learning_rate)))
    for name, values in extra.items():
        values = np.asarray(values)
        if values.ndim == 2:
            data[name] = (("step", "class"), values)
            coords["class"] = np.arange(values.shape[1])
        else:
            data[name] = ("step", values)
    attrs = {"config": json.dumps(config)} if config is not None else {}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def burst_loss(n: int, bursts, amplitude: float = 1e-2) -> np.ndarray:
    """A decreasing loss with growing step-to-step alternation inside each (start, stop)."""
    steps = np.arange(n)
    loss = 1.0 + 0.2 * np.exp(-steps / 500.0)
    for start, stop in bursts:
        inside = (steps >= start) & (steps < stop)
        growth = (steps[inside] - start + 1) / (stop - start)
        loss[inside] += amplitude * growth * (-1.0) ** steps[inside]
    return loss


@pytest.fixture(scope="module")
def logistic():
    return logistic_run()


@pytest.mark.parametrize("method", ["alternation", "branches"])
def test_logistic_cascade_onset_and_doublings(logistic, method):
    r, xs = logistic
    onsets = detect_onsets(make_run(xs), method=method)
    # The onset is the period-2 bifurcation at r = 3, seen at most 0.02 late. (Branch
    # counting may first catch a short noise-driven burst right after r = 3, then the cascade.)
    assert 1 <= onsets.sizes["onset"] <= 2
    r_onset = r[onsets.onset_step.values]
    assert np.all((r_onset >= 3.0) & (r_onset <= 3.02)), r_onset
    cascade = onsets.isel(onset=-1)
    assert int(cascade.end_step) >= xs.size - 2  # the last turning point needs ΔF(t + 1)
    assert int(cascade.branches) == 8
    for period, r_true in DOUBLINGS.items():
        step = int(cascade.doubling_step.sel(doubling=period))
        assert step >= 0
        assert r_true - 0.005 <= r[step] <= r_true + 0.02, (period, r[step])
    # Period 16 appears at r ≈ 3.5644, beyond the ramp's end (3.562).
    assert int(cascade.doubling_step.sel(doubling=16)) == -1


def test_branch_labels_count_two_then_four_then_eight(logistic):
    r, xs = logistic
    labels = branch_labels(xs)
    first = {p: r[np.flatnonzero(labels == p)[0]] for p in (2, 4, 8)}
    assert first[2] < first[4] < first[8]
    assert abs(first[4] - DOUBLINGS[4]) < 0.02
    assert abs(first[8] - DOUBLINGS[8]) < 0.02
    # Between the doublings the labels hold: period 2 at r ≈ 3.3, period 4 at r ≈ 3.5.
    assert labels[np.argmin(np.abs(r - 3.3))] == 2
    assert labels[np.argmin(np.abs(r - 3.5))] == 4
    assert labels[np.argmin(np.abs(r - 2.95))] == 1


def test_branch_labels_on_exact_periodic_sequences_with_trend():
    rng = np.random.default_rng(1)
    steps = np.arange(2000)
    for period in (2, 4, 8, 16):
        cycle = rng.uniform(0.0, 1.0, period)
        x = cycle[steps % period] + 1e-3 * steps  # a period-p orbit on a drifting loss
        labels = branch_labels(x, window=64)
        assert np.all(labels[100:-100] == period), period
    smooth = np.exp(-steps / 300.0)
    assert np.all(branch_labels(smooth)[50:-50] == 1)
    chaotic = np.empty(4000)
    chaotic[0] = 0.3
    for t in range(1, chaotic.size):
        chaotic[t] = 3.9 * chaotic[t - 1] * (1 - chaotic[t - 1])
    assert np.mean(branch_labels(chaotic)[100:-100] == 0) > 0.9


@pytest.mark.parametrize("eta", [0.1, 1.0, 3.0])
def test_quadratic_onset_at_edge_of_stability(eta):
    lam, loss = quadratic_run(eta)
    run = make_run(loss, lam, learning_rate=eta)
    for method in ("alternation", "branches"):
        onsets = detect_onsets(run, method=method)
        assert onsets.sizes["onset"] == 2, method
        ratio = onsets.lambda_at_onset.sel(eigen_index=1).values * eta / 2
        # Found at λ = 2/η, at most 2 % late (the alternation must grow from the 1e-12 kicks).
        assert np.all((ratio >= 1.0) & (ratio <= 1.02)), (method, ratio)
        result = threshold(onsets)
        assert abs(result.mean * eta / 2 - 1.0) < 0.02
        assert result.count == 2


@pytest.fixture(scope="module")
def regression():
    etas = (0.25, 1.0, 2.0)
    return etas, regression_runs(etas)


def test_regression_threshold_is_two_over_eta_for_every_method(regression):
    etas, runs = regression
    for eta, run in zip(etas, runs, strict=True):
        steps = {}
        for method in ("alternation", "branches", "lambda_jump"):
            onsets = detect_onsets(run, method=method)
            assert onsets.sizes["onset"] == 1, (eta, method)
            assert int(onsets.branches[0]) == 2
            steps[method] = int(onsets.onset_step[0])
            onset_ratio = float(onsets.lambda_at_onset.sel(eigen_index=1)[0]) * eta / 2
            both = threshold(onsets, at="both").mean * eta / 2
            if method == "lambda_jump":
                # The paper's recipe: λ_max at the marked steps themselves, which lie on one
                # of the two branches (up to 4 % apart at η = 2 here), so its average over
                # start and end is off by up to half that spread.
                lam = run.hessian_eigenvalues.sel(eigen_index=1)
                assert onset_ratio == float(lam[steps[method]]) * eta / 2
                assert abs(onset_ratio - 1.0) < 0.05, (eta, method, onset_ratio)
                assert abs(both - 1.0) < 0.05, (eta, method, both)
                continue
            assert 1.0 <= onset_ratio <= 1.025, (eta, method, onset_ratio)
            # The two-step mean (the centre of the branches) averaged over start and end
            # cancels most of the delay.
            assert abs(both - 1.0) < 0.01, (eta, method, both)
        # The three methods agree on the onset within 1.5 % of the 10,000-step ramp.
        assert max(steps.values()) - min(steps.values()) <= 150, steps


def test_lambda_jump_depends_on_eta_but_alternation_does_not(regression):
    _, runs = regression
    # The same dimensionless dynamics: alternation finds the same relative threshold for
    # every η; lambda_jump's fixed tolerance 0.1 is 1.25 % of λ at η = 0.25 and 10 % at η = 2.
    jump = [detect_onsets(run, method="lambda_jump") for run in runs]
    alt = [detect_onsets(run) for run in runs]
    alt_steps = [int(o.onset_step[0]) for o in alt]
    jump_steps = [int(o.onset_step[0]) for o in jump]
    assert max(alt_steps) - min(alt_steps) <= 2
    assert jump_steps[-1] - jump_steps[0] >= 40


def test_doubling_trigger_counts_eigenvalues_above_threshold(logistic):
    r, xs = logistic
    n = xs.size
    steps = np.arange(n)

    def crossing(r_value):
        return int(np.argmin(np.abs(r - r_value)))

    # λ_j rises slowly and crosses 2 at r = 2.99, 3.3 and 3.5: before the doublings to
    # period 2, 4 and 8 respectively (the supplement's λ_2, λ_3 picture).
    lam = np.stack([2.0 + 1e-6 * (steps - crossing(v)) for v in (2.99, 3.3, 3.5)], axis=1)
    onsets = detect_onsets(make_run(xs, lam))
    assert onsets.sizes["onset"] == 1
    assert onsets.doubling_trigger.sel(doubling=[2, 4, 8, 16]).values[0].tolist() == [1, 2, 3, -1]
    no_lambda = detect_onsets(make_run(xs))
    assert np.all(no_lambda.doubling_trigger.values == -1)
    assert np.all(np.isnan(no_lambda.lambda_at_onset.values))
    assert "eigen_index" not in no_lambda.lambda_at_onset.dims


def test_period_index_from_config_gamma_or_unknown():
    n, period = 1000, 100
    loss = burst_loss(n, [(250, 290), (730, 780), (850, 900)])
    onsets = detect_onsets(make_run(loss, config={"period": period, "amplitude": 5}))
    # A burst whose first kick opposes the loss's descent makes the step before it a turning
    # point already, so onsets fall on the burst's first step or the one before.
    assert np.all(np.abs(onsets.onset_step.values - [250, 730, 850]) <= 1)
    assert onsets.period_index.values.tolist() == [2, 7, 8]
    stopped = detect_onsets(make_run(loss, config={"period": period, "stop_after": 800}))
    assert stopped.period_index.values.tolist() == [2, 7, -1]
    # Triangle Γ for 3 classes, amplitude 5, oscillation stopped at step 800 (Γ ≡ 1 after).
    t = np.arange(n)
    phase = t % period
    g = np.where(phase <= period / 2, 1 + 8 * phase / period, 2 * 5 - 8 * phase / period - 1)
    raw = np.ones((n, 3))
    raw[t, (t // period) % 3] = g
    raw[t >= 800] = 1.0
    gamma = 3 * raw / raw.sum(axis=1, keepdims=True)
    from_gamma = detect_onsets(make_run(loss, gamma=gamma))
    assert from_gamma.period_index.values.tolist() == [2, 7, -1]
    unknown = detect_onsets(make_run(loss))
    assert unknown.period_index.values.tolist() == [-1, -1, -1]
    constant = detect_onsets(make_run(loss, config={"period": period, "schedule": "constant"}))
    assert constant.period_index.values.tolist() == [-1, -1, -1]


def test_period_index_with_a_fractional_period():
    # T = T0 / η is fractional: periods are floor(t / T) as in the schedule, not t // int(T).
    period = 100.5  # period 18 runs from step 1809 to 1909, period 19 from 1910
    loss = burst_loss(2100, [(1000, 1060), (1905, 1965)])
    onsets = detect_onsets(make_run(loss, config={"period": period, "amplitude": 70}))
    assert np.all(np.abs(onsets.onset_step.values - [1000, 1905]) <= 1)
    assert onsets.period_index.values.tolist() == [9, 18]


def test_period_index_from_a_square_gamma():
    # Square Γ is ≡ 1 over the last quarter of a period and the first quarter of the next.
    # Onsets in the last quarter of period 1 and the first quarter of period 4.
    n, period = 2000, 400
    loss = burst_loss(n, [(720, 780), (1640, 1700)])
    t = np.arange(n)
    phase = t % period
    raw = np.ones((n, 3))
    raw[t, (t // period) % 3] = np.where((phase >= 100) & (phase < 300), 5.0, 1.0)
    gamma = 3 * raw / raw.sum(axis=1, keepdims=True)
    onsets = detect_onsets(make_run(loss, gamma=gamma))
    assert np.all(np.abs(onsets.onset_step.values - [720, 1640]) <= 1)
    assert onsets.period_index.values.tolist() == [1, 4]


def test_gamma_periods_change_exactly_at_the_period_boundaries():
    # Square and triangle Γ with T = 400: the period of every step is floor(t / T).
    from analysis._onsets import _gamma_periods

    n, period = 2000, 400
    t = np.arange(n)
    phase = t % period
    for g in (
        np.where((phase >= 100) & (phase < 300), 5.0, 1.0),
        np.where(phase <= period / 2, 1 + 8 * phase / period, 9 - 8 * phase / period),
    ):
        raw = np.ones((n, 3))
        raw[t, (t // period) % 3] = g
        periods = _gamma_periods(3 * raw / raw.sum(1, keepdims=True))
        # (Steps after the last focused one read as stopped: square Γ's final quarter period.)
        np.testing.assert_array_equal(periods[:1900], t[:1900] // 400)


def test_chaotic_stretch_counts_as_aperiodic():
    # Period-2 alternation over steps 1000-1499, then the logistic map at r = 3.9 (chaos).
    n = 3000
    t = np.arange(n)
    loss = 1.0 + 0.1 * np.exp(-t / 2000)
    two = (t >= 1000) & (t < 1500)
    loss[two] += 0.01 * (-1.0) ** t[two]
    x, chaos = 0.3, []
    for _ in range(500):
        x = 3.9 * x * (1 - x)
        chaos.append(x)
    loss[1500:2000] += 0.02 * (np.array(chaos) - 0.5)
    onsets = detect_onsets(make_run(loss))
    length = onsets.end_step.values - onsets.onset_step.values + 1
    periodic, chaotic = onsets.branches.values == 2, onsets.branches.values == 0
    assert periodic.sum() == 1 and chaotic.sum() >= 1
    assert onsets.aperiodic_steps.values[periodic][0] < 0.1 * length[periodic][0]
    np.testing.assert_array_equal(onsets.aperiodic_steps.values[chaotic], length[chaotic])


def test_doubling_trigger_sees_both_branches_of_an_eigenvalue(logistic):
    # λ_2 alternates around λ_th once the orbit has period 2: at the doubling to period 4 it is
    # below λ_th on this step's branch and above on the previous one, so it counts (fmax).
    r, xs = logistic
    steps = np.arange(xs.size)
    lam1 = 2.0 + 1e-6 * (steps - int(np.argmin(np.abs(r - 2.99))))
    first = detect_onsets(make_run(xs, lam1[:, None]))
    s2, s4 = first.doubling_step.sel(doubling=[2, 4]).values[0]
    lam_th = float(first.lambda_at_onset[0, 0])
    lam2 = np.where(
        steps < (s2 + s4) // 2, lam_th - 1.0, lam_th + 0.05 * (-1.0) ** (steps - s4 + 1)
    )
    onsets = detect_onsets(make_run(xs, np.stack([lam1, lam2], axis=1)))
    assert lam2[s4] < lam_th < lam2[s4 - 1]
    assert onsets.doubling_trigger.sel(doubling=[2, 4]).values[0].tolist() == [1, 2]


@pytest.mark.parametrize("every", [1, 34, 100])
def test_lambda_jump_finds_jumps_at_any_tracking_interval(every):
    # λ alternates by 0.3 between tracked samples from step 1000 to 3000, flat elsewhere.
    n = 4000
    steps = np.arange(n)
    inside = (steps >= 1000) & (steps <= 3000)
    lam = np.where(inside, 2.0 + 0.3 * ((steps // every) % 2), 2.0)
    lam[steps % every != 0] = np.nan
    onsets = detect_onsets(make_run(np.ones(n), lam), method="lambda_jump")
    assert onsets.sizes["onset"] == 1
    # The first jump is at the first tracked sample on the upper branch.
    assert 1000 <= int(onsets.onset_step[0]) <= 1000 + 2 * every
    assert 3000 - 2 * every <= int(onsets.end_step[0]) <= 3000 + every


def test_eigen_indices_must_count_from_one():
    # A user's Dataset with 0-based eigen_index would otherwise read λ_2 as λ_max.
    run = make_run(burst_loss(1000, [(500, 600)]), np.ones((1000, 3)))
    with pytest.raises(ValueError, match=r"eigen_index must count from 1 .*got \[0, 1, 2\]"):
        detect_onsets(run.assign_coords(eigen_index=[0, 1, 2]))


def test_an_empty_run_has_no_onsets():
    for method in ("alternation", "branches", "lambda_jump"):
        onsets = detect_onsets(make_run(np.zeros(0), np.zeros((0, 2))), method=method)
        assert onsets.sizes["onset"] == 0


def test_alternation_onset_and_end_are_exact_on_clean_bursts():
    loss = burst_loss(2000, [(300, 400), (1200, 1500)])
    run = make_run(loss, learning_rate=0.5)
    onsets = detect_onsets(run)
    # Sign alternation appears once the alternating part beats the descent (within 2 steps
    # here); the last kick makes F(stop) a turning point.
    assert np.all(np.abs(onsets.onset_step.values - [300, 1200]) <= 2)
    assert np.all(np.abs(onsets.end_step.values - [399, 1499]) <= 2)
    assert onsets.learning_rate_at_onset.values.tolist() == [0.5, 0.5]
    assert onsets.branches.values.tolist() == [2, 2]
    branches = detect_onsets(run, method="branches")
    # Branch counting waits until the growing orbit is periodic to 5 % (within a window).
    assert np.all(np.abs(branches.onset_step.values - [300, 1200]) <= 32)
    # Accuracy flips between two quantised values inside the bursts (abruptly, at full size).
    steps = np.arange(2000)
    inside = ((steps >= 300) & (steps < 400)) | ((steps >= 1200) & (steps < 1500))
    accuracy = np.where(inside & (steps % 2 == 1), 0.9, 0.8) + 0.05 * (steps > 1800)
    by_accuracy = detect_onsets(make_run(loss, train_accuracy=accuracy), variable="train_accuracy")
    assert np.all(np.abs(by_accuracy.onset_step.values - [300, 1200]) <= 1)
    assert np.all(np.abs(by_accuracy.end_step.values - [399, 1499]) <= 1)


def test_decaying_transient_and_rounding_noise_are_not_onsets():
    steps = np.arange(3000)
    # Sign-flipping convergence: a mode with factor 1 − ηλ = −0.95 decaying after a kick.
    loss = 1.0 + 0.2 * np.exp(-steps / 2000.0) + 0.05 * (-0.95) ** steps
    run = make_run(loss)
    assert detect_onsets(run).sizes["onset"] == 0
    assert detect_onsets(run, method="branches").sizes["onset"] == 0
    assert detect_onsets(run, drop_decaying=False).sizes["onset"] == 1
    # A converged float32 loss whose last bits flicker.
    rng = np.random.default_rng(0)
    flat = np.float32(0.3) + rng.integers(-2, 3, 5000).astype(np.float32) * np.spacing(
        np.float32(0.3)
    )
    for method in ("alternation", "branches"):
        assert detect_onsets(make_run(flat.astype(np.float64)), method=method).sizes["onset"] == 0


def test_cascade_that_flares_up_and_dies_out_is_kept():
    # As at the end of a short period (T = 1000, A = 70 measured on the spiral): the
    # alternation grows hidden under the loss's rise, flares up, then fades as Γ returns to 1.
    steps = np.arange(1200)
    peak = 970
    envelope = np.where(
        steps < peak, 0.08 * np.exp(0.4 * (steps - peak)), 0.08 * np.exp(-0.06 * (steps - peak))
    )
    delta = 0.005 + envelope * (-1.0) ** steps
    loss = 1.0 + np.cumsum(delta)
    onsets = detect_onsets(make_run(loss))
    assert onsets.sizes["onset"] == 1
    assert abs(int(onsets.onset_step[0]) - 962) <= 8
    assert 990 <= int(onsets.end_step[0]) <= 1030


def test_result_layout_and_empty_result():
    loss = burst_loss(1500, [(500, 700)])
    lam = np.column_stack([np.linspace(1, 3, 1500), np.linspace(0.5, 1.0, 1500)])
    onsets = detect_onsets(make_run(loss, lam, config={"optimizer": "nesterov", "momentum": 0.8}))
    expected = {
        "onset_step",
        "end_step",
        "period_index",
        "lambda_at_onset",
        "lambda_at_end",
        "learning_rate_at_onset",
        "branches",
        "aperiodic_steps",
        "doubling_step",
        "doubling_trigger",
    }
    assert expected <= set(onsets.data_vars)
    assert onsets.attrs["optimizer"] == "nesterov" and onsets.attrs["momentum"] == 0.8
    assert onsets.lambda_at_onset.dims == ("onset", "eigen_index")
    assert onsets.eigen_index.values.tolist() == [1, 2]
    assert onsets.doubling.values.tolist() == [2, 4, 8, 16]
    # λ at a step is the mean over that step and the one before.
    start = int(onsets.onset_step[0])
    assert abs(start - 500) <= 2
    assert float(onsets.lambda_at_onset[0, 0]) == pytest.approx(
        np.mean(lam[start - 1 : start + 1, 0])
    )
    assert onsets.attrs["method"] == "alternation"
    assert onsets.attrs["optimizer"] == "nesterov"
    assert json.loads(onsets.attrs["parameters"])["window"] == 32
    empty = detect_onsets(make_run(np.exp(-np.arange(500) / 100.0), lam[:500]))
    assert empty.sizes["onset"] == 0
    assert expected <= set(empty.data_vars)
    assert empty.lambda_at_onset.shape == (0, 2)


def test_sparse_hessian_tracking_uses_last_tracked_value():
    loss = burst_loss(1000, [(500, 600)])
    lam = np.full((1000, 1), np.nan)
    lam[::25, 0] = np.arange(40, dtype=float)
    onsets = detect_onsets(make_run(loss, lam))

    def expected(step):  # the mean over steps step − 1 and step of the last tracked values
        return ((step - 1) // 25 + step // 25) / 2

    start, end = int(onsets.onset_step[0]), int(onsets.end_step[0])
    assert abs(start - 500) <= 2 and abs(end - 599) <= 2
    assert float(onsets.lambda_at_onset[0, 0]) == expected(start)
    assert float(onsets.lambda_at_end[0, 0]) == expected(end)


def test_lambda_far_from_any_sample_is_not_carried_to_an_onset():
    # λ known at steps 0 and 100 only (e.g. post hoc at two checkpoints): the interval is 100,
    # so an onset at ~1200 gets no λ, not the value from 1100 steps earlier.
    loss = burst_loss(2000, [(1200, 1300)])
    lam = np.full((2000, 1), np.nan)
    lam[[0, 100], 0] = [1.0, 2.0]
    onsets = detect_onsets(make_run(loss, lam))
    assert onsets.sizes["onset"] == 1 and np.isnan(onsets.lambda_at_onset[0, 0])
    lam[1150, 0] = 3.0  # a sample within one interval before the onset is used
    onsets = detect_onsets(make_run(loss, lam))
    assert float(onsets.lambda_at_onset[0, 0]) == 3.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "fft"}, "method must be one of"),
        ({"window": 0}, "window must be an integer >= 2"),
        ({"window": -5}, "window must be an integer >= 2"),
        ({"window": 2.5}, "window must be an integer >= 2"),
        ({"min_fraction": 0.0}, r"min_fraction must be in \(0, 1\]"),
        ({"min_fraction": 1.5}, r"min_fraction must be in \(0, 1\]"),
        ({"min_amplitude": -1e-3}, r"min_amplitude must be in \[0, 1\)"),
        ({"tolerance": 0.0}, "tolerance must be > 0"),
        ({"branch_tolerance": 1.0}, r"branch_tolerance must be in \(0, 1\)"),
        ({"max_period": 12}, "max_period must be a power of two"),
        ({"max_period": 1}, "max_period must be an integer >= 2"),
        ({"merge_gap": -1}, "merge_gap must be an integer >= 0"),
        ({"min_length": 0}, "min_length must be an integer >= 1"),
        ({"variable": "val_loss"}, "run has no 'val_loss' variable"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, message):
    run = make_run(burst_loss(300, [(100, 200)]), np.ones((300, 1)))
    with pytest.raises(ValueError, match=message):
        detect_onsets(run, **kwargs)


def test_bad_runs_are_rejected():
    with pytest.raises(TypeError, match=r"run must be an xarray.Dataset"):
        detect_onsets(np.ones(10))
    no_loss = xr.Dataset({"static_loss": ("step", np.ones(10))})
    with pytest.raises(ValueError, match="run has no 'loss' variable"):
        detect_onsets(no_loss)
    with pytest.raises(ValueError, match="method='lambda_jump' needs a 'hessian_eigenvalues'"):
        detect_onsets(make_run(np.ones(100)), method="lambda_jump")
    gaps = make_run(np.ones(100)).assign_coords(step=np.arange(0, 1000, 10))
    with pytest.raises(ValueError, match="one record per training step"):
        detect_onsets(gaps)
    two_d = xr.Dataset({"loss": (("step", "seed"), np.ones((10, 2)))})
    with pytest.raises(ValueError, match="'loss' must have exactly the dimension"):
        detect_onsets(two_d)
    bad_config = make_run(np.ones(100))
    bad_config.attrs["config"] = "{not json"
    with pytest.raises(ValueError, match=r"run.attrs\['config'\] must be a JSON object"):
        detect_onsets(bad_config)
    bad_eig = make_run(np.ones(100)).assign(hessian_eigenvalues=("step", np.ones(100)))
    with pytest.raises(ValueError, match="hessian_eigenvalues must have the dimensions"):
        detect_onsets(bad_eig)


def test_decaying_transient_kept_only_when_its_alternation_doubled_before_the_onset():
    # _drop_decaying's third condition: the alternating part |Δ²F| over the 4 steps before the
    # onset is >= 2x its mean over the half window before those (the instability grew into
    # the episode). Here 1.75x is a decaying transient (dropped), 2.5x is kept.
    from analysis._onsets import _drop_decaying, _Episodes

    start, end, window = 200, 400, 32
    episode = _Episodes(np.array([start]), np.array([end]))
    t = np.arange(600)

    def series(recent: float, earlier: float = 1e-3) -> np.ndarray:
        amplitude = np.where(t < start - 4, earlier, recent)
        amplitude = np.where(t >= start, 0.05 * 0.98 ** (t - start), amplitude)  # fades
        return 1.0 + np.where(t > end, 0.0, amplitude) * (-1.0) ** t

    for recent, ratio, kept in ((2e-3, 1.75, 0), (3e-3, 2.5, 1)):
        x = series(recent)
        alternating = np.abs(np.diff(x, n=2))  # alternating[i] is |Δ²F| at step i + 2
        growth = (
            alternating[start - 6 : start - 2].mean() / alternating[start - 22 : start - 6].mean()
        )
        assert growth == pytest.approx(ratio)
        assert _drop_decaying(x, episode, window).start.size == kept


@pytest.mark.parametrize(("length", "found"), [(7, False), (8, True)])
def test_a_doubling_counts_once_it_holds_a_quarter_window(monkeypatch, length, found):
    # Branch labels with a period-4 stretch of `length` steps inside a period-2 episode: with
    # window 32 a doubling must hold window // 4 = 8 steps to be reported.
    import analysis._onsets

    labels = np.ones(600, dtype=np.int64)
    labels[100:300] = 2
    labels[150 : 150 + length] = 4
    monkeypatch.setattr(analysis._onsets, "branch_labels", lambda x, **kwargs: labels)
    onsets = detect_onsets(
        make_run(np.ones(600)), method="branches", window=32, drop_decaying=False
    )
    assert onsets.sizes["onset"] == 1 and int(onsets.onset_step[0]) == 100
    doubling = onsets["doubling_step"].sel(doubling=4).values[0]
    assert doubling == (150 if found else -1)
    assert int(onsets.branches[0]) == (4 if found else 2)
