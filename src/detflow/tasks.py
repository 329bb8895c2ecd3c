"""Example tasks: each takes objects built from params and returns a dict of arrays."""

from __future__ import annotations

from dataclasses import dataclass
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


def seed_worker(worker_id: int) -> None:
    """Seed a DataLoader worker's Python and NumPy RNGs from the seed torch gave the worker."""
    import random

    import numpy as np
    import torch

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def synthetic_regression(
    n_samples: int, in_features: int, out_features: int, generator: Any
) -> tuple[Any, Any]:
    """Inputs and noisy linear targets, drawn from ``generator`` alone."""
    import torch

    inputs = torch.randn(n_samples, in_features, generator=generator)
    true_weight = torch.randn(in_features, out_features, generator=generator)
    noise = 0.1 * torch.randn(n_samples, out_features, generator=generator)
    return inputs, inputs @ true_weight + noise


@dataclass(frozen=True)
class TrainOptions:
    """The training task's options, the ``train:`` block of params.yaml.

    detflow builds this from that block before any seed runs (an argument annotated with a
    dataclass is built from its param), so an unknown, missing or out-of-range option stops
    the stage with one line naming it.
    """

    epochs: int
    lr: float
    batch_size: int
    num_workers: int
    n_samples: int

    def __post_init__(self) -> None:
        for name, minimum in (
            ("epochs", 1),
            ("batch_size", 1),
            ("num_workers", 0),
            ("n_samples", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} {value!r} is not an int")
            if value < minimum:
                raise ValueError(
                    f"{name} {value!r} is out of range: use a value at least {minimum}"
                )
        # An int is a fine learning rate; a bool is never one.
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float):
            raise ValueError(f"lr {self.lr!r} is not a number")
        if self.lr <= 0:
            raise ValueError(f"lr {self.lr!r} is out of range: use a value above 0.0")


def train(module: Any, torch_seed: int, train: TrainOptions, device: str = "cpu") -> dict:
    """A few epochs of SGD on synthetic regression data generated from ``torch_seed``.

    The DataLoader shuffles with a generator seeded from ``torch_seed``, and its workers are
    seeded too, so the run is bitwise repeatable on the CPU, ``num_workers`` > 0 included.
    ``train`` holds the options (``TrainOptions``). Returns the loss per epoch (dim ``epoch``)
    and the final parameters as one vector.
    """
    import torch
    import xarray as xr
    from torch.utils.data import DataLoader, TensorDataset

    in_features, out_features = module.in_features, module.out_features
    data_generator = torch.Generator().manual_seed(torch_seed)
    inputs, targets = synthetic_regression(
        train.n_samples, in_features, out_features, data_generator
    )
    loader = DataLoader(
        TensorDataset(inputs, targets),
        batch_size=train.batch_size,
        shuffle=True,
        num_workers=train.num_workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(torch_seed),
    )
    optimizer = torch.optim.SGD(module.parameters(), lr=train.lr)
    losses = []
    for _ in range(train.epochs):
        total, count = torch.zeros((), device=device), 0
        for batch_inputs, batch_targets in loader:
            batch_inputs, batch_targets = batch_inputs.to(device), batch_targets.to(device)
            loss = torch.nn.functional.mse_loss(module(batch_inputs), batch_targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch_inputs)
            count += len(batch_inputs)
        losses.append((total / count).item())
    weights = torch.nn.utils.parameters_to_vector(module.parameters()).detach()
    return {
        "loss": xr.DataArray(torch.tensor(losses, dtype=torch.float32).numpy(), dims="epoch"),
        "weights": weights,
    }


def scatter_sum(torch_seed: int, device: str = "cpu", n_values: int = 2_000_000) -> dict:
    """Sum many float32 values into 100 bins with ``index_add_``.

    On CUDA, ``index_add_`` accumulates with atomics whose order varies, so float32 sums
    differ from run to run unless deterministic algorithms are on.
    """
    import torch

    generator = torch.Generator().manual_seed(torch_seed)
    values = torch.rand(n_values, generator=generator).to(device)
    index = torch.randint(0, 100, (n_values,), generator=generator).to(device)
    return {"sums": torch.zeros(100, device=device).index_add_(0, index, values)}
