"""Real training code in-process: the MNIST-style task and a Lightning Trainer task give the
same bits in every trial, other bits for other seeds, and write nothing into the project."""

from __future__ import annotations

import numpy as np
import pytest

from detflow.artifact import as_tensors, read_nested
from detflow.params import parse_params
from detflow.trial import run_trial


def trained_twice(project_params, **params):
    project_params.update(torch_seed=[0, 1], **params)
    parsed = parse_params(project_params)
    return run_trial(parsed), run_trial(parsed)


def assert_same_bits_per_seed_and_other_bits_per_seed(first, second):
    assert list(first.data_vars) == list(second.data_vars)
    for name in first.data_vars:
        assert first[name].values.tobytes() == second[name].values.tobytes(), name
    weights = first["weights.fc2.weight"].values
    assert not np.array_equal(weights[0], weights[1])  # the seed reached the training


def test_the_mnist_task_is_deterministic_under_seed_everything(project_params, tmp_path):
    first, second = trained_twice(
        project_params,
        task="tasks_mnist.mnist",
        pre_task="detflow.seeding.seed_everything",
    )
    assert_same_bits_per_seed_and_other_bits_per_seed(first, second)
    from tasks_mnist import Net

    Net().load_state_dict(as_tensors(read_nested(first, torch_seed=0)["weights"]))
    assert list(tmp_path.iterdir()) == []


def test_a_lightning_trainer_task_is_deterministic_with_lightnings_seed_everything(
    project_params, tmp_path
):
    pytest.importorskip("pytorch_lightning")
    first, second = trained_twice(
        project_params,
        task="tasks_lightning.train",
        # Lightning's seed_everything(seed=None, workers=False) receives torch_seed as `seed`.
        pre_task="pytorch_lightning.seed_everything",
    )
    assert_same_bits_per_seed_and_other_bits_per_seed(first, second)
    assert first.attrs["deterministic_algorithms"] == "True"  # Trainer(deterministic=True)
    assert list(tmp_path.iterdir()) == []  # no lightning_logs, no checkpoints
