"""TrainConfig defaults, serialisation and validation."""

import pytest

from training import TrainConfig


def test_defaults_are_the_2021_spiral_run():
    c = TrainConfig()
    assert (c.dataset, c.model, c.hidden_widths, c.loss, c.schedule) == (
        "spiral",
        "mlp",
        (100,),
        "dce",
        "triangle",
    )
    assert (c.amplitude, c.period, c.stop_after, c.optimizer) == (10.0, 200.0, None, "gd")
    assert (c.learning_rate, c.momentum, c.steps, c.batch_size, c.seed) == (
        1.0,
        0.9,
        35000,
        None,
        0,
    )
    assert (c.dtype, c.checkpoint_every, c.eval_every, c.output) == ("float32", 1000, 100, None)
    assert c.init == "lecun"


def test_round_trips(tmp_path):
    c = TrainConfig(hidden_widths=[10, 20], loss="dmse2", stop_after=500, output=tmp_path / "r.nc")
    assert c.hidden_widths == (10, 20) and isinstance(c.output, str)
    assert TrainConfig.from_json(c.to_json()) == c
    path = tmp_path / "c.toml"
    path.write_text(c.to_toml())
    assert TrainConfig.from_toml(path) == c
    assert TrainConfig.from_toml('loss = "ce"\nsteps = 10\n') == TrainConfig(loss="ce", steps=10)


def test_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().steps = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"amplitude": 0.5}, r"amplitude must be >= 1 \(got 0.5\); amplitude 1 is the static"),
        ({"period": 0}, "period must be > 0 steps"),
        ({"loss": "hinge"}, r"loss must be one of \('ce', 'mse', 'dce', 'dmse1', 'dmse2'\)"),
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"learning_rate": -1.0}, "learning_rate must be > 0"),
        ({"hidden_widths": (0,)}, "hidden_widths must be a non-empty list of integers >= 1"),
        ({"hidden_widths": ()}, "hidden_widths must be a non-empty list"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"batch_size": 301}, "batch_size must be <= the 300 training samples"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"optimizer": "adam"}, "optimizer must be one of"),
        ({"schedule": "saw"}, "schedule must be one of"),
        ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1"),
        ({"amplitude": "big"}, "amplitude must be a number"),
        ({"hessian_top_k": 3, "hessian_tol": 0.0}, r"hessian_tol must be in \(0, 1\) or None"),
        ({"hessian_top_k": 3, "hessian_tol": 1.0}, r"hessian_tol must be in \(0, 1\) or None"),
        ({"hessian_tol": 1e-2}, "hessian_tol needs hessian_top_k >= 1"),
    ],
)
def test_bad_input(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_unknown_field():
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['widths'\]"):
        TrainConfig.from_dict({"widths": [10]})
