"""Batched runs (training._batched): equal to single runs, divergence per run, bad inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

from training import TrainConfig, open_run, train
from training._batched import shape_key, train_batch

BASE = TrainConfig(
    hidden_widths=(8,),
    steps=120,
    checkpoint_every=50,
    eval_every=20,
    chunk_steps=70,
    amplitude=5.0,
    period=30.0,
)
VARIED = [
    dict(seed=0),
    dict(seed=1, amplitude=10.0, period=40.0, stop_after=80),
    dict(seed=2, amplitude=1.0, learning_rate=0.5),
]


@pytest.mark.parametrize("lanes", [1, 2])
def test_batched_equals_single_float64(tmp_path, lanes):
    configs = [BASE.replace(dtype="float64", **v) for v in VARIED]
    paths = [tmp_path / f"run{i}.nc" for i in range(len(configs))]
    result = train_batch(configs, summary_every=20, run_files=paths, lanes=lanes)
    for config, path, i in zip(configs, paths, range(3), strict=True):
        ref = train(config)
        got = open_run(path)
        assert got.attrs["status"] == "complete"
        assert set(ref.data_vars) == set(got.data_vars)
        rel = np.abs(got["loss"].values - ref["loss"].values) / np.abs(ref["loss"].values)
        assert rel.max() <= 1e-12
        np.testing.assert_allclose(got["params"].values, ref["params"].values, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got["checkpoint_step"].values, ref["checkpoint_step"])
        # summaries are the run's own records at the summary steps
        kept = ref["loss"].sel(step=result.summary_steps).values
        np.testing.assert_allclose(result.summaries["loss"][i], kept, rtol=1e-12)
        val = ref["val_accuracy"].sel(step=result.summary_steps).values
        np.testing.assert_allclose(result.summaries["val_accuracy"][i], val, rtol=1e-12)
    assert not result.diverged.any()
    assert (result.diverged_at_step == -1).all()


def test_batched_float32_matches_single_and_momentum():
    configs = [
        BASE.replace(optimizer="momentum", momentum=m, seed=s) for m, s in ((0.5, 0), (0.9, 1))
    ]
    result = train_batch(configs, summary_every=20, lanes=2)
    for i, config in enumerate(configs):
        ref = train(config)
        assert ref["loss"].dtype == np.float32
        assert result.summaries["loss"].dtype == np.float32
        kept = ref["loss"].sel(step=result.summary_steps).values
        # float32, vmapped: reassociation only; measured ≤ 1e-6 relative over 120 steps
        np.testing.assert_allclose(result.summaries["loss"][i], kept, rtol=1e-5)


def test_final_metrics_are_those_of_the_final_parameters():
    from training import restore

    config = BASE.replace(dtype="float64", stop_after=90)
    result = train_batch([config], summary_every=20)
    run = train(config)
    restored = restore(run, config.steps)
    assert result.final["final_static_loss"][0] == pytest.approx(
        float(restored.static_loss_fn(restored.params)), rel=1e-12
    )
    # Γ ≡ 1 after stop_after: the final dynamical loss is the static one
    assert result.final["final_loss"][0] == pytest.approx(result.final["final_static_loss"][0])
    assert 0 <= result.final["final_val_accuracy"][0] <= 1


def test_final_metrics_equal_those_of_the_written_final_parameters(tmp_path):
    # final_* are the metrics of the parameters after the last update (the run file's last
    # checkpoint, step = steps), with Γ of step `steps`: T = 35 puts step 120 mid-period, so
    # Γ(120) ≠ 1 ≠ Γ(119); the second run has stopped oscillating (Γ ≡ 1).
    from schedules import cross_entropy
    from training import restore

    configs = [
        BASE.replace(dtype="float64", period=35.0),
        BASE.replace(dtype="float64", seed=1, stop_after=90),
    ]
    paths = [tmp_path / "a.nc", tmp_path / "b.nc"]
    result = train_batch(configs, summary_every=20, run_files=paths)
    for i, path in enumerate(paths):
        r = restore(path, BASE.steps)
        assert r.config.stop_after is not None or not np.allclose(r.gamma, 1.0)
        out = np.asarray(r.model.apply(r.params, r.data.x_train))
        out_val = np.asarray(r.model.apply(r.params, r.data.x_val))
        expected = {
            "final_loss": r.loss_fn(r.params),
            "final_static_loss": r.static_loss_fn(r.params),
            "final_train_accuracy": np.mean(np.argmax(out, -1) == r.data.y_train),
            "final_val_loss": cross_entropy(jnp.asarray(out_val), jnp.asarray(r.data.y_val)),
            "final_val_accuracy": np.mean(np.argmax(out_val, -1) == r.data.y_val),
        }
        for name, value in expected.items():  # accuracies k/N exact in float64
            np.testing.assert_allclose(
                result.final[name][i], float(value), rtol=1e-12, err_msg=name
            )


def test_divergence_is_flagged_per_run(tmp_path):
    good = BASE.replace(seed=0, loss="dmse1", learning_rate=0.5)
    bad = BASE.replace(seed=1, loss="dmse1", learning_rate=50.0)
    paths = [tmp_path / "good.nc", tmp_path / "bad.nc"]
    # chunks of 4 steps: the divergence (step 11) falls in a later chunk than the first
    result = train_batch([good, bad], summary_every=20, run_files=paths, lanes=2, chunk_steps=4)
    assert result.diverged.tolist() == [False, True]
    at = int(result.diverged_at_step[1])
    assert 4 <= at < BASE.steps
    assert np.isfinite(result.final["final_val_accuracy"][0])
    assert np.isnan(result.final["final_val_accuracy"][1])
    later = result.summary_steps > at
    assert np.isnan(result.summaries["loss"][1][later]).all()
    assert np.isfinite(result.summaries["loss"][0]).all()
    ref = train(bad)
    assert ref.attrs["status"] == "diverged"
    assert int(ref.attrs["diverged_at_step"]) == at
    got = open_run(paths[1])
    assert got.attrs["status"] == "diverged"
    assert int(got.attrs["diverged_at_step"]) == at
    assert got.sizes["step"] == at + 1
    assert open_run(paths[0]).attrs["status"] == "complete"


def test_shape_key_groups_only_batchable_fields():
    assert shape_key(BASE.replace(seed=3, amplitude=7.0)) == shape_key(BASE)
    assert shape_key(BASE.replace(hidden_widths=(9,))) != shape_key(BASE)


@pytest.mark.parametrize(
    ("configs", "kwargs", "message"),
    [
        ([], {}, "configs must hold at least one TrainConfig"),
        (
            [BASE, BASE.replace(loss="ce")],
            {},
            r"configs\[1\] differs from configs\[0\] in \['loss'\]",
        ),
        ([BASE.replace(hessian_top_k=1)], {}, "batched runs do not track curvature"),
        ([BASE], {"summary_every": 0}, "summary_every must be an integer >= 1"),
        ([BASE], {"summary_every": 30}, "summary_every must be a multiple of eval_every=20"),
        ([BASE], {"lanes": 0}, "lanes must be an integer >= 1"),
        ([BASE], {"lanes": True}, r"lanes must be an integer >= 1 \(got True\)"),
        ([BASE], {"summary_every": True}, r"summary_every must be an integer >= 1 \(got True"),
        ([BASE], {"chunk_steps": 0}, "chunk_steps must be an integer >= 1"),
        ([BASE], {"run_files": ["a.nc", "b.nc"]}, "run_files must hold one path per config"),
    ],
)
def test_bad_inputs(configs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_batch(configs, **kwargs)


def test_non_config_is_refused():
    with pytest.raises(TypeError, match="configs must be TrainConfig instances"):
        train_batch([{"seed": 0}])


def _stamp(path):
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def test_existing_run_files_are_refused_unless_overwrite(tmp_path):
    """train()'s policy: an existing file is never replaced silently; every target is checked
    before any file is created."""
    import xarray as xr

    first, second = BASE.replace(seed=0), BASE.replace(seed=1)
    old, new = tmp_path / "old.nc", tmp_path / "new.nc"
    train_batch([first], summary_every=20, run_files=[old])
    stamp = _stamp(old)
    sibling = tmp_path / "old.hessian.nc"
    with open_run(old) as run:
        config = run.attrs["config"]
    xr.Dataset(
        {"x": ("step", [1.0])}, coords={"step": [0]}, attrs={"source_config": config}
    ).to_netcdf(sibling)
    with pytest.raises(FileExistsError, match=r"old\.nc' already exists.*overwrite=True"):
        train_batch([second, first], summary_every=20, run_files=[new, old])
    assert not new.exists()  # checked before any writer was created
    assert _stamp(old) == stamp and sibling.exists()
    with pytest.raises(FileExistsError, match="already exists"):
        train(BASE.replace(output=str(old)))  # the policy train_batch follows
    result = train_batch([second, first], summary_every=20, run_files=[new, None], overwrite=True)
    with open_run(new) as run:
        assert run.attrs["status"] == "complete"
    assert _stamp(old) == stamp  # None: no file for that run
    assert result.final["final_loss"].shape == (2,)
    train_batch([second], summary_every=20, run_files=[old], overwrite=True)
    with open_run(old, siblings=False) as replaced:
        assert replaced.attrs["status"] == "complete"
        assert TrainConfig.from_json(replaced.attrs["config"]).seed == 1
    assert not sibling.exists()  # the old run's post-hoc results went with it, as in train()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"run_files": ["a.nc", "./a.nc"]}, ValueError, r"run_files\[0\] and run_files\[1\]"),
        ({"run_files": ["a.nc", None], "overwrite": "yes"}, ValueError, "overwrite must be"),
        ({"overwrite": 1}, ValueError, "overwrite must be True or False"),
        ({"run_files": "a.nc"}, ValueError, "run_files must be a list of paths"),
    ],
)
def test_bad_run_files(tmp_path, monkeypatch, kwargs, error, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        train_batch([BASE, BASE.replace(seed=1)], **kwargs)
    assert not list(tmp_path.iterdir())


def test_run_file_that_is_a_directory(tmp_path):
    (tmp_path / "d.nc").mkdir()
    with pytest.raises(IsADirectoryError, match=r"run_files\[1\] .*d\.nc' is a directory"):
        train_batch([BASE, BASE.replace(seed=1)], run_files=[tmp_path / "a.nc", tmp_path / "d.nc"])
    assert not (tmp_path / "a.nc").exists()
