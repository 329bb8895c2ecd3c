"""Mappings are results: nested dicts and state_dicts are stored whole, bit for bit, and read
back as the task returned them; what cannot be stored stops the trial at the first seed that
shows it, and that seed's result is kept."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import tasks_for_tests
from detflow.artifact import as_tensors, read_nested, write_dataset
from detflow.cli import DetflowError
from detflow.outputs import SeedResultError, storable_outputs
from detflow.params import parse_params
from detflow.trial import main, run_trial


def state_dict_params(project_params):
    project_params["task"] = "tasks_for_tests.returns_state_dict"
    project_params["module"] = {"_target_": "torch.nn.Linear", "in_features": 10, "out_features": 3}
    return project_params


def reference(seed: int) -> dict:
    """What the task returns for ``seed``, computed here without detflow."""
    torch.manual_seed(seed)
    module = torch.nn.Linear(10, 3)
    return tasks_for_tests.returns_state_dict(module, torch.arange(10.0), seed)


def test_nested_names_join_keys_with_dots():
    state = OrderedDict([("layer1.0.weight", np.ones(2)), ("fc.bias", np.zeros(1))])
    outputs = storable_outputs("t", {"w": state, "out": 1.0})
    assert list(outputs) == ["w.layer1.0.weight", "w.fc.bias", "out"]
    assert outputs["w.layer1.0.weight"].key == ("w", "layer1.0.weight")
    assert outputs["out"].key == ()


def test_a_state_dict_goes_through_the_trial_file_bit_for_bit(project_params):
    trial = run_trial(parse_params(state_dict_params(project_params)))
    assert trial["weights.weight"].dims == (
        "torch_seed",
        "weights.weight_dim0",
        "weights.weight_dim1",
    )
    for seed in (0, 1):
        returned = reference(seed)
        back = read_nested(trial, torch_seed=seed)
        assert list(back) == ["loss", "weights", "stats"]
        assert list(back["weights"]) == list(returned["weights"])
        for name, tensor in returned["weights"].items():
            assert back["weights"][name].values.tobytes() == tensor.numpy().tobytes()
        assert back["stats"]["epoch"]["mean"].values.tolist() == [0.5, float(seed)]
        # What a user does with it: load it into a fresh module.
        module = torch.nn.Linear(10, 3)
        module.load_state_dict(as_tensors(back["weights"]))
        assert torch.equal(module.weight, returned["weights"]["weight"])


def test_a_spread_state_dict_keeps_its_dotted_keys(project_params):
    project_params["task"] = "tasks_for_tests.returns_spread_state_dict"
    trial = run_trial(parse_params(project_params))
    assert sorted(read_nested(trial, torch_seed=0)) == ["bias", "weight"]


def test_nested_results_survive_a_rewrite(project_params, tmp_path):
    trial = run_trial(parse_params(state_dict_params(project_params)))
    write_dataset(trial, tmp_path / "copy.nc")
    back = read_nested(tmp_path / "copy.nc", torch_seed=1)
    assert list(back["weights"]) == ["weight", "bias"]


def test_the_aggregate_stores_nested_results_bit_for_bit(
    project_params, workspace, run_aggregate, tmp_path
):
    result, metrics = run_aggregate(workspace(state_dict_params(project_params)))
    assert metrics["deterministic"] is True
    for seed in (0, 1):
        returned = reference(seed)["weights"]
        for trial_id in ("a", "b", "c"):
            stored = result["weights.weight"].sel(torch_seed=seed, trial_id=trial_id).values
            assert stored.tobytes() == returned["weight"].numpy().tobytes()
    assert {path.name for path in (tmp_path / "plots").iterdir()} == {
        "loss.csv",
        "weights.weight.csv",
        "weights.bias.csv",
        "stats.epoch.mean.csv",
    }
    assert "weights.weight" in metrics["mean"]


def test_the_result_reads_back_nested(project_params, workspace, run_aggregate):
    result, _ = run_aggregate(workspace(state_dict_params(project_params)))
    back = read_nested(result, torch_seed=0, trial_id="b")
    assert list(back["weights"]) == ["weight", "bias"]


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("returns_colliding_names", r"returned 'a\.b' twice, as keys \['a\.b'\] and \['a', 'b'\]"),
        ("returns_int_key", r"returned the key 0 inside 'weights': use string keys"),
    ],
)
def test_names_that_cannot_be_told_apart_are_refused(project_params, task, message):
    project_params["task"] = f"tasks_for_tests.{task}"
    with pytest.raises(DetflowError, match=message):
        run_trial(parse_params(project_params))


def test_an_unstorable_result_stops_at_the_first_seed_and_is_kept(
    project_params, write_params, tmp_path, capsys
):
    project_params["task"] = "tasks_for_tests.records_and_returns_object"
    project_params["torch_seed"] = [3, 4, 5]
    tasks_for_tests.CALLS.clear()
    out = tmp_path / "trials" / "a.nc"
    with pytest.raises(DetflowError) as raised:
        main(["--params", str(write_params(project_params)), "--out", str(out)])
    assert tasks_for_tests.CALLS == ["task 3"]  # no other seed ran
    kept = tmp_path / "trials" / "a.failed-seed3.pt"
    message = str(raised.value)
    assert "returned 'bad' as object" in message
    assert f"torch_seed 3's result is kept in {kept.relative_to(tmp_path)}" in message
    assert not out.exists()
    saved = torch.load(kept, weights_only=False)
    assert torch.equal(saved["out"], torch.full((2,), 3.0))


def test_a_seed_unlike_the_first_is_kept_too(project_params, write_params, tmp_path):
    project_params["task"] = "tasks_for_tests.keys_change_on_seed_one"
    tasks_for_tests.CALLS.clear()
    with pytest.raises(DetflowError, match="torch_seed 1's result is kept in"):
        main(["--params", str(write_params(project_params)), "--out", str(tmp_path / "a.nc")])
    saved = torch.load(tmp_path / "a.failed-seed1.pt", weights_only=False)
    assert saved["other"].tolist() == [1.0, 1.0]


# ---- the seed reaches any pre-task


def test_a_pre_task_that_takes_seed_receives_torch_seed(project_params):
    project_params.update(pre_task="tasks_for_tests.seeds_by_name", task="tasks_for_tests.draws")
    tasks_for_tests.CALLS.clear()
    trial = run_trial(parse_params(project_params))
    assert tasks_for_tests.CALLS == ["seed 0", "seed 1"]
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert trial["out"].sel(torch_seed=seed).values.tobytes() == torch.rand(3).numpy().tobytes()


def test_numpys_seed_function_is_a_pre_task(project_params):
    project_params.update(pre_task="numpy.random.seed", task="tasks_for_tests.draws")
    run_trial(parse_params(project_params))


def test_a_seed_in_params_would_fix_the_seed_and_is_refused(project_params):
    project_params.update(pre_task="tasks_for_tests.seeds_by_name", seed=7)
    with pytest.raises(
        DetflowError, match=re.escape("params.yaml sets to 7 for every torch_seed: remove")
    ):
        run_trial(parse_params(project_params))


def test_a_pre_task_without_a_seed_is_refused(project_params):
    project_params["pre_task"] = "tasks_for_tests.seeds_nothing"
    with pytest.raises(
        DetflowError, match="seeds_nothing takes neither torch_seed nor seed, so every torch_seed"
    ):
        run_trial(parse_params(project_params))


# ---- import-time errors say what happened


def write_module(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.py").write_text(text)


def test_a_module_that_raises_while_importing_says_so(project_params, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "raises_on_import", "raise RuntimeError('no GPU here')\n")
    project_params["task"] = "raises_on_import.train"
    with pytest.raises(DetflowError) as raised:
        run_trial(parse_params(project_params))
    assert str(raised.value) == (
        "task 'raises_on_import.train' does not import: importing raises_on_import.py raised "
        "RuntimeError: no GPU here: fix raises_on_import.py (DETFLOW_VERBOSE=1 shows the traceback)"
    )


def test_a_missing_dependency_names_the_module_that_imports_it(
    project_params, tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "needs_missing", "import not_installed_anywhere\n")
    project_params["task"] = "needs_missing.train"
    with pytest.raises(
        DetflowError,
        match=re.escape(
            "importing needs_missing.py raised ModuleNotFoundError: No module named "
            "'not_installed_anywhere'"
        ),
    ):
        run_trial(parse_params(project_params))


def test_a_missing_name_still_says_so(project_params):
    project_params["task"] = "tasks_for_tests.not_here"
    with pytest.raises(
        DetflowError, match="module 'tasks_for_tests' has no 'not_here': fix the dotted path"
    ):
        run_trial(parse_params(project_params))


def test_a_task_file_git_does_not_track_is_named_in_a_queued_experiments_copy(
    project_params, tmp_path, monkeypatch
):
    """dvc queue start runs in <workspace>/.dvc/tmp/exps/<tmp>/, a copy of the commit's files."""
    package = "tasks_untracked_here"
    workspace, copy = tmp_path / "ws", tmp_path / "ws" / ".dvc" / "tmp" / "exps" / "tmpq1"
    for folder in (workspace, copy):
        (folder / package).mkdir(parents=True)
        (folder / package / "__init__.py").write_text("")
    (workspace / package / "mine.py").write_text("def train(torch_seed): ...\n")
    monkeypatch.chdir(copy)
    monkeypatch.syspath_prepend(str(copy))
    project_params["task"] = f"{package}.mine.train"
    with pytest.raises(DetflowError) as raised:
        run_trial(parse_params(project_params))
    assert str(raised.value).endswith(
        f"{package}/mine.py is not tracked by git: queued and remote experiments only see "
        f"committed files; git add it"
    )


def test_a_kept_result_survives_the_trip_back_from_a_launcher_job():
    """Launcher jobs (joblib, submitit) pickle the job's error back to the stage."""
    import pickle

    error = SeedResultError("task t returned 'bad' ...", 4, {"out": torch.ones(2)})
    back = pickle.loads(pickle.dumps(error))
    assert (back.message, back.seed, back.result["out"].tolist()) == (error.message, 4, [1, 1])


def test_a_pre_task_without_a_readable_signature_is_refused(project_params):
    project_params["pre_task"] = "builtins.min"
    with pytest.raises(
        DetflowError, match=re.escape("pre_task builtins.min has no signature detflow can read")
    ):
        run_trial(parse_params(project_params))


def test_a_name_longer_than_netcdf_takes_is_refused_before_writing():
    with pytest.raises(DetflowError, match="characters long: netCDF takes names up to 250"):
        storable_outputs("t", {"w": {"x" * 260: 1.0}})
