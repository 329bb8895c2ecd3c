"""Issue 3: seed_everything, the training task, the device param, strict, plots, provenance."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from detflow import aggregate, plots
from detflow.cli import DetflowError
from detflow.determinism import compare_trials
from detflow.params import parse_params
from detflow.seeding import seed_everything
from detflow.trial import run_trial


def three_trials(values: dict):
    """Three in-process trials, combined as the aggregate stage combines them."""
    params = parse_params(values)
    trials = {trial_id: run_trial(params) for trial_id in ("a", "b", "c")}
    return aggregate.combine_trials(trials, {})


def test_seed_everything_sets_the_deterministic_switches():
    seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cudnn.deterministic is True
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_seed_everything_makes_all_three_rngs_repeat(project_params):
    project_params.update(
        task="tasks_for_tests.draws_everywhere", pre_task="detflow.seeding.seed_everything"
    )
    verdict = compare_trials(three_trials(project_params))
    assert verdict.deterministic


def test_seed_torch_alone_leaves_python_and_numpy_random(project_params):
    project_params.update(task="tasks_for_tests.draws_everywhere")
    verdict = compare_trials(three_trials(project_params))
    assert not verdict.deterministic
    assert {d.variable for d in verdict.disagreements} == {"python", "numpy"}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_is_bitwise_deterministic_on_cpu(project_params, num_workers):
    project_params.update(task="detflow.tasks.train", pre_task="detflow.seeding.seed_everything")
    project_params["train"]["num_workers"] = num_workers
    result = three_trials(project_params)
    assert result["loss"].dims == ("torch_seed", "trial_id", "epoch")
    assert result["loss"].sizes["epoch"] == project_params["train"]["epochs"]
    assert result["weights"].dims == ("torch_seed", "trial_id", "weights_dim0")
    assert result["weights"].sizes["weights_dim0"] == 11  # Linear(10, 1): 10 weights, 1 bias
    loss = result["loss"].sel(torch_seed=0, trial_id="a").values
    assert loss[-1] < loss[0]
    assert compare_trials(result).deterministic
    # Different seeds give different data, so different curves.
    assert not np.array_equal(result["loss"].sel(torch_seed=0), result["loss"].sel(torch_seed=1))


def test_workers_do_not_change_the_numbers(project_params):
    """Worker processes only load batches; the shuffled order comes from the seeded generator."""
    project_params.update(task="detflow.tasks.train")
    losses = []
    for num_workers in (0, 2):
        project_params["train"]["num_workers"] = num_workers
        losses.append(run_trial(parse_params(project_params))["loss"].values.tobytes())
    assert losses[0] == losses[1]


def test_missing_cuda_is_a_clear_error(project_params):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    project_params["device"] = "cuda"
    with pytest.raises(
        DetflowError, match="device 'cuda' is not available on this machine: set device: cpu"
    ):
        run_trial(parse_params(project_params))


@pytest.mark.parametrize(("key", "value"), [("device", "gpu"), ("strict", "yes")])
def test_bad_device_and_strict_are_named(project_params, key, value):
    project_params[key] = value
    with pytest.raises(DetflowError, match=f"^{key} '{value}' is not"):
        parse_params(project_params)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_forward_on_cuda_is_deterministic(project_params):
    project_params.update(device="cuda", pre_task="detflow.seeding.seed_everything")
    result = three_trials(project_params)
    assert compare_trials(result).deterministic


def test_strict_fails_after_writing_the_report(
    tmp_path, project_params, workspace, run_aggregate, capsys
):
    project_params.update(pre_task=None, strict=True)
    with pytest.raises(DetflowError, match=r"^strict: trials disagree for torch_seed 0,1 "):
        run_aggregate(workspace(project_params))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["deterministic"] is False
    assert (tmp_path / "result.nc").exists()
    out = capsys.readouterr().out
    assert "NOT deterministic" in out
    assert "torch_seed 0: 'out' first differs in trial b at index [0]" in out


def test_strict_passes_deterministic_trials(
    tmp_path, project_params, workspace, run_aggregate, capsys
):
    project_params["strict"] = True
    result, metrics = run_aggregate(workspace(project_params))  # raises if strict fails
    assert metrics["deterministic"] is True and result["out"].shape == (2, 3, 1)
    # The result carries the verdict that the report stage prints.
    assert (
        result.attrs["verdict"] == "deterministic: all 3 trials agree bitwise for torch_seed 0..1"
    )
    assert result.attrs["deterministic"] == "true"


def test_metrics_record_provenance(tmp_path, project_params, workspace, run_aggregate):
    deterministic_algorithms = torch.are_deterministic_algorithms_enabled()  # seed_torch keeps it
    _, metrics = run_aggregate(workspace(project_params))
    provenance = metrics["provenance"]
    assert provenance["torch_version"] == torch.__version__
    assert provenance["numpy_version"] == np.__version__
    assert provenance["device"] == "cpu"
    assert provenance["cuda_version"] == str(torch.version.cuda)
    assert provenance["deterministic_algorithms"] == str(deterministic_algorithms)
    assert provenance["cudnn_benchmark"] == str(torch.backends.cudnn.benchmark)
    expected = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    assert provenance["cudnn_version"] == str(expected)
    workspace_config = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "unset")
    assert provenance["cublas_workspace_config"] == workspace_config

    project_params["pre_task"] = "detflow.seeding.seed_everything"
    _, metrics = run_aggregate(workspace(project_params))
    assert metrics["provenance"]["deterministic_algorithms"] == "True"


def test_plots_overlay_every_trial_disagreeing_seeds_first(
    tmp_path, project_params, workspace, run_aggregate
):
    project_params.update(task="detflow.tasks.train", torch_seed=[0, 1])
    run_aggregate(workspace(project_params))
    rows = (tmp_path / "plots" / "loss.csv").read_text().splitlines()
    assert rows[0] == "torch_seed,trial_id,index,value"
    assert len(rows) == 1 + 2 * 3 * project_params["train"]["epochs"]
    assert (tmp_path / "plots" / "weights.csv").exists()

    project_params.update(task="detflow.tasks.forward", pre_task=None)
    project_params["torch_seed"] = list(range(12))
    run_aggregate(workspace(project_params))
    rows = (tmp_path / "plots" / "out.csv").read_text().splitlines()
    assert len(rows) == 1 + plots.PLOT_MAX_SEEDS * 3


def test_seed_torch_makes_random_and_numpy_repeat_inside_dataloader_workers(project_params):
    """torch seeds each worker's `random` and NumPy from a base seed drawn from torch's RNG,
    which seed_torch seeds (the README's qualification of the test above)."""
    project_params.update(task="tasks_for_tests.draws_in_dataloader_workers")
    first, second = (run_trial(parse_params(project_params))["draws"] for _ in range(2))
    assert first.values.tobytes() == second.values.tobytes()
    assert not np.array_equal(first.sel(torch_seed=0).values, first.sel(torch_seed=1).values)
