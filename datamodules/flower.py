"""Hugging Face datasets through Flower Datasets' ``FederatedDataset`` (optional:
``pip install flwr-datasets``).

``FromFederatedDataset(dataset="uoft-cs/cifar10", input_key="img", transform=..., num_clients=100,
partition=Dirichlet(0.5))`` loads (downloads and caches) the dataset the way Flower does, shuffled
with Flower's seed, and splits its training split among the clients with any flcore partitioner,
Flower's own through :class:`~datamodules.partition.FlwrPartitioner`. Local files load the same way,
offline: ``dataset="parquet"`` (or ``"csv"``, ``"imagefolder"``, ...) with
``load_kwargs={"data_files": {"train": ..., "test": ...}}``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset

from datamodules.partition import Partitioner
from datamodules.wrap import FromDatasets

__all__ = ["FromFederatedDataset"]


class FromFederatedDataset(FromDatasets):
    """A federated datamodule over a dataset loaded by ``flwr_datasets.FederatedDataset``: its
    ``train_split`` is split among ``num_clients`` clients by ``partition`` (flcore's, so every
    flcore and Flower partitioner applies, natural-id columns included), its ``test_split`` is the
    global test set. Rows are read lazily, as :class:`~datamodules.wrap.FromDatasets` reads them.

    Args:
        dataset: a Hugging Face Hub dataset name, or a loader name (``"parquet"``, ``"csv"``,
            ``"imagefolder"``) with ``load_kwargs["data_files"]``.
        subset: the dataset's configuration name (``FederatedDataset(subset=...)``), or ``None``.
        train_split: the split the clients share.
        test_split: the split the global model is tested on.
        shuffle: shuffle every split once after loading (Flower's default).
        shuffle_seed: the seed of that shuffle (Flower's default 42); the partition's own seed is
            ``seed``.
        load_kwargs: further keyword arguments of ``datasets.load_dataset`` (``data_files``,
            ``cache_dir``, ``revision``, ...).
        input_key: the input column (e.g. ``"img"`` for CIFAR-10, ``"image"`` for MNIST).
        label_key: the label column.
        transform: the per-row input transform (rows of PIL images need one that returns a
            tensor, e.g. ``v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])``).
        num_classes: as in :class:`~datamodules.wrap.FromDatasets`, like ``num_workers``,
            ``num_clients``, ``partition``, ``batch_size``, ``seed``, ``eval_batch_size``,
            ``val_size``, ``val_seed`` and ``public_size``.

    Raises:
        ImportError: (setup) flwr-datasets is not installed.
        ValueError: (setup) a split the dataset does not have (the message lists those it has),
            and every error of :class:`~datamodules.wrap.FromDatasets`.
    """

    def __init__(self, dataset: str, subset: str | None = None, train_split: str = "train",
                 test_split: str = "test", shuffle: bool = True, shuffle_seed: int = 42,
                 load_kwargs: dict | None = None, input_key: str = "image", label_key: str = "label",
                 transform: Callable | None = None, num_classes: int | None = None, num_workers: int = 0,
                 num_clients: int = 100, partition: Partitioner | None = None, batch_size: int = 50, seed: int = 0,
                 eval_batch_size: int = 1000, val_size: float = 0, val_seed: int = 0, public_size: float = 0):
        super().__init__(None, None, num_classes=num_classes, input_key=input_key, label_key=label_key,
                         transform=transform, num_workers=num_workers, num_clients=num_clients, partition=partition,
                         batch_size=batch_size, seed=seed, eval_batch_size=eval_batch_size, val_size=val_size,
                         val_seed=val_seed, public_size=public_size)
        self.dataset, self.subset = dataset, subset
        self.train_split, self.test_split = train_split, test_split
        self.shuffle, self.shuffle_seed = bool(shuffle), int(shuffle_seed)
        self.load_kwargs = dict(load_kwargs or {})

    def datasets(self) -> tuple[Dataset, Dataset]:
        """The ``(train, test)`` splits as ``FederatedDataset.load_split`` gives them."""
        try:
            from flwr_datasets import FederatedDataset
        except ImportError:
            raise ImportError("data: FromFederatedDataset needs flwr-datasets: pip install flwr-datasets") from None
        fds = FederatedDataset(dataset=self.dataset, subset=self.subset, partitioners={self.train_split: 1},
                               shuffle=self.shuffle, seed=self.shuffle_seed, **self.load_kwargs)
        splits = []
        for field, split in (("train_split", self.train_split), ("test_split", self.test_split)):
            try:
                splits.append(fds.load_split(split))
            except ValueError as err:
                raise ValueError(f"data.{field}: {err}") from None
        return splits[0], splits[1]
