from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from detflow import aggregate
from detflow.artifact import read_dataset, write_dataset
from detflow.cli import DetflowError
from detflow.determinism import content_digest
from detflow.params import parse_params
from detflow.trial import run_trial


@pytest.fixture
def workspace(tmp_path, project_params, write_params):
    """params.yaml plus one trial file per trial_id, run in-process."""
    trials = tmp_path / "trials"

    def build(values=None):
        values = values or project_params
        params_path = write_params(values)
        params = parse_params(values)
        for trial_id in params.trial_ids:
            write_dataset(run_trial(params), trials / f"{trial_id}.nc")
        return params_path

    return build


def run_aggregate(tmp_path, params_path):
    out, metrics = tmp_path / "result.nc", tmp_path / "metrics.json"
    args = ["--params", str(params_path), "--trials", str(tmp_path / "trials")]
    aggregate.main([*args, "--out", str(out), "--metrics", str(metrics)])
    return read_dataset(out), json.loads(metrics.read_text())


def test_result_has_the_how_to_shape_and_a_true_verdict(tmp_path, workspace):
    result, metrics = run_aggregate(tmp_path, workspace())
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


def test_result_records_provenance_and_fixed_params(tmp_path, workspace):
    result, _ = run_aggregate(tmp_path, workspace())
    import torch

    assert result.attrs["torch_version"] == torch.__version__
    for key in ("numpy_version", "python_version", "platform", "device"):
        assert result.attrs[key]
    assert result.attrs["task"] == "detflow.tasks.forward"
    assert json.loads(result.attrs["module"])["_target_"] == "torch.nn.Linear"


def test_written_result_round_trips(tmp_path, workspace, project_params):
    params_path = workspace()
    params = parse_params(project_params)
    in_memory = aggregate.combine_trials(
        aggregate.load_trials(tmp_path / "trials", params), aggregate.fixed_params_attrs(params)
    )
    result, _ = run_aggregate(tmp_path, params_path)
    xr.testing.assert_identical(result, in_memory)


def test_without_pre_task_every_seed_disagrees(tmp_path, workspace, project_params):
    project_params["pre_task"] = None
    _, metrics = run_aggregate(tmp_path, workspace(project_params))
    assert metrics["deterministic"] is False
    assert metrics["disagreeing_seeds"] == "0,1"
    assert metrics["max_abs_diff"] > 0
    assert {d["torch_seed"] for d in metrics["disagreements"]} == {0, 1}


def test_left_over_trial_files_do_not_leak(tmp_path, workspace, project_params, write_params):
    workspace()
    project_params["trial_id"] = ["a", "b"]
    result, metrics = run_aggregate(tmp_path, write_params(project_params))
    assert result["trial_id"].values.tolist() == ["a", "b"]
    assert metrics["n_trials"] == 2


def test_a_missing_trial_is_named(tmp_path, workspace):
    params_path = workspace()
    (tmp_path / "trials" / "c.nc").unlink()
    with pytest.raises(DetflowError, match=r"trials/c.nc is missing"):
        run_aggregate(tmp_path, params_path)


def test_a_trial_from_other_seeds_is_refused(tmp_path, workspace, project_params, write_params):
    workspace()
    project_params["torch_seed"] = [0, 1, 2]
    with pytest.raises(
        DetflowError, match=r"holds torch_seed \[0, 1\] but params.yaml has \[0, 1, 2\]"
    ):
        run_aggregate(tmp_path, write_params(project_params))
    assert not (tmp_path / "result.nc").exists()
    assert not (tmp_path / "metrics.json").exists()


def test_a_corrupt_trial_is_refused(tmp_path, workspace):
    params_path = workspace()
    (tmp_path / "trials" / "b.nc").write_bytes(b"not netcdf at all")
    with pytest.raises(DetflowError, match=r"trials/b.nc is not a readable netCDF file"):
        run_aggregate(tmp_path, params_path)


def test_a_trial_with_another_dtype_is_refused(tmp_path, workspace):
    params_path = workspace()
    path = tmp_path / "trials" / "b.nc"
    write_dataset(read_dataset(path).astype(np.float64), path)
    with pytest.raises(DetflowError, match=r"trials/b.nc: 'out' is float64"):
        run_aggregate(tmp_path, params_path)


def test_a_truncated_trial_is_refused_and_nothing_is_written(tmp_path, workspace):
    params_path = workspace()
    path = tmp_path / "trials" / "a.nc"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DetflowError, match=r"trials/a.nc is not a readable netCDF file"):
        run_aggregate(tmp_path, params_path)
    assert not (tmp_path / "result.nc").exists()
    assert not (tmp_path / "metrics.json").exists()


def test_a_trial_with_wrong_dims_is_refused(tmp_path, workspace):
    params_path = workspace()
    path = tmp_path / "trials" / "c.nc"
    write_dataset(read_dataset(path).transpose("out_dim0", "torch_seed"), path)
    with pytest.raises(
        DetflowError,
        match=r"trials/c.nc: 'out' has dims \['out_dim0', 'torch_seed'\], not torch_seed first",
    ):
        run_aggregate(tmp_path, params_path)


def test_a_refused_trial_keeps_the_previous_result(tmp_path, workspace):
    params_path = workspace()
    run_aggregate(tmp_path, params_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("result.nc", "metrics.json")}
    (tmp_path / "trials" / "b.nc").write_bytes(b"garbage")
    with pytest.raises(DetflowError, match=r"b\.nc is not a readable netCDF file"):
        run_aggregate(tmp_path, params_path)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_nan_and_inf_are_stored_as_is_and_compared_bitwise(tmp_path, workspace, project_params):
    project_params["task"] = "tasks_for_tests.non_finite"
    result, metrics = run_aggregate(tmp_path, workspace(project_params))
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
