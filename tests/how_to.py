"""The how-to's computation written out directly, an independent reference for its numbers
on whatever CPU runs the tests (never a value copied from one machine)."""

from __future__ import annotations

import copy

import numpy as np
import torch

# The how-to's params, owned by the tests: e2e tests and unit tests build on these, never on
# the shipped params.yaml, which users edit as the README says.
HOW_TO_PARAMS = {
    "pre_task": "detflow.seeding.seed_torch",
    "task": "detflow.tasks.forward",
    "device": "cpu",
    "strict": False,
    "pinpoint": False,
    "portable": False,
    "plot_variables": "auto",
    "env_vars": [],
    "torch_seed": [0, 1],
    "trial_id": ["a", "b", "c"],
    "launcher": "loop",
    "module": {"_target_": "torch.nn.Linear", "in_features": 10, "out_features": 1},
    "data": {"_target_": "torch.arange", "_args_": [10.0]},
    "train": {"epochs": 5, "lr": 0.05, "batch_size": 16, "num_workers": 0, "n_samples": 256},
}


def how_to_params() -> dict:
    return copy.deepcopy(HOW_TO_PARAMS)


def how_to_reference(seed: int) -> np.ndarray:
    """Seed, build Linear(10, 1), apply it to arange(10.0): the how-to's ``out`` for ``seed``."""
    torch.manual_seed(seed)
    return torch.nn.Linear(10, 1)(torch.arange(10.0)).detach().numpy()
