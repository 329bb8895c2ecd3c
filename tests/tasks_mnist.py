"""A pytorch/examples-style MNIST classifier, as a user would port it into tasks/: two conv
layers, dropout, Adadelta with a StepLR schedule and a shuffling DataLoader, on small synthetic
images (no download), returning the model's ``state_dict()`` as it is.

Written for detflow's tests (not copied): the e2e test copies this file into a project's
``tasks/`` folder and runs it with ``pre_task: detflow.seeding.seed_everything``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

IMAGE_SIZE = 14  # a quarter of MNIST's pixels keeps the test fast


class Net(nn.Module):
    """conv -> conv -> max-pool -> dropout -> fc -> dropout -> fc -> log-softmax."""

    def __init__(self, channels: int = 8, hidden: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3)
        self.conv2 = nn.Conv2d(channels, 2 * channels, kernel_size=3)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        pooled = (IMAGE_SIZE - 4) // 2
        self.fc1 = nn.Linear(2 * channels * pooled * pooled, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.conv1(images))
        features = F.max_pool2d(F.relu(self.conv2(features)), 2)
        features = torch.flatten(self.dropout1(features), 1)
        features = self.dropout2(F.relu(self.fc1(features)))
        return F.log_softmax(self.fc2(features), dim=1)


def synthetic_digits(n_samples: int, generator: torch.Generator) -> TensorDataset:
    """Noisy images whose class is the brightest of ten horizontal bands: learnable, tiny."""
    labels = torch.randint(0, 10, (n_samples,), generator=generator)
    images = 0.3 * torch.randn(n_samples, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    rows = torch.arange(IMAGE_SIZE)
    for n, label in enumerate(labels.tolist()):
        images[n, 0, rows * 10 // IMAGE_SIZE == label] += 1.0
    return TensorDataset(images, labels)


def mnist(
    torch_seed: int,
    epochs: int = 2,
    n_samples: int = 128,
    batch_size: int = 16,
    lr: float = 1.0,
    gamma: float = 0.7,
) -> dict:
    """Train ``Net`` as pytorch/examples' ``main`` does and return its losses and weights.

    The model, dropout and the DataLoader's shuffling draw from torch's global RNG, which the
    pre-task seeds; the data from a generator seeded with ``torch_seed``.
    """
    dataset = synthetic_digits(n_samples, torch.Generator().manual_seed(torch_seed))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model = Net()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma)
    losses = []
    for _ in range(epochs):
        model.train()
        total = 0.0
        for images, labels in loader:
            optimizer.zero_grad()
            loss = F.nll_loss(model(images), labels)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
        losses.append(total / n_samples)
        scheduler.step()
    return {
        "loss": xr.DataArray(torch.tensor(losses, dtype=torch.float32).numpy(), dims="epoch"),
        "weights": model.state_dict(),
    }
