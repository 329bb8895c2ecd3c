"""The how-to's computation written out directly, an independent reference for its numbers
on whatever CPU runs the tests (never a value copied from one machine)."""

from __future__ import annotations

import numpy as np
import torch


def how_to_reference(seed: int) -> np.ndarray:
    """Seed, build Linear(10, 1), apply it to arange(10.0): the how-to's ``out`` for ``seed``."""
    torch.manual_seed(seed)
    return torch.nn.Linear(10, 1)(torch.arange(10.0)).detach().numpy()
