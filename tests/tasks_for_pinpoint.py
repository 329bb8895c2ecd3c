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


def deep_copies(torch_seed):
    """Deep copies of a tensor and of a module (an EMA or "best model" copy): each copy makes a
    fresh storage outside the dispatcher and set_s a tensor onto it before copy_ fills it."""
    import copy

    scalar = copy.deepcopy(torch.tensor(0.0))
    module = torch.nn.Linear(4, 2)
    best = copy.deepcopy(module)
    with torch.no_grad():
        for average, weight in zip(best.parameters(), module.parameters(), strict=True):
            average.mul_(0.9).add_(weight, alpha=0.1)
    return {"out": best(torch.ones(1, 4)).detach() + scalar}


def unpickled_in_any_order(torch_seed):
    """Tensors unpickled in an order no seed decides (as a DataLoader's main process unpickles
    worker batches in arrival order), then used in order."""
    import pickle

    blobs = [pickle.dumps(torch.arange(3.0) + number) for number in range(4)]
    order = sorted(range(4), key=lambda _: urandom_float())
    received = {number: pickle.loads(blobs[number]) for number in order}
    return {"out": sum(received[number] * (number + 1) for number in range(4))}


def cached_features(torch_seed):
    """Features cached to a file on the first call and read back (rounded) after: the first
    trial computes them, later trials read the file, so the trials disagree."""
    path = "features-cache.txt"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as cache:
            features = torch.tensor([float(x) for x in cache.read().split()])
    else:
        features = torch.linspace(0, 1, 7) / 3.0
        with open(path, "w", encoding="utf-8") as cache:
            cache.write(" ".join(f"{x:.4f}" for x in features.tolist()))
    return {"out": features * 2.0}


def diverges_then_runs_long(torch_seed, steps=200_000):
    """A draw from an unseeded generator at op #1, then ``steps`` more cheap ops."""
    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(7), "little"))
    value = torch.rand(1, generator=generator)  # pinpoint: long
    for _ in range(steps):
        value = value + 1.0
    return {"out": value}


def segfaults(torch_seed):
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


def exits_hard(torch_seed):
    os._exit(3)


def lightning_fit(torch_seed):
    """A PyTorch Lightning Trainer(deterministic=True): its metrics keep deep copies of their
    states (only run where pytorch_lightning is installed)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Regression(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_index):
            inputs, targets = batch
            loss = torch.nn.functional.mse_loss(self.layer(inputs), targets)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    generator = torch.Generator().manual_seed(torch_seed)
    data = TensorDataset(torch.randn(64, 3, generator=generator), torch.randn(64, 1))
    model = Regression()
    trainer = pl.Trainer(
        max_epochs=2,
        deterministic=True,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=16))
    return {"weight": model.layer.weight.detach()}


def slow_ops(torch_seed):
    """About 4 s of ops, a few at a time, for watching pinpoint's progress."""
    import time

    value = torch.zeros(3)
    for _ in range(25):
        value = value + 1.0
        time.sleep(0.15)
    return {"out": value}


def python_random_draws(torch_seed):
    """Pairs sampled with Python's random (as siamese_network's sampler), which seed_torch
    leaves unseeded."""
    import random

    values = torch.arange(10.0)
    picked = random.sample(range(10), 3)  # pinpoint: random
    return {"out": values[picked]}


def set_order(torch_seed):
    """A set of strings iterated as it comes: its order follows the string hash seed."""
    names = {"alpha", "beta", "gamma", "delta", "epsilon"}
    weights = {name: float(number) for number, name in enumerate(sorted(names))}
    values = torch.tensor([weights[name] for name in names])  # pinpoint: set
    return {"out": values * 2.0}


def reads_a_file_that_changes(torch_seed):
    """Reads back a file that changes between runs (a log, a download)."""
    with open("changing.bin", "wb") as stream:
        stream.write(os.urandom(8))
    with open("changing.bin", "rb") as stream:  # pinpoint: file
        data = stream.read()
    return {"out": torch.tensor(list(data), dtype=torch.float32) * 2.0}


def big_sum(torch_seed):
    """A sum of 10^7 float32: its bits follow the intra-op thread count (1 vs 2 here)."""
    values = torch.rand(10**7)
    return {"out": values.sum()}  # pinpoint: big_sum


def matmul(torch_seed):
    """A 256x256 float32 matmul through MKL: its bits follow MKL_CBWR (COMPATIBLE vs unset)."""
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    return {"out": a @ b}  # pinpoint: matmul
