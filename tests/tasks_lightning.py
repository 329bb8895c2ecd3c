"""A PyTorch Lightning task: a LightningModule trained by ``Trainer(deterministic=True)``,
with ``pre_task: pytorch_lightning.seed_everything`` (which takes its seed as ``seed``).

Lightning writes nothing into the project: no logger, no checkpoints, and its root folder is
a temporary one. Needs the ``lightning`` extra (``pip install -e '.[lightning]'``); Lightning is
imported when the task runs, so that this file imports (for pytest's doctest collection)
without it.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tasks_mnist import Net, synthetic_digits


def classifier(lr: float = 1.0) -> Any:
    """pytorch/examples' ``Net`` as a LightningModule: Adadelta and StepLR, as in ``mnist``."""
    import pytorch_lightning as pl

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()
            self.losses: list[float] = []

        def training_step(self, batch, batch_index):
            images, labels = batch
            loss = F.nll_loss(self.net(images), labels)
            self.losses.append(loss.detach().item())
            return loss

        def configure_optimizers(self):
            optimizer = torch.optim.Adadelta(self.parameters(), lr=lr)
            schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
            return [optimizer], [schedule]

    return Classifier()


def train(torch_seed: int, epochs: int = 2, n_samples: int = 64, batch_size: int = 16) -> dict:
    import pytorch_lightning as pl

    dataset = synthetic_digits(n_samples, torch.Generator().manual_seed(torch_seed))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model = classifier()
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            max_epochs=epochs,
            deterministic=True,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        trainer.fit(model, loader)
    return {"loss": torch.tensor(model.losses), "weights": model.net.state_dict()}
