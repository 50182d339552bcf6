"""TrainConfig defaults, serialisation and validation."""

import json

import numpy as np
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
        ({"noise": float("inf")}, r"noise must be a finite number >= 0 \(got inf\)"),
        ({"noise": float("nan")}, r"noise must be a finite number >= 0 \(got nan\)"),
        ({"w_std": float("inf")}, r"w_std must be a finite number > 0 \(got inf\)"),
        ({"b_std": float("inf")}, r"b_std must be a finite number >= 0 or None \(got inf\)"),
        ({"b_std": "0.1"}, r"b_std must be a number or None \(got '0.1'\)"),
        ({"hessian_top_k": 3, "hessian_tol": "x"}, r"hessian_tol must be a number or None"),
        ({"seed": 1.5}, r"seed must be an integer >= 0 \(got 1.5\)"),
        ({"seed": np.int64(-1)}, r"seed must be an integer >= 0 \(got -1\)"),
        ({"seed": 2**63}, r"seed must be <= 9223372036854775807 \(JAX's random keys take 64"),
        ({"steps": 2**31}, r"steps must be <= 2147483647 \(the step counter is a 32-bit"),
        ({"amplitude": 1e39}, r"amplitude = 1e\+39 is outside float32's range .*float64"),
        ({"period": 1e-300}, r"period = 1e-300 is outside float32's range"),
        ({"amplitude": True}, r"amplitude must be a number \(got True\)"),
        ({"hidden_widths": 3.0}, r"hidden_widths must be a non-empty list of integers >= 1"),
        ({"eval_every": 0}, r"eval_every must be an integer >= 1 \(got 0\)"),
        ({"chunk_steps": 0}, r"chunk_steps must be an integer >= 1 \(got 0\)"),
        ({"track_every": 0}, r"track_every must be an integer >= 1 \(got 0\)"),
        ({"momentum": -0.1}, r"momentum must be in \[0, 1\)"),
        ({"stop_after": -1}, r"stop_after must be an integer >= 0 or None \(got -1\)"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1 or None \(got 0\)"),
        ({"ntk_top_k": 180}, r"ntk_top_k must be < N·C/5 = 180"),
    ],
)
def test_bad_input(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_boundary_values_are_accepted():
    # the edges of each valid range: full batch as a batch size, momentum 0, stop at step 0
    c = TrainConfig(batch_size=300, momentum=0.0, stop_after=0, eval_every=1, ntk_top_k=179)
    assert (c.batch_size, c.momentum, c.stop_after, c.ntk_top_k) == (300, 0.0, 0, 179)
    assert TrainConfig(amplitude=1.0, learning_rate=1e-9, hidden_widths=(1,)).amplitude == 1.0


def test_unknown_field():
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['widths'\]"):
        TrainConfig.from_dict({"widths": [10]})


def test_numpy_scalars_are_accepted_as_python_numbers():
    c = TrainConfig(
        seed=np.int64(3),
        steps=np.int32(10),
        stop_after=np.int64(5),
        hidden_widths=np.array([4, 6]),
        amplitude=np.float32(2),
        b_std=np.float64(0.5),
        hessian_top_k=np.int64(2),
        hessian_tol=np.float32(0.5),
        projection=np.bool_(True),
    )
    assert (c.seed, c.steps, c.stop_after, c.hidden_widths) == (3, 10, 5, (4, 6))
    assert (c.amplitude, c.b_std, c.hessian_tol, c.projection) == (2.0, 0.5, 0.5, True)
    assert type(c.seed) is int and type(c.hidden_widths[0]) is int
    assert type(c.amplitude) is float and type(c.projection) is bool
    assert TrainConfig.from_json(c.to_json()) == c  # JSON and TOML take Python numbers only
    assert TrainConfig.from_toml(c.to_toml()) == c
    assert json.loads(c.to_json())["seed"] == 3
    assert TrainConfig.from_dict({"hidden_widths": np.int64(7)}).hidden_widths == (7,)


def test_toml_paths_with_an_equals_sign_are_files(tmp_path):
    path = tmp_path / "lr=0.5.toml"  # a sweep's file name
    path.write_text("learning_rate = 0.5\nsteps = 10\n")
    expected = TrainConfig(learning_rate=0.5, steps=10)
    assert TrainConfig.from_toml(path) == expected
    assert TrainConfig.from_toml(str(path)) == expected
    assert TrainConfig.from_toml("steps = 10") == TrainConfig(steps=10)  # one line of text
    with pytest.raises(FileNotFoundError, match=r"TOML config file '.*missing.toml' does not"):
        TrainConfig.from_toml(str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError):
        TrainConfig.from_toml(tmp_path / "missing=1.toml")
    with pytest.raises(ValueError, match="the TOML config text is not valid TOML"):
        TrainConfig.from_toml("steps = 10\nnot toml\n")


def test_zero_dimensional_arrays_are_numbers():
    import jax.numpy as jnp

    config = TrainConfig(b_std=np.array(0.1), learning_rate=jnp.float32(0.5))
    assert config.b_std == 0.1 and config.learning_rate == 0.5
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="b_std must be a number or None"):
        TrainConfig(b_std=np.array([0.1]))
