"""An ordinary LightningDataModule, written with no flcore import: scikit-learn's 8x8 digits as
torch datasets behind its train and test loaders. ``fedavg_own_data.yaml`` federates it with
``datamodules.FromDataModule``, which splits its training set among the clients."""

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset


class DigitsDataModule(L.LightningDataModule):
    """Digits as ``(1, 8, 8)`` float images in [0, 1] with int labels: the first ``train_size``
    samples train, the rest test."""

    def __init__(self, train_size: int = 1400, batch_size: int = 64):
        super().__init__()
        self.train_size, self.batch_size = train_size, batch_size

    def setup(self, stage=None):
        digits = load_digits()
        x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
        y = torch.tensor(digits.target, dtype=torch.long)
        self.train = TensorDataset(x[: self.train_size], y[: self.train_size])
        self.test = TensorDataset(x[self.train_size:], y[self.train_size:])

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=self.batch_size)
