from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import tasks_for_tests
from detflow.artifact import read_dataset, write_dataset
from detflow.cli import DetflowError
from detflow.params import parse_params
from detflow.run import seed_runner
from detflow.trial import main, run_trial
from how_to import how_to_reference


def test_default_trial_is_bit_identical_to_the_how_to(project_params):
    trial = run_trial(parse_params(project_params))
    for seed in (0, 1):
        got = trial["out"].sel(torch_seed=seed).values
        assert got.dtype == np.float32
        assert got.tobytes() == how_to_reference(seed).tobytes()


def test_dims_follow_mushin_naming(project_params):
    trial = run_trial(parse_params(project_params))
    assert trial["out"].dims == ("torch_seed", "out_dim0")
    assert trial["torch_seed"].values.tolist() == [0, 1]
    assert trial["out_dim0"].values.tolist() == [0]
    assert "trial_id" not in trial.dims and "trial_id" not in trial.attrs


def test_scalar_seed_keeps_a_torch_seed_dim(project_params):
    project_params["torch_seed"] = 5
    trial = run_trial(parse_params(project_params))
    assert trial["out"].shape == (1, 1)
    assert trial["out"].values.tobytes() == how_to_reference(5).tobytes()


def test_pre_task_runs_before_the_module_is_built(project_params):
    project_params["pre_task"] = "tasks_for_tests.recording_seed"
    project_params["module"]["_target_"] = "tasks_for_tests.RecordingLinear"
    tasks_for_tests.CALLS.clear()
    run_trial(parse_params(project_params))
    assert tasks_for_tests.CALLS == ["pre_task 0", "instantiate", "pre_task 1", "instantiate"]


def test_without_pre_task_trials_differ(project_params):
    project_params["pre_task"] = None
    first = run_trial(parse_params(project_params))["out"].values
    second = run_trial(parse_params(project_params))["out"].values
    assert first.tobytes() != second.tobytes()


def test_extra_params_bind_by_name(project_params):
    project_params["task"] = "tasks_for_tests.needs_learning_rate"
    project_params["learning_rate"] = 2.0
    out = run_trial(parse_params(project_params))["out"].sel(torch_seed=0).values
    assert out.tobytes() == (how_to_reference(0) * np.float32(2.0)).tobytes()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["module"].update(_target_="torch.nn.Lineer"),
            "module._target_ 'torch.nn.Lineer' does not import: module 'torch.nn' has no 'Lineer'",
        ),
        (
            lambda p: p["module"].update(_target_="nowhere.Linear"),
            "module._target_ 'nowhere.Linear' does not import",
        ),
        (
            lambda p: p["module"].update(bias_init=1.0),
            "module.bias_init is not an argument of torch.nn.Linear",
        ),
        (lambda p: p["data"].update(stop=3), "data: cannot instantiate torch.arange"),
        (
            lambda p: p["module"].update(_target_=None),
            "module._target_ None is not a dotted import path",
        ),
        (
            lambda p: p.update(task="detflow.tasks.nothing_here"),
            "task 'detflow.tasks.nothing_here' does not import",
        ),
        (
            lambda p: p.update(pre_task="detflow.nowhere.seed"),
            "pre_task 'detflow.nowhere.seed' does not import",
        ),
        (lambda p: p.update(task="detflow.params.TORCH_SEED_MAX"), "is not callable"),
        (
            lambda p: p.update(task="tasks_for_tests.needs_learning_rate"),
            "needs 'learning_rate', which params.yaml does not define",
        ),
        (
            lambda p: p.update(task="tasks_for_tests.returns_list"),
            "returned list, not a dict of arrays",
        ),
        (
            lambda p: p.update(task="tasks_for_tests.returns_text"),
            "returned 'out' as str of dtype <U12, which cannot be stored",
        ),
        (
            lambda p: p.update(task="tasks_for_tests.returns_object"),
            "returned 'out' as object of dtype object, which cannot be stored",
        ),
        (lambda p: p.update(task="tasks_for_tests.returns_bad_key"), "returned the key 'trial_id'"),
        (
            lambda p: p.update(task="tasks_for_tests.raises_on_seed_one"),
            "failed on torch_seed 1: ValueError: boom",
        ),
        (
            lambda p: p.update(task="tasks_for_tests.grows_with_seed"),
            r"returned 'out' as float32\[2\] for torch_seed 1 but float32\[1\]",
        ),
    ],
)
def test_bad_configs_and_tasks_fail_with_one_clear_line(project_params, edit, message):
    edit(project_params)
    with pytest.raises(DetflowError, match=message.replace("(", r"\(")) as caught:
        run_trial(parse_params(project_params))
    assert "\n" not in str(caught.value)


def test_every_storable_dtype_round_trips(project_params, tmp_path):
    project_params["task"] = "tasks_for_tests.mixed_dtypes"
    trial = run_trial(parse_params(project_params))
    assert {name: str(v.dtype) for name, v in trial.data_vars.items()} == {
        "half": "float16",
        "double": "float64",
        "count": "int64",
        "flag": "bool",
    }
    path = tmp_path / "t.nc"
    write_dataset(trial, path)
    xr.testing.assert_identical(read_dataset(path), trial)


def test_trial_file_reads_back_identical(project_params, write_params, tmp_path):
    """The stage writes with netCDF4 alone; xarray must read back exactly what was computed."""
    project_params["task"] = "tasks_for_tests.mixed_dtypes"
    out = tmp_path / "a.nc"
    main(["--params", str(write_params(project_params)), "--out", str(out)])
    written = read_dataset(out)
    # The stage adds what made the numbers: the params bound, and the code that ran; and the
    # environment it ran in, which a trial run in a script does not record.
    assert written.attrs["bound_params"] == "device,portable,pre_task,task,torch_seed"
    assert written.attrs["code_digest"].startswith("sha256:")
    assert json.loads(written.attrs.pop("environment"))["cpu_model"]
    xr.testing.assert_identical(written, run_trial(parse_params(project_params)))


def test_failed_trial_keeps_the_previous_artifact(project_params, write_params, tmp_path):
    out = tmp_path / "trials" / "a.nc"
    assert main(["--params", str(write_params(project_params)), "--out", str(out)]) == 0
    good = out.read_bytes()
    project_params["task"] = "tasks_for_tests.raises_on_seed_one"
    with pytest.raises(DetflowError, match="torch_seed 1"):
        main(["--params", str(write_params(project_params)), "--out", str(out)])
    assert out.read_bytes() == good
    assert [p.name for p in out.parent.iterdir()] == ["a.nc"]


def test_equal_trials_write_identical_bytes(project_params, write_params, tmp_path):
    params = str(write_params(project_params))
    main(["--params", params, "--out", str(tmp_path / "a.nc")])
    main(["--params", params, "--out", str(tmp_path / "b.nc")])
    assert (tmp_path / "a.nc").read_bytes() == (tmp_path / "b.nc").read_bytes()


def test_nested_configs_are_built_after_the_pre_task_for_every_seed(project_params):
    project_params["module"] = {
        "_target_": "torch.nn.Sequential",
        "_args_": [{"_target_": "torch.nn.Linear", "in_features": 10, "out_features": 1}],
    }
    trial = run_trial(parse_params(project_params))
    for seed in (0, 1):
        got = trial["out"].sel(torch_seed=seed).values
        assert got.tobytes() == how_to_reference(seed).tobytes()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("epochs", 0, "train.epochs 0 is out of range: use a value at least 1"),
        ("epochs", 2.5, "train.epochs 2.5 is not an int"),
        ("lr", 0.0, "train.lr 0.0 is out of range: use a value above 0.0"),
        ("lr", "fast", "train.lr 'fast' is not a number"),
        ("num_workers", -1, "train.num_workers -1 is out of range"),
        ("batch_size", True, "train.batch_size True is not an int"),
        ("momentum", 0.9, "train.momentum is not an option of detflow.tasks.train: use epochs"),
    ],
)
def test_the_training_task_checks_its_own_options(project_params, option, value, message):
    project_params["task"] = "detflow.tasks.train"
    project_params["train"][option] = value
    with pytest.raises(DetflowError, match=message) as caught:
        seed_runner(parse_params(project_params))  # before any seed runs
    assert "\n" not in str(caught.value)


def test_a_missing_training_option_is_named(project_params):
    project_params["task"] = "detflow.tasks.train"
    del project_params["train"]["lr"]
    with pytest.raises(DetflowError, match="train has no 'lr': add it"):
        seed_runner(parse_params(project_params))


def test_other_tasks_ignore_the_training_options(project_params):
    project_params["train"] = "not options at all"  # forward takes no `train`
    assert run_trial(parse_params(project_params))["out"].shape == (2, 1)


def test_dotted_paths_resolve_as_hydra_resolves_them(project_params):
    project_params["task"] = "tasks_for_tests.Tasks.forward"  # module.Class.method
    out = run_trial(parse_params(project_params))["out"]
    assert out.sel(torch_seed=1).values.tobytes() == how_to_reference(1).tobytes()


def test_long_stages_show_seeds_done_rate_and_eta(
    project_params, write_params, monkeypatch, capsys
):
    import detflow.executor

    monkeypatch.setattr(detflow.executor, "PROGRESS_DELAY_S", 0.0)  # as if the stage were long
    project_params["torch_seed"] = "0..2"
    main(["--params", str(write_params(project_params)), "--out", "a.nc"])
    shown = capsys.readouterr().err
    assert "a seeds: 100%" in shown and "3/3" in shown and "seed/s" in shown


def test_short_stages_show_no_progress(project_params, write_params, capsys):
    main(["--params", str(write_params(project_params)), "--out", "a.nc"])
    assert "seeds:" not in capsys.readouterr().err
