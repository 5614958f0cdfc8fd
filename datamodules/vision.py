"""Image datasets: scikit-learn Digits (embedded), MNIST, Fashion-MNIST, CIFAR-10/100.

The torchvision datasets read the genuine files under ``root`` (``root/MNIST/raw`` IDX files,
``root/cifar-10-batches-py`` pickles, ...) and download them there when ``download=True``.
No data augmentation by default (the FedMR / FedCross experiments use none; see ``augment``); inputs are normalised with
the usual per-channel statistics.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datamodules.base import DatasetNotFoundError, FederatedDataModule, downloading

__all__ = ["Digits", "MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "DEBIAN_FASHION_MNIST"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _normalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``(x - mean) / std`` per channel for ``(N, C, H, W)`` input."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


class Digits(FederatedDataModule):
    """scikit-learn's handwritten digits: 1,797 grey 8x8 images, 10 classes, no download.

    A fixed stratified 80/20 train/test split (``random_state=0``, independent of ``seed``):
    1,437 training and 360 test images, shape ``(1, 8, 8)``, pixels scaled to ``[0, 1]``.
    """

    num_classes = 10
    input_shape = (1, 8, 8)

    def load(self):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        y = torch.tensor(y, dtype=torch.long)
        tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y.numpy())
        return x[tr], y[tr], x[te], y[te]


class _TorchvisionImages(FederatedDataModule):
    """Shared loader: a torchvision dataset class, its normalisation, and how to get the files."""

    tv_name: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    where: str = ""

    def _open(self, train: bool):
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.tv_name)
        try:
            if self.download:
                with downloading(self.root, self.tv_name):
                    return cls(root=self.root, train=train, download=True)
            return cls(root=self.root, train=train, download=False)
        except RuntimeError as err:
            if "not found" not in str(err).lower() and "corrupted" not in str(err).lower():
                raise
            raise DatasetNotFoundError(
                f"data.root: {self.tv_name} files not found under {os.path.abspath(self.root)} "
                f"(expected {self.where}); set data.download: true on a machine with internet, "
                f"or copy the files there"
            ) from None

    @staticmethod
    def _to_tensor(data) -> Tensor:
        x = torch.as_tensor(np.asarray(data))
        if x.dim() == 3:  # (N, H, W) grey
            x = x.unsqueeze(1)
        else:  # (N, H, W, C)
            x = x.permute(0, 3, 1, 2)
        return x.float().div_(255.0).contiguous()

    def load(self):
        tr, te = self._open(True), self._open(False)
        x_tr = _normalise(self._to_tensor(tr.data), self.mean, self.std)
        x_te = _normalise(self._to_tensor(te.data), self.mean, self.std)
        return x_tr, torch.as_tensor(tr.targets), x_te, torch.as_tensor(te.targets)


class MNIST(_TorchvisionImages):
    """MNIST: 60,000 / 10,000 grey 28x28 images, 10 classes (files in ``root/MNIST/raw``)."""

    num_classes = 10
    input_shape = (1, 28, 28)
    tv_name = "MNIST"
    mean, std = (0.1307,), (0.3081,)
    where = "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"


class FashionMNIST(_TorchvisionImages):
    """Fashion-MNIST: 60,000 / 10,000 grey 28x28 images, 10 classes.

    Reads ``root/FashionMNIST/raw``. When Debian's ``dataset-fashion-mnist`` package is installed
    (``/usr/share/datasets/fashion-mnist``) and ``download`` is off, the package's gzip IDX files
    that are missing there are unpacked into ``root/FashionMNIST/raw`` (atomically, so runs
    started together on a fresh root do not race) and used.
    """

    num_classes = 10
    input_shape = (1, 28, 28)
    tv_name = "FashionMNIST"
    mean, std = (0.2860,), (0.3530,)
    where = (
        "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte; "
        "or install Debian's dataset-fashion-mnist package"
    )

    def load(self):
        raw = Path(self.root) / "FashionMNIST" / "raw"
        if not self.download and DEBIAN_FASHION_MNIST.is_dir():
            _unpack_debian_fashion_mnist(raw)
        return super().load()


def _unpack_debian_fashion_mnist(raw: Path) -> None:
    """Unpack the Debian package's gzip IDX files into ``raw``, each file that is missing there.

    Safe for runs started together on one fresh ``root``: each file is decompressed into a
    private temporary file beside its destination and moved into place with one atomic
    ``os.replace``, so a reader sees a missing file or a whole one, never a partial one.
    """
    raw.mkdir(parents=True, exist_ok=True)
    for gz in sorted(DEBIAN_FASHION_MNIST.glob("*-ubyte.gz")):
        target = raw / gz.name[: -len(".gz")]
        if target.exists():
            continue
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(gz, "rb") as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class CIFAR10(_TorchvisionImages):
    """CIFAR-10: 50,000 / 10,000 colour 32x32 images, 10 classes (``root/cifar-10-batches-py``)."""

    num_classes = 10
    input_shape = (3, 32, 32)
    tv_name = "CIFAR10"
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    where = "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"


class CIFAR100(_TorchvisionImages):
    """CIFAR-100: 50,000 / 10,000 colour 32x32 images, 100 fine classes (``root/cifar-100-python``)."""

    num_classes = 100
    input_shape = (3, 32, 32)
    tv_name = "CIFAR100"
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    where = "cifar-100-python/{train,test,meta}"


class SVHN(FederatedDataModule):
    """SVHN cropped digits: 73,257 / 26,032 colour 32x32 images, 10 classes (digit ``0`` has
    label 0; the files' label 10 is mapped to 0, as torchvision does).

    Reads torchvision's layout, ``root/train_32x32.mat`` and ``root/test_32x32.mat`` (MATLAB files:
    ``X`` of shape ``(32, 32, 3, N)`` uint8, ``y`` of shape ``(N, 1)``), with SciPy; with
    ``download=True`` missing files are fetched by ``torchvision.datasets.SVHN``.
    """

    num_classes = 10
    input_shape = (3, 32, 32)
    mean, std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        from scipy.io import loadmat

        path = Path(self.root) / f"{split}_32x32.mat"
        if not path.is_file() and self.download:
            import torchvision.datasets as tvd

            with downloading(self.root, "SVHN"):
                tvd.SVHN(root=self.root, split=split, download=True)
        if not path.is_file():
            raise DatasetNotFoundError(
                f"data.root: SVHN file {split}_32x32.mat not found under {os.path.abspath(self.root)}; set "
                f"data.download: true on a machine with internet, or copy the files there"
            )
        mat = loadmat(str(path))
        x = torch.from_numpy(np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)))).float().div_(255.0)
        y = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1))
        y[y == 10] = 0
        return _normalise(x, self.mean, self.std).contiguous(), y

    def load(self):
        return (*self._split("train"), *self._split("test"))
