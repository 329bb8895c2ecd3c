"""Tasks that tests/test_pinpoint.py names by dotted path, each diverging (or not) in one known
way. A line that pinpoint should name ends with a ``# pinpoint: <tag>`` comment, which the tests
look up, so editing this file moves no expectation."""

from __future__ import annotations

import os

import numpy as np
import torch


def urandom_float() -> float:
    """A number no seed controls: different in every process."""
    return int.from_bytes(os.urandom(4), "little") / 2**32


@torch.library.custom_op("detflow_test::noisy_add", mutates_args=())
def noisy_add(values: torch.Tensor) -> torch.Tensor:
    """A non-deterministic op on purpose: adds a number drawn from os.urandom."""
    return values + urandom_float()


@noisy_add.register_fake
def _(values: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(values)


def numpy_draws(torch_seed):
    """Data from NumPy's global RNG, which no torch seed controls."""
    # torch 2.13's from_numpy runs aten.lift_fresh: the first op that reads NumPy's numbers.
    drawn = torch.from_numpy(np.random.rand(4, 3))  # pinpoint: numpy
    scaled = drawn * 2.0
    return {"out": scaled.sum(0)}


def unseeded_generator(torch_seed):
    """Four deterministic ops, then a draw from a generator seeded by os.urandom."""
    steps = torch.arange(6.0)
    total = (steps * 2.0 + 1.0).sum()
    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(7), "little"))
    noise = torch.rand(3, generator=generator)  # pinpoint: generator
    return {"out": noise + total}


def custom_noisy_op(torch_seed):
    values = torch.ones(3) * 2.0
    return {"out": noisy_add(values)}  # pinpoint: custom


def flagged_op(torch_seed):
    """put_ without accumulate, which torch flags as non-deterministic even on the CPU (the
    CPU kernel is serial, so the runs agree)."""
    values = torch.zeros(5)
    for _ in range(2):
        values.put_(torch.tensor([0, 0]), torch.ones(2))  # pinpoint: flagged
    return {"out": values}


def uses_empty_memory(torch_seed):
    """Uninitialised memory that is written before it is read: no divergence."""
    buffer = torch.empty(4, 3)
    buffer.copy_(torch.ones(4, 3))
    filled = torch.empty(5).normal_()
    pieces = torch.empty(2, 3)
    pieces[0].fill_(1.0)
    pieces[1].fill_(2.0)
    return {"out": buffer.view(12) * 2.0, "filled": filled, "pieces": pieces.sum(0)}


def conv_backward(torch_seed, device="cpu"):
    """A convolution's backward: cuDNN's weight gradient sums with atomics unless
    deterministic algorithms are on."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device)
    inputs = torch.randn(32, 64, 64, 64, device=device)
    conv(inputs).square().sum().backward()
    return {"grad": conv.weight.grad}


def branches_per_run(torch_seed):
    """The first run to claim a file in the working folder adds, any other multiplies: a
    branch decided outside torch's ops."""
    values = torch.ones(3)
    try:
        os.close(os.open("claimed-by-the-first-run", os.O_CREAT | os.O_EXCL))
        out = values + 1.0  # pinpoint: branch
    except FileExistsError:
        out = values * 2.0  # pinpoint: branch
    return {"out": out}
