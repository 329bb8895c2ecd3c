from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from detflow import aggregate
from detflow.artifact import read_dataset, write_dataset
from detflow.cli import DetflowError
from detflow.determinism import compare_trials, content_digest
from detflow.params import parse_params
from detflow.result_record import VERDICT_KEYS


def test_result_has_the_how_to_shape_and_a_true_verdict(tmp_path, workspace, run_aggregate):
    result, metrics = run_aggregate(workspace())
    assert result["out"].dims == ("torch_seed", "trial_id", "out_dim0")
    assert result["out"].shape == (2, 3, 1)
    assert result["trial_id"].values.tolist() == ["a", "b", "c"]
    assert result["torch_seed"].values.tolist() == [0, 1]
    assert metrics["deterministic"] is True
    assert metrics["disagreeing_seeds"] == ""
    assert metrics["max_abs_diff"] == 0.0
    assert metrics["digest"] == content_digest(result)
    for seed in ("0", "1"):
        assert metrics["seeds"][seed]["deterministic"] is True
        expected = result["out"].sel(torch_seed=int(seed), trial_id="a").values.item()
        assert np.float32(metrics["seeds"][seed]["out"]) == np.float32(expected)


def test_result_records_provenance_and_fixed_params(tmp_path, workspace, run_aggregate):
    result, _ = run_aggregate(workspace())
    import platform

    import torch

    assert result.attrs["torch_version"] == torch.__version__
    assert result.attrs["numpy_version"] == np.__version__
    assert result.attrs["python_version"] == platform.python_version()
    assert result.attrs["platform"] == platform.platform()
    assert result.attrs["device"] == "cpu"
    assert result.attrs["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert result.attrs["intra_op_threads"] == str(torch.get_num_threads())
    assert result.attrs["task"] == "detflow.tasks.forward"
    assert json.loads(result.attrs["module"])["_target_"] == "torch.nn.Linear"


def test_written_result_round_trips(tmp_path, workspace, run_aggregate, project_params):
    params_path = workspace()
    params = parse_params(project_params)
    trials = {t: read_dataset(tmp_path / "trials" / f"{t}.nc") for t in params.trial_ids}
    made = trials[params.trial_ids[0]].attrs["params"]  # what the trials recorded they bound
    in_memory = aggregate.combine_trials(trials, aggregate.fixed_params_attrs(made))
    result, metrics = run_aggregate(params_path)
    own = {key: result.attrs.pop(key) for key in VERDICT_KEYS}  # what the result says of itself
    xr.testing.assert_identical(result, in_memory)
    assert own["digest"] == metrics["digest"] and own["deterministic"] == "true"
    # The streamed digest and verdict are those of the in-memory result.
    assert metrics["digest"] == content_digest(in_memory)
    assert metrics["deterministic"] == compare_trials(in_memory).deterministic


def test_without_pre_task_every_seed_disagrees(tmp_path, workspace, run_aggregate, project_params):
    project_params["pre_task"] = None
    _, metrics = run_aggregate(workspace(project_params))
    assert metrics["deterministic"] is False
    assert metrics["disagreeing_seeds"] == "0,1"
    assert metrics["max_abs_diff"] > 0
    assert {d["torch_seed"] for d in metrics["disagreements"]} == {0, 1}


def test_left_over_trial_files_do_not_leak(
    tmp_path, workspace, run_aggregate, project_params, write_params
):
    workspace()
    project_params["trial_id"] = ["a", "b"]
    result, metrics = run_aggregate(write_params(project_params))
    assert result["trial_id"].values.tolist() == ["a", "b"]
    assert metrics["n_trials"] == 2


def test_a_missing_trial_is_named(tmp_path, workspace, run_aggregate):
    params_path = workspace()
    (tmp_path / "trials" / "c.nc").unlink()
    with pytest.raises(DetflowError, match=r"trials/c.nc is missing"):
        run_aggregate(params_path)


def test_a_trial_from_other_seeds_is_refused(
    tmp_path, workspace, run_aggregate, project_params, write_params
):
    workspace()
    project_params["torch_seed"] = [0, 1, 2]
    with pytest.raises(
        DetflowError,
        match=r"holds torch_seed 0..1 but params.yaml has 0..2: params.yaml changed after that "
        r"trial ran \(an edit, or another run in this workspace\)",
    ):
        run_aggregate(write_params(project_params))
    assert not (tmp_path / "result.nc").exists()
    assert not (tmp_path / "metrics.json").exists()


def test_a_corrupt_trial_is_refused(tmp_path, workspace, run_aggregate):
    params_path = workspace()
    (tmp_path / "trials" / "b.nc").write_bytes(b"not netcdf at all")
    with pytest.raises(DetflowError, match=r"trials/b.nc is not a readable netCDF file"):
        run_aggregate(params_path)


def test_a_trial_with_another_dtype_is_refused(tmp_path, workspace, run_aggregate):
    params_path = workspace()
    path = tmp_path / "trials" / "b.nc"
    write_dataset(read_dataset(path).astype(np.float64), path)
    with pytest.raises(DetflowError, match=r"trials/b.nc: 'out' is float64"):
        run_aggregate(params_path)


def test_a_truncated_trial_is_refused_and_nothing_is_written(tmp_path, workspace, run_aggregate):
    params_path = workspace()
    path = tmp_path / "trials" / "a.nc"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DetflowError, match=r"trials/a.nc is not a readable netCDF file"):
        run_aggregate(params_path)
    assert not (tmp_path / "result.nc").exists()
    assert not (tmp_path / "metrics.json").exists()


def test_a_trial_with_wrong_dims_is_refused(tmp_path, workspace, run_aggregate):
    params_path = workspace()
    path = tmp_path / "trials" / "c.nc"
    write_dataset(read_dataset(path).transpose("out_dim0", "torch_seed"), path)
    with pytest.raises(
        DetflowError,
        match=r"trials/c.nc: 'out' has dims \['out_dim0', 'torch_seed'\], not torch_seed first",
    ):
        run_aggregate(params_path)


def test_a_refused_trial_keeps_the_previous_result(tmp_path, workspace, run_aggregate):
    params_path = workspace()
    run_aggregate(params_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("result.nc", "metrics.json")}
    (tmp_path / "trials" / "b.nc").write_bytes(b"garbage")
    with pytest.raises(DetflowError, match=r"b\.nc is not a readable netCDF file"):
        run_aggregate(params_path)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_nan_and_inf_are_stored_as_is_and_compared_bitwise(
    tmp_path, workspace, run_aggregate, project_params
):
    project_params["task"] = "tasks_for_tests.non_finite"
    result, metrics = run_aggregate(workspace(project_params))
    expected = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)
    for seed in (0, 1):
        for trial in ("a", "b", "c"):
            got = result["out"].sel(torch_seed=seed, trial_id=trial).values
            assert got.tobytes() == expected.tobytes()
    assert metrics["deterministic"] is True
    assert metrics["mean"]["out"] == "nan"

    def no_constants(name):
        raise AssertionError(f"metrics.json holds the non-JSON constant {name}")

    json.loads((tmp_path / "metrics.json").read_text(), parse_constant=no_constants)
