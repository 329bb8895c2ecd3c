"""Pre-tasks: functions that seed random state before the task's objects are built."""

from __future__ import annotations


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
