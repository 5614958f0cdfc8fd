"""User data as a newcomer writes it, with no flcore import, for the tests of datamodules.wrap: a
lazy dataset that reads one file per sample (with its own transform), a plain LightningDataModule,
and a Hugging Face dataset built in memory."""

from pathlib import Path

import lightning as L
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset, TensorDataset


def digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(N, 1, 8, 8)`` float32 images in [0, 1] and int labels; the
    first 1,400 samples are ``train``, the rest ``test``."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    cut = slice(0, 1400) if split == "train" else slice(1400, None)
    return x[cut], d.target[cut].astype(np.int64)


def write_npy_folder(root: Path, split: str) -> Path:
    """One ``<i>.npy`` file per sample and a ``labels.txt``, under ``root/split``."""
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    x, y = digits_arrays(split)
    for i, image in enumerate(x):
        np.save(folder / f"{i}.npy", image)
    (folder / "labels.txt").write_text("\n".join(map(str, y)))
    return folder


class NpyFolder(Dataset):
    """Reads sample ``i`` from ``folder/<i>.npy`` when asked (nothing held in memory but the
    labels, in ``targets`` as torchvision's datasets keep them); ``noise`` adds Gaussian noise drawn
    from torch's global generator, a stand-in for random augmentation. Counts its reads."""

    def __init__(self, folder: str, noise: float = 0.0):
        self.folder, self.noise, self.reads = Path(folder), noise, 0
        self.targets = [int(v) for v in (self.folder / "labels.txt").read_text().split()]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        self.reads += 1
        x = torch.from_numpy(np.load(self.folder / f"{i}.npy"))
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        return x, self.targets[i]


class PlainDigits(L.LightningDataModule):
    """An ordinary LightningDataModule over the digits (its own batch size and shuffling)."""

    def __init__(self, batch_size: int = 64):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage=None):
        self.train = TensorDataset(*map(torch.from_numpy, digits_arrays("train")))
        self.test = TensorDataset(*map(torch.from_numpy, digits_arrays("test")))

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=self.batch_size)


def hf_digits(split: str, **columns):
    """The digits as a Hugging Face ``datasets.Dataset`` with columns ``image``, ``label`` and
    any ``columns`` given (name -> per-sample values), formatted as torch tensors."""
    from datasets import Dataset as HFDataset

    x, y = digits_arrays(split)
    return HFDataset.from_dict({"image": x, "label": y, **columns}).with_format("torch")
