"""Pre-tasks: functions that seed random state before the task's objects are built."""

from __future__ import annotations

import os

# cuBLAS needs this set before CUDA initialises to make its reductions deterministic.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def seed_torch(torch_seed: int) -> None:
    """Seed torch's global RNG: the how-to's ``pre_task``.

    Examples
    --------
    >>> import torch
    >>> seed_torch(0); a = torch.rand(1)
    >>> seed_torch(0); bool(torch.equal(a, torch.rand(1)))
    True
    """
    import torch

    torch.manual_seed(torch_seed)


def seed_everything(torch_seed: int, deterministic_algorithms: bool = True) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    With ``deterministic_algorithms`` (the default) it also makes torch use deterministic
    kernels, or raise where an op has none, sets ``CUBLAS_WORKSPACE_CONFIG`` and turns cuDNN's
    benchmark autotuner off. This is the recommended ``pre_task``.

    Examples
    --------
    >>> import random
    >>> seed_everything(3, deterministic_algorithms=False); a = random.random()
    >>> seed_everything(3, deterministic_algorithms=False); a == random.random()
    True
    """
    import random

    import numpy as np

    if deterministic_algorithms:
        # Before `import torch` may initialise CUDA; setdefault keeps a user's stricter choice.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    import torch

    random.seed(torch_seed)
    np.random.seed(torch_seed % 2**32)  # NumPy's legacy seeding takes 32 bits only
    torch.manual_seed(torch_seed)
    torch.cuda.manual_seed_all(torch_seed)  # also done by manual_seed; explicit for clarity
    torch.use_deterministic_algorithms(deterministic_algorithms)
    torch.backends.cudnn.benchmark = False  # autotuning may pick a different kernel each run
    torch.backends.cudnn.deterministic = deterministic_algorithms


def deterministic_settings() -> dict[str, str]:
    """The settings in force that decide whether torch's kernels are deterministic."""
    import torch

    return {
        "deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()),
        "cudnn_benchmark": str(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": str(torch.backends.cudnn.deterministic),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG", "unset"),
    }
