"""Example tasks: each takes objects built from params and returns a dict of arrays."""

from __future__ import annotations

from typing import Any


def forward(module: Any, data: Any) -> dict[str, Any]:
    """Apply ``module`` to ``data``: the how-to's task.

    Examples
    --------
    >>> import torch
    >>> forward(torch.nn.Identity(), torch.ones(2))["out"]
    tensor([1., 1.])
    """
    return {"out": module(data).detach()}
