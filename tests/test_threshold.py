"""threshold: λ_th with spread, per run and per period, from onsets or from a run."""

import json

import numpy as np
import pytest
import xarray as xr

from analysis import Threshold, detect_onsets, threshold
from analysis._threshold import threshold_samples


def burst_run(bursts, lam, *, config=None, n=3000):
    """Alternating bursts (growing) on a decreasing loss, with given Hessian eigenvalues."""
    steps = np.arange(n)
    loss = 1.0 + 0.2 * np.exp(-steps / 500.0)
    for start, stop in bursts:
        inside = (steps >= start) & (steps < stop)
        loss[inside] += (
            1e-2 * (steps[inside] - start + 1) / (stop - start) * (-1.0) ** steps[inside]
        )
    lam = np.asarray(lam, dtype=float).reshape(n, -1)
    return xr.Dataset(
        {
            "loss": ("step", loss),
            "hessian_eigenvalues": (("step", "eigen_index"), lam),
        },
        coords={"step": steps, "eigen_index": np.arange(1, lam.shape[1] + 1)},
        attrs={"config": json.dumps(config)} if config else {},
    )


def test_threshold_is_mean_std_count_of_lambda_at_onsets():
    steps = np.arange(3000)
    lam = np.column_stack([steps / 100.0, steps / 200.0])  # λ_1 = step / 100
    run = burst_run([(501, 600), (1201, 1300), (2001, 2200)], lam, config={"period": 1000})
    onsets = detect_onsets(run)
    starts = onsets.onset_step.values
    assert np.all(np.abs(starts - [501, 1201, 2001]) <= 2)
    result = threshold(onsets)
    assert isinstance(result, Threshold)
    expected = (starts - 0.5) / 100.0  # mean of λ_1 over steps s − 1 and s
    assert result.count == 3
    assert result.mean == pytest.approx(expected.mean())
    assert result.std == pytest.approx(expected.std(ddof=1))
    np.testing.assert_allclose(result.values, expected)
    np.testing.assert_array_equal(result.steps, starts)
    # Per period (period 1000 from the config): periods 0, 1 and 2 hold one onset each.
    assert result.per_period.period.values.tolist() == [0, 1, 2]
    np.testing.assert_allclose(result.per_period["mean"].values, expected)
    assert result.per_period["count"].values.tolist() == [1, 1, 1]
    assert np.all(np.isnan(result.per_period["std"].values))
    # λ_2 instead of λ_1, and the end steps instead of the onsets.
    second = threshold(onsets, eigen_index=2)
    assert second.mean == pytest.approx(expected.mean() / 2)
    ends = onsets.end_step.values
    at_end = threshold(onsets, at="end")
    assert at_end.mean == pytest.approx(((ends - 0.5) / 100.0).mean())
    both = threshold(onsets, at="both")
    assert both.count == 6
    assert both.mean == pytest.approx((expected.sum() + ((ends - 0.5) / 100.0).sum()) / 6)
    # Each period holds its own onset and end, whatever the order of the samples.
    assert both.per_period["count"].values.tolist() == [2, 2, 2]
    np.testing.assert_allclose(
        both.per_period["mean"].values, (expected + (ends - 0.5) / 100.0) / 2
    )


def test_onsets_without_lambda_are_left_out():
    # λ tracked only up to step 1000: the second onset has no λ sample, so it is not counted
    # (a NaN would make the mean NaN).
    steps = np.arange(3000)
    lam = np.where(steps <= 1000, steps / 100.0, np.nan)
    run = burst_run([(501, 600), (2001, 2200)], lam, config={"period": 1000})
    onsets = detect_onsets(run)
    assert onsets.sizes["onset"] == 2 and np.isnan(float(onsets.lambda_at_onset[1, 0]))
    result = threshold(onsets)
    assert result.count == 1
    assert result.mean == pytest.approx((int(onsets.onset_step[0]) - 0.5) / 100.0)
    assert result.per_period.period.values.tolist() == [0]


def test_threshold_groups_several_onsets_of_one_period():
    steps = np.arange(3000)
    run = burst_run([(101, 200), (501, 600), (1601, 1700)], steps / 100.0, config={"period": 1000})
    result = threshold(run)  # detection runs first on a run
    assert result.per_period.period.values.tolist() == [0, 1]
    assert result.per_period["count"].values.tolist() == [2, 1]
    first_two = result.values[:2]
    assert float(result.per_period["mean"][0]) == pytest.approx(first_two.mean())
    assert float(result.per_period["std"][0]) == pytest.approx(first_two.std(ddof=1))


def test_lambda_jump_defaults_to_start_and_finish_average():
    n = 2000
    steps = np.arange(n)
    lam = 1.0 + steps / 1000.0
    inside = (steps >= 800) & (steps < 1000)
    lam[inside] += 0.2 * (-1.0) ** steps[inside]  # λ_max bounces between two branches
    run = burst_run([], lam, n=n)
    onsets = detect_onsets(run, method="lambda_jump")
    assert onsets.onset_step.values.tolist() == [800]
    assert onsets.end_step.values.tolist() == [1000]
    result = threshold(onsets)
    assert result.count == 2  # both marks, as in the 2021 paper
    # λ_max at the marks themselves, as in the paper (SCIENCE.md): λ(800) = λ(1000) = 2.0;
    # the two-step mean of the other methods would give (1.799 + 2.0) / 2 at both.
    np.testing.assert_allclose(result.values, [2.0, 2.0])
    assert result.mean == pytest.approx(2.0)


def test_samples_pair_each_lambda_with_the_learning_rate_of_its_own_step():
    # Under a learning-rate schedule the end of an instability can see another η than its
    # onset: each λ sample carries the η recorded at its own step.
    steps = np.arange(3000)
    run = burst_run([(501, 600), (2001, 2200)], steps / 100.0)
    run["learning_rate"] = ("step", 0.1 + steps / 1e4)
    onsets = detect_onsets(run)
    starts, ends = onsets.onset_step.values, onsets.end_step.values
    _, at_steps, eta = threshold_samples(onsets, at="both")
    np.testing.assert_array_equal(at_steps, np.concatenate([starts, ends]))
    np.testing.assert_allclose(eta, 0.1 + at_steps / 1e4)
    _, _, eta_end = threshold_samples(onsets, at="end")
    np.testing.assert_allclose(eta_end, 0.1 + ends / 1e4)
    # Onsets written before learning_rate_at_end existed fall back to the onset's η.
    old = onsets.drop_vars("learning_rate_at_end")
    np.testing.assert_allclose(threshold_samples(old, at="end")[2], 0.1 + starts / 1e4)


def test_no_onsets_gives_nan_threshold():
    run = burst_run([], np.ones(3000))
    result = threshold(run)
    assert result.count == 0
    assert np.isnan(result.mean) and np.isnan(result.std)
    assert result.per_period.sizes["period"] == 0


def test_bad_inputs_are_rejected():
    run = burst_run([(501, 600)], np.ones(3000))
    onsets = detect_onsets(run)
    with pytest.raises(ValueError, match="at must be one of"):
        threshold(onsets, at="middle")
    with pytest.raises(ValueError, match="eigen_index must be one of"):
        threshold(onsets, eigen_index=3)
    with pytest.raises(ValueError, match=r"detection options .* apply only when a run is given"):
        threshold(onsets, method="branches")
    with pytest.raises(TypeError, match=r"run_or_onsets must be an xarray.Dataset"):
        threshold([1.0, 2.0])
    without_lambda = detect_onsets(run.drop_vars("hessian_eigenvalues"))
    with pytest.raises(ValueError, match="the onsets carry no Hessian eigenvalues"):
        threshold(without_lambda)
