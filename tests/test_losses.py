"""Losses against hand-computed values; dynamical == static with unit weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from schedules import cross_entropy, dce, dmse1, dmse2, get_loss, is_dynamical, mse


@pytest.fixture
def batch(x64):
    outputs = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [1.0, 1.0, 1.0]])
    labels = jnp.array([0, 2, 1, 1])
    weights = jnp.array([2.5, 0.25, 0.25])
    return outputs, labels, weights


def _nll(o, y):
    o = np.asarray(o)
    return -(o[np.arange(len(y)), y] - np.log(np.exp(o).sum(-1)))


def test_cross_entropy_by_hand(batch):
    o, y, w = batch
    np.testing.assert_allclose(cross_entropy(o, y), _nll(o, y).mean(), rtol=1e-14)
    np.testing.assert_allclose(dce(o, y, w), (np.asarray(w)[y] * _nll(o, y)).mean(), rtol=1e-14)


def test_mse_by_hand(batch):
    o, y, w = batch
    e = np.eye(3)[np.asarray(y)]
    sq = (np.asarray(o) - e) ** 2
    np.testing.assert_allclose(mse(o, y), 0.5 * sq.sum(-1).mean(), rtol=1e-14)
    np.testing.assert_allclose(
        dmse1(o, y, w), 0.5 * (np.asarray(w)[y] * sq.sum(-1)).mean(), rtol=1e-14
    )
    np.testing.assert_allclose(
        dmse2(o, y, w), 0.5 * (sq * np.asarray(w)).sum(-1).mean(), rtol=1e-14
    )


@pytest.mark.parametrize(
    ("dynamical", "static"), [(dce, cross_entropy), (dmse1, mse), (dmse2, mse)]
)
def test_unit_weights_are_static_exactly(batch, dynamical, static):
    o, y, _ = batch
    assert dynamical(o, y, jnp.ones(3)) == static(o, y)
    assert dynamical(o, y) == static(o, y)


def _softmax(o):
    e = np.exp(o - o.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _hand_gradients(o, y, w):
    """dF/d outputs by hand (float64 NumPy), one (N, C) array per loss."""
    o, y, w = np.asarray(o), np.asarray(y), np.asarray(w)
    n = len(y)
    e = np.eye(o.shape[1])[y]
    return {
        "cross_entropy": (_softmax(o) - e) / n,  # d/do of -log softmax(o)_y
        "dce": w[y][:, None] * (_softmax(o) - e) / n,
        "mse": (o - e) / n,
        "dmse1": w[y][:, None] * (o - e) / n,
        "dmse2": w * (o - e) / n,
    }


@pytest.mark.parametrize("scale", [1.0, 50.0])  # 50: saturated softmax, still exact
@pytest.mark.parametrize("loss", [cross_entropy, dce, mse, dmse1, dmse2])
def test_gradients_equal_hand_gradients(batch, loss, scale):
    # jax.grad of each loss w.r.t. the outputs equals its closed form, in float64
    o, y, w = batch
    o = o * scale
    args = (o, y) if loss in (cross_entropy, mse) else (o, y, w)
    g = jax.grad(loss)(*args)
    assert g.dtype == jnp.float64
    expected = _hand_gradients(o, y, w)[loss.__name__]
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-15)


def test_float32_stays_float32():
    o = jnp.ones((4, 3), jnp.float32)
    y = jnp.array([0, 1, 2, 0])
    for loss in (dce, dmse1, dmse2):
        assert loss(o, y, np.ones(3, np.float64)).dtype == jnp.float32


def test_static_losses_refuse_weights(batch):
    o, y, w = batch
    with pytest.raises(ValueError, match="cross_entropy is a static loss and takes no weights"):
        cross_entropy(o, y, w)
    with pytest.raises(ValueError, match="use dmse1 or dmse2"):
        mse(o, y, w)


def test_shape_errors(batch):
    o, y, w = batch
    with pytest.raises(ValueError, match=r"weights must be the class factors Γ of shape \(C,\)"):
        dce(o, y, jnp.ones(4))
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\)"):
        dmse1(o, y[:2], w)
    with pytest.raises(ValueError, match=r"outputs must have shape \(N, C\)"):
        dmse2(o[0], y, w)


@pytest.mark.parametrize("loss", [cross_entropy, dce, mse, dmse1, dmse2])
@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 1, 3], r"labels must be integers in \[0, 3\) \(got values from 0 to 3\)"),
        ([0, 1, -1], r"labels must be integers in \[0, 3\) \(got values from -1 to 1\)"),
        ([0.0, 1.0, 2.0], r"labels must be integers in \[0, 3\) \(got dtype float"),
    ],
)
def test_labels_out_of_range_are_refused(loss, labels, message):
    # JAX's gathers would clamp or wrap them into a finite, wrong loss.
    with pytest.raises(ValueError, match=message):
        loss(jnp.ones((3, 3)), jnp.asarray(labels))


def test_lookup():
    assert get_loss("dmse2") is dmse2
    assert is_dynamical("dce") and not is_dynamical("mse")
    with pytest.raises(ValueError, match="loss must be one of"):
        get_loss("hinge")


@pytest.mark.parametrize("margin", [0.0, 10.0, 20.0])
def test_float32_cross_entropy_is_accurate_for_confident_predictions(x64, margin):
    # -log softmax(f)_y as softplus(logsumexp_{k != y}(f_k - f_y)): log_softmax lost float32
    # accuracy once predictions were confident (2e-5 relative error at a loss of 3.5e-5).
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    outputs = rng.standard_normal((200, 3)).astype(np.float32)
    outputs[np.arange(200), labels] += margin
    weights = np.array([0.5, 1.2, 1.3], np.float32)
    y = jnp.asarray(labels)
    for loss, args in ((cross_entropy, ()), (dce, (weights,))):
        exact = loss(jnp.asarray(outputs, jnp.float64), y, *args)
        exact_grad = np.asarray(jax.grad(loss)(jnp.asarray(outputs, jnp.float64), y, *args))
        single = loss(jnp.asarray(outputs), y, *args)
        single_grad = np.asarray(jax.grad(loss)(jnp.asarray(outputs), y, *args), np.float64)
        assert single.dtype == jnp.float32
        np.testing.assert_allclose(float(single), float(exact), rtol=1e-6)
        grad_error = np.abs(single_grad - exact_grad).max() / np.abs(exact_grad).max()
        assert grad_error < 2e-6, (loss.__name__, margin, grad_error)
        # The float64 loss equals log1p of the other classes' weights (the textbook
        # log-sum-exp minus the label's logit cancels to 1e-8 relative error at margin 20).
        o = outputs.astype(np.float64)
        others = np.exp(o - o[np.arange(200), labels][:, None])
        others[np.arange(200), labels] = 0.0
        w = np.asarray(args[0], np.float64)[labels] if args else 1.0
        np.testing.assert_allclose(
            float(exact), np.mean(w * np.log1p(others.sum(axis=1))), rtol=1e-13
        )
