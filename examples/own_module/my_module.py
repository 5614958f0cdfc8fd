"""An ordinary LightningModule, written with no flcore import: automatic optimization, its own
``training_step`` with ``self.log`` and a TorchMetrics metric, its own ``configure_optimizers``.
flcore runs it federated as it is, from YAML (``fedavg_digits.yaml``) or Python (``run.py``)."""

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class DigitsMLP(L.LightningModule):
    """A two-layer perceptron for scikit-learn's 8x8 digits: ``(B, 1, 8, 8)`` images to ``(B, 10)``
    class scores."""

    def __init__(self, hidden: int = 32, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.train_accuracy = MulticlassAccuracy(num_classes=10)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_accuracy(logits, y)
        self.log("my_loss", loss, on_step=False, on_epoch=True)
        self.log("my_acc", self.train_accuracy, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
