"""``ClientModule``: one client's local update with plain cross-entropy (FedAvg's objective).

The federated trainer reuses one instance for every client: it loads the dispatched weights into
``net``, hands the strategy's extra payload to :meth:`ClientModule.configure_client`, runs
``lightning.Trainer.fit`` for the local epochs, and reads back ``net.state_dict()`` and
:meth:`ClientModule.client_upload`. Objectives that are "cross-entropy plus something"
(FedProx, SCAFFOLD, MOON, ...) subclass it and override :meth:`ClientModule.training_loss`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["ClientModule", "default_optimizer"]


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """SGD with learning rate 0.01 and momentum 0.5 (FedCross paper, Sec. IV-A)."""
    return torch.optim.SGD(params, lr=0.01, momentum=0.5)


class ClientModule(L.LightningModule):
    """Local objective: cross-entropy on the client's data.

    Args:
        net: the network; must expose ``num_classes`` (int) or produce ``(B, classes)`` logits.
        optimizer: factory ``params -> Optimizer``, called at each local update so optimizer
            state (momentum) starts fresh for every client, as in the papers.
        channels_last: run convolutions in channels-last memory format (faster on CPU for CNNs).

    Logged per epoch (not per step): ``train_loss``, ``train_acc``; in validate/test:
    ``val_loss``/``val_acc`` and ``test_loss``/``test_acc`` (sample-weighted means).
    """

    def __init__(self, net: nn.Module, optimizer: OptimizerCallable = default_optimizer, channels_last: bool = False):
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.channels_last = bool(channels_last)
        num_classes = int(getattr(net, "num_classes", 0)) or None
        self.num_classes = num_classes
        self.loss_mean = MeanMetric()
        self.acc = MulticlassAccuracy(num_classes=num_classes or 2, average="micro")
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    # ----- hooks the federated side uses -------------------------------------------------
    def for_architecture(self, arch: str) -> ClientModule:
        """A copy of this objective whose net is family member ``arch`` (heterogeneous-model
        runs: one reusable module per architecture). ``net`` must have ``with_architecture``
        (e.g. :class:`lightning_modules.models.HeteroResNet`).

        Raises:
            ValueError: the net is not a model family, or ``arch`` is not a member.
        """
        if not hasattr(self.net, "with_architecture"):
            raise ValueError(f"model.net: {type(self.net).__name__} has no architectures; heterogeneous runs need a "
                             f"model family such as lightning_modules.models.HeteroResNet")
        clone = copy.deepcopy(self)
        clone.net = self.net.with_architecture(arch)
        if self.channels_last:
            clone.net.to(memory_format=torch.channels_last)
        return clone

    def check_local_config(self, local: dict[str, Any]) -> None:
        """Refuse per-client Trainer settings this objective cannot honour (raise ``ValueError``
        naming the field). Called before any training. The base accepts everything."""

    def configure_client(self, payload: dict[str, Any]) -> None:
        """Receive the strategy's extra payload before training; ``net`` already holds the
        dispatched weights. ``payload["client_state"]``, if present, is data that lives on the
        client between its rounds (SCAFFOLD's control variate, MOON's previous model); it is not
        counted as communication. The base objective needs none."""

    def client_upload(self) -> dict[str, Any]:
        """Extra data to send to the server after training (e.g. SCAFFOLD's control-variate
        change); a ``"client_state"`` entry is kept for the client's next round, not sent."""
        return {}

    def training_loss(self, logits: Tensor, y: Tensor, x: Tensor) -> Tensor:
        """The local objective; subclasses add their terms. Shapes: logits ``(B, C)``, y ``(B,)``."""
        return F.cross_entropy(logits, y)

    # ----- Lightning ---------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _common_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.training_loss(logits, y, x) if stage == "train" else F.cross_entropy(logits, y)
        self._record(loss, logits, y)
        return loss

    def _record(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        """Accumulate the epoch's sample-weighted loss and accuracy (logged at epoch end)."""
        self.loss_mean.update(loss.detach(), weight=y.numel())
        self.acc.update(logits.detach(), y)

    def _log_epoch(self, stage: str) -> None:
        self.log(f"{stage}_loss", self.loss_mean.compute(), prog_bar=False)
        self.log(f"{stage}_acc", self.acc.compute(), prog_bar=False)
        self.loss_mean.reset()
        self.acc.reset()

    def training_step(self, batch, batch_idx):
        return self._common_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._common_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._common_step(batch, "test")

    def on_train_epoch_start(self) -> None:
        self.loss_mean.reset()
        self.acc.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        return self.optimizer_factory(self.net.parameters())
