"""Tasks for the benchmarks: results of a chosen size."""

from __future__ import annotations


def random_values(torch_seed: int, n_values: int) -> dict:
    """``n_values`` float32 values drawn from a generator seeded with ``torch_seed``."""
    import torch

    generator = torch.Generator().manual_seed(torch_seed)
    return {"values": torch.rand(n_values, generator=generator)}
