"""Tasks and pre-tasks that tests name by dotted path (tests/ is on sys.path)."""

from __future__ import annotations

import torch

CALLS: list[str] = []


class RecordingLinear(torch.nn.Linear):
    """A Linear that records when it is built, to check the seed-then-instantiate order."""

    def __init__(self, in_features: int, out_features: int):
        CALLS.append("instantiate")
        super().__init__(in_features, out_features)


def recording_seed(torch_seed: int) -> None:
    CALLS.append(f"pre_task {torch_seed}")
    torch.manual_seed(torch_seed)


def returns_list(module, data):
    return [1.0]


def returns_text(module, data):
    return {"out": "not a number"}


def returns_object(module, data):
    return {"out": object()}


def returns_bad_key(module, data):
    return {"trial_id": 1.0}


def raises_on_seed_one(module, data, torch_seed):
    if torch_seed == 1:
        raise ValueError("boom")
    return {"out": module(data).detach()}


def grows_with_seed(torch_seed):
    return {"out": torch.zeros(torch_seed + 1)}


def needs_learning_rate(module, data, learning_rate):
    return {"out": module(data).detach() * learning_rate}


def mixed_dtypes(torch_seed):
    """Scalars and arrays of every storable kind, from the seed alone."""
    generator = torch.Generator().manual_seed(torch_seed)
    return {
        "half": torch.rand(3, generator=generator).half(),
        "double": torch.rand(2, 2, generator=generator, dtype=torch.float64),
        "count": torch_seed * 10,
        "flag": torch_seed % 2 == 0,
    }


def draws_everywhere(torch_seed):
    """One draw from each global RNG that a task might use."""
    import random

    import numpy as np

    return {
        "python": random.random(),
        "numpy": np.random.rand(),
        "torch": torch.rand(1),
    }


def non_finite(torch_seed):
    return {"out": torch.tensor([float("nan"), float("inf"), float("-inf"), 1.0])}


def machine_dependent(module, data):
    """The how-to's output, offset by DETFLOW_TEST_MACHINE: two "machines" whose numerics
    differ, each deterministic on its own."""
    import os

    offset = float(os.environ.get("DETFLOW_TEST_MACHINE", "0")) * 1e-3
    return {"out": module(data).detach() + offset}


def returns_bfloat16(torch_seed):
    return {"out": torch.ones(2, dtype=torch.bfloat16)}


def returns_sparse(torch_seed):
    return {"out": torch.eye(2).to_sparse()}


def returns_meta(torch_seed):
    return {"out": torch.ones(2, device="meta")}


def returns_longdouble(torch_seed):
    import numpy as np

    return {"out": np.ones(2, dtype=np.longdouble)}


def returns_a_dim_name(torch_seed):
    """'out' gets the axis 'out_dim0'; a second result of that very name would clash."""
    return {"out": torch.ones(3), "out_dim0": torch.ones(1)}


def mutates_its_input(options, torch_seed):
    """Changes the dict it was given: a later seed must still get the params as written."""
    options["count"] += 1
    return {"out": torch.tensor([options["count"], torch_seed])}


def edits_params_on_seed_zero(torch_seed):
    """Stands in for a user editing params.yaml while a long stage runs."""
    from pathlib import Path

    if torch_seed == 0:
        path = Path("params.yaml")
        path.write_text(path.read_text().replace("pre_task: tasks_for_tests", "pre_task: null #"))
    torch.manual_seed(torch_seed)


def changes_directory(module, data):
    """A task that moves the working directory; the trial file must not follow it."""
    import os
    import tempfile

    os.chdir(tempfile.mkdtemp())
    return {"out": module(data).detach()}


class Tasks:
    """A task reached through a class: `tasks_for_tests.Tasks.forward`, as Hydra locates it."""

    @staticmethod
    def forward(module, data):
        return {"out": module(data).detach()}


def slow_seed(torch_seed):
    """The how-to's pre-task, a second per seed slower: time for a second run to start."""
    import time

    time.sleep(1.0)
    torch.manual_seed(torch_seed)


def returns_four_megabytes(torch_seed):
    return {"out": torch.zeros(1_000_000)}


# ---- real-code shapes of results, seeds and failures (tests/test_outputs_nested.py)


def returns_state_dict(module, data, torch_seed):
    """The module's state_dict, nested under 'weights', beside a flat loss and a spread one."""
    return {
        "loss": module(data).detach().sum(),
        "weights": module.state_dict(),
        "stats": {"epoch": {"mean": torch.tensor([0.5, float(torch_seed)])}},
    }


def returns_spread_state_dict(module, data):
    return module.state_dict()


def returns_colliding_names(torch_seed):
    return {"a.b": torch.zeros(1), "a": {"b": torch.ones(1)}}


def returns_int_key(torch_seed):
    return {"weights": {0: torch.zeros(1)}}


def records_and_returns_object(torch_seed):
    CALLS.append(f"task {torch_seed}")
    return {"out": torch.full((2,), float(torch_seed)), "bad": object()}


def keys_change_on_seed_one(torch_seed):
    CALLS.append(f"task {torch_seed}")
    name = "out" if torch_seed == 0 else "other"
    return {name: torch.full((2,), float(torch_seed))}


def seeds_by_name(seed=None, workers=False):
    """Shaped like Lightning's seed_everything(seed=None, workers=False)."""
    CALLS.append(f"seed {seed}")
    torch.manual_seed(0 if seed is None else seed)


def seeds_nothing():
    torch.manual_seed(0)


def draws(torch_seed):
    return {"out": torch.rand(3)}


class DrawsInWorkers(torch.utils.data.Dataset):
    """Each item is one draw from Python's and NumPy's global RNGs, in the worker that loads it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        import random

        import numpy as np

        return torch.tensor([random.random(), np.random.rand()], dtype=torch.float64)


def draws_in_dataloader_workers(torch_seed):
    loader = torch.utils.data.DataLoader(DrawsInWorkers(), batch_size=1, num_workers=2)
    return {"draws": torch.cat(list(loader))}


NAN_CALLS = {"n": 0}


def nan_in_every_other_trial(torch_seed):
    """Two seeds a trial: the first trial's calls give numbers, the next trial's NaN, so the
    trials disagree by a NaN (whose difference JSON cannot spell)."""
    NAN_CALLS["n"] += 1
    odd_trial = ((NAN_CALLS["n"] - 1) // 2) % 2 == 1
    return {"out": torch.tensor([float("nan") if odd_trial else 1.0 + torch_seed])}


def ignores_its_seed(module, data):
    """The same numbers whatever the seed: the seed never reaches the task."""
    return {"out": torch.ones(2)}


def many_results(torch_seed):
    """60 variables, as a big model's state_dict gives: reports must not grow with them."""
    return {f"layer{n:02d}": torch.full((3,), float(n + torch_seed)) for n in range(60)}
