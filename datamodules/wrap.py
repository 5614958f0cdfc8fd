"""Federated datamodules from a user's own data: any map-style ``torch.utils.data.Dataset`` (lazy,
with its own transforms), any ``LightningDataModule``, or a Hugging Face ``datasets.Dataset``.

``FromDatasets(train=my_train, test=my_test, num_clients=100, partition=Dirichlet(0.5))`` splits
``my_train`` among the clients with any :class:`~datamodules.partition.Partitioner`;
``FromDataModule(datamodule=MyDataModule(), num_clients=100, partition=...)`` does the same with
the datasets behind a LightningDataModule's train and test loaders. Samples are read from the
datasets as the loop needs them, one client's local epoch at a time (its transforms, random
augmentation included, run afresh every epoch), so the data never has to fit in memory; only
the labels are read up front (to partition), from a ``targets`` attribute (torchvision's
convention), a label column (Hugging Face), or else by reading each item once.

The in-memory datamodules (:class:`~datamodules.base.FederatedDataModule` subclasses such as
``FashionMNIST``) stay the fast path: they gather a whole epoch with one index operation, where
these pay the dataset's per-item ``__getitem__`` and collation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.base import FederatedDataModule, ShuffledEpochs, kept_samples
from datamodules.partition import Partitioner

__all__ = ["Pairs", "DatasetEpochs", "FromDatasets", "FromDataModule"]


class Pairs(Dataset):
    """A view of ``dataset`` whose items are ``(x, y)`` pairs: ``x`` a tensor, ``y`` an int64
    scalar tensor. Items may be ``(x, y)`` tuples (torchvision) or mappings (Hugging Face rows,
    read at ``input_key`` and ``label_key``).

    Args:
        dataset: a map-style dataset (``__len__`` and ``__getitem__``).
        input_key: the input field of mapping items.
        label_key: the label field of mapping items.
        transform: applied to each item's input before it is made a tensor (e.g. a PIL image to
            a ``(C, H, W)`` float tensor), or ``None``.

    Raises:
        TypeError: (on reading an item) an input that is not a tensor or array, e.g. a PIL image
            left without a ``ToImage``/``ToTensor`` transform.
    """

    def __init__(self, dataset: Dataset, input_key: str = "x", label_key: str = "label",
                 transform: Callable | None = None):
        self.dataset, self.input_key, self.label_key, self.transform = dataset, input_key, label_key, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        item = self.dataset[i]
        x, y = (item[self.input_key], item[self.label_key]) if isinstance(item, Mapping) else (item[0], item[1])
        if self.transform is not None:
            x = self.transform(x)
        if not isinstance(x, Tensor):
            if not isinstance(x, (np.ndarray, list, tuple)):
                raise TypeError(f"data: item {i} has an input of type {type(x).__name__}; give the dataset a transform "
                                f"(or set data.transform) that returns a tensor (e.g. torchvision.transforms.v2."
                                f"ToImage + ToDtype)")
            x = torch.as_tensor(np.asarray(x))
        return x, torch.as_tensor(int(y), dtype=torch.long)

    def column(self, name: str) -> np.ndarray | None:
        """The ``(N,)`` values of a Hugging Face dataset's column ``name`` (no sample is read),
        or ``None`` when the dataset has no such column."""
        data = self.dataset
        if name not in getattr(data, "column_names", ()):  # only a Hugging Face dataset has named columns
            return None
        return np.asarray(data.with_format(None)[name])

    def labels(self) -> np.ndarray:
        """The ``(N,)`` int64 labels: the dataset's ``targets`` attribute or label column when it
        has one (no sample is read), else each item's label (every item read once)."""
        data = self.dataset
        column = self.column(self.label_key)
        if column is None and hasattr(data, "targets"):
            column = data.targets
        if column is not None:
            out = np.asarray(column.cpu() if isinstance(column, Tensor) else column, dtype=np.int64).reshape(-1)
            if len(out) == len(data):
                return out
        return np.fromiter((int(self[i][1]) for i in range(len(data))), dtype=np.int64, count=len(data))


class DatasetEpochs(ShuffledEpochs):
    """A client's training data read from a dataset, with the interface of
    :class:`~datamodules.base.ShuffledEpochs`: each pass yields one item, the local epoch's list
    of ``(x (B, ...), y (B,))`` mini-batches, in a fresh order drawn from ``generator`` exactly
    as ``ShuffledEpochs`` draws it (``torch.randperm`` over the client's samples, the same
    single-sample drop rule), so the same data give the same batches bit for bit.

    Args:
        dataset: items ``(x, y)`` (a :class:`Pairs`).
        indices: the client's positions into ``dataset``.
        batch_size: mini-batch size B (>= 1).
        generator: seeds the order.
        num_workers: DataLoader worker processes reading the epoch (0: read in this process).
    """

    def __init__(self, dataset: Dataset, indices, batch_size: int, generator: torch.Generator | None = None,
                 num_workers: int = 0):
        super().__init__(None, None, indices, batch_size, generator)
        self.dataset, self.num_workers = dataset, int(num_workers)

    def __iter__(self):
        order = self.indices[torch.randperm(self.num_samples, generator=self.generator)[: self.keep]]
        loader = DataLoader(Subset(self.dataset, order.tolist()), batch_size=self.batch_size,
                            num_workers=self.num_workers)
        yield list(loader)


class FromDatasets(FederatedDataModule):
    """A federated datamodule over a user's own map-style datasets: ``train`` is split among
    ``num_clients`` clients by ``partition``; ``test`` is the global test set. Every argument of
    :class:`~datamodules.base.FederatedDataModule` but ``root`` and ``download`` applies
    (``val_size`` and ``public_size`` are carved from ``train``).

    Args:
        train: training items ``(x, y)`` or mappings (``input_key``, ``label_key``).
        test: test items, the same form.
        num_classes: the class count C (default: the largest label of ``train`` and ``test``
            plus one).
        input_key: the input field of mapping items (Hugging Face rows).
        label_key: the label field of mapping items.
        transform: a per-item input transform for both datasets (for data whose items cannot
            carry one, e.g. Hugging Face rows of PIL images:
            ``v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])``), or ``None``.
        num_workers: DataLoader worker processes reading a client's epoch and the evaluation
            sets (0: in the training process).
        num_clients: as in ``FederatedDataModule``, like ``partition``, ``batch_size``,
            ``seed``, ``eval_batch_size``, ``val_size``, ``val_seed`` and ``public_size``.

    Raises:
        ValueError: ``num_workers`` < 0, empty datasets, labels below 0 or a ``num_classes`` that
            does not cover them, and every error of ``FederatedDataModule`` (setup for the data).
    """

    def __init__(
        self,
        train: Dataset,
        test: Dataset,
        num_classes: int | None = None,
        input_key: str = "x",
        label_key: str = "label",
        transform: Callable | None = None,
        num_workers: int = 0,
        num_clients: int = 100,
        partition: Partitioner | None = None,
        batch_size: int = 50,
        seed: int = 0,
        eval_batch_size: int = 1000,
        val_size: float = 0,
        val_seed: int = 0,
        public_size: float = 0,
    ):
        super().__init__(root="", num_clients=num_clients, partition=partition, batch_size=batch_size, seed=seed,
                         eval_batch_size=eval_batch_size, val_size=val_size, val_seed=val_seed,
                         public_size=public_size)
        if num_workers < 0:
            raise ValueError(f"data.num_workers: must be >= 0, got {num_workers}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"data.num_classes: must be >= 1 or null (from the labels), got {num_classes}")
        self.train, self.test = train, test
        self.requested_classes = num_classes
        if transform is not None and not callable(transform):
            raise ValueError(f"data.transform: must be a callable (e.g. a torchvision.transforms.v2 transform) or "
                             f"null, got {type(transform).__name__}")
        self.input_key, self.label_key, self.num_workers = input_key, label_key, int(num_workers)
        self.transform = transform
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.train_labels: np.ndarray | None = None  # numpy, not tensors: they travel to Ray workers
        self.test_labels: np.ndarray | None = None

    def datasets(self) -> tuple[Dataset, Dataset]:
        """The ``(train, test)`` datasets (:class:`FromDataModule` takes them from its
        datamodule)."""
        return self.train, self.test

    def load(self):
        raise NotImplementedError("FromDatasets reads its datasets lazily (setup)")

    def setup(self, stage: str | None = None) -> None:
        """Read the labels, carve the held-out sets, compute the partition (once)."""
        if self.train_labels is not None:
            return
        train, test = (Pairs(d, self.input_key, self.label_key, self.transform) for d in self.datasets())
        if len(train) == 0 or len(test) == 0:
            raise ValueError(f"data: the {'train' if len(train) == 0 else 'test'} dataset is empty")
        labels, test_labels = train.labels(), test.labels()
        low = min(labels.min(), test_labels.min())
        high = int(max(labels.max(), test_labels.max())) + 1
        if low < 0:
            raise ValueError(f"data: labels must be class indices >= 0, found {low}")
        if self.requested_classes is not None and high > self.requested_classes:
            raise ValueError(f"data.num_classes: {self.requested_classes} does not cover label {high - 1}; "
                             f"set it to >= {high} or null")
        self.num_classes = self.requested_classes or high
        columns = {name: values for name in self.partition_columns if (values := train.column(name)) is not None}
        val, pub, keep = self.held_out(len(labels))
        if keep is not None:
            if len(val):
                self.val_set = Subset(train, val.tolist())
            if len(pub):
                self.x_public = torch.stack([train[i][0] for i in pub.tolist()])
            kept = keep.numpy()
            train, labels = Subset(train, keep.tolist()), labels[kept]
            columns = {name: values[kept] for name, values in columns.items()}
        self.train_set, self.test_set = train, test
        self.input_shape = tuple(test[0][0].shape)
        self.client_indices = self.split(labels, columns)
        self.train_labels, self.test_labels = labels, test_labels

    @property
    def y_train(self) -> Tensor:
        """``(N,)`` int64 training labels (after :meth:`setup`)."""
        return torch.from_numpy(self.train_labels)

    @property
    def y_test(self) -> Tensor:
        """``(N_test,)`` int64 test labels (after :meth:`setup`)."""
        return torch.from_numpy(self.test_labels)

    @property
    def has_val(self) -> bool:
        return self.val_set is not None

    def test_samples(self, indices) -> tuple[Tensor, Tensor]:
        items = [self.test_set[int(i)] for i in np.asarray(indices).reshape(-1)]
        if not items:
            return torch.zeros(0, *self.input_shape), torch.zeros(0, dtype=torch.long)
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])

    def _loader(self, dataset: Dataset, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, num_workers=self.num_workers, **kwargs)

    def client_dataset(self, cid: int) -> Dataset:
        """Training samples of client ``cid`` (a ``Subset`` of the train dataset)."""
        if not 0 <= cid < self.num_clients:
            raise ValueError(f"client id: must be in [0, {self.num_clients}), got {cid}")
        return Subset(self.train_set, self.client_indices[cid].tolist())

    def client_dataloader(self, cid: int, generator: torch.Generator | None = None) -> DataLoader:
        dataset = self.client_dataset(cid)
        drop = kept_samples(len(dataset), self.batch_size) < len(dataset)
        return self._loader(dataset, self.batch_size, shuffle=True, generator=generator, drop_last=drop)

    def client_batches(self, cid: int, generator: torch.Generator | None = None) -> DatasetEpochs:
        if not 0 <= cid < self.num_clients:
            raise ValueError(f"client id: must be in [0, {self.num_clients}), got {cid}")
        return DatasetEpochs(self.train_set, self.client_indices[cid], self.batch_size, generator, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            raise ValueError("data.val_size: no validation set; set a fraction in (0, 1) or a count")
        return self._loader(self.val_set, self.eval_batch_size)


class FromDataModule(FromDatasets):
    """A federated datamodule over a user's own ``LightningDataModule``: the datasets behind its
    ``train_dataloader()`` and ``test_dataloader()`` (or ``val_dataloader()`` when it has no test
    loader), after its ``prepare_data()`` and ``setup()``, split as :class:`FromDatasets` splits
    them. flcore's own ``batch_size`` replaces the loaders' batch size and sampler.

    Args:
        datamodule: the user's LightningDataModule; every other argument as in
            :class:`FromDatasets`.

    Raises:
        ValueError: (setup) a datamodule with neither a test nor a validation loader, or whose
            loaders have no ``dataset``.
    """

    def __init__(self, datamodule: L.LightningDataModule, num_classes: int | None = None, input_key: str = "x",
                 label_key: str = "label", num_workers: int = 0, num_clients: int = 100,
                 partition: Partitioner | None = None, batch_size: int = 50, seed: int = 0,
                 eval_batch_size: int = 1000, val_size: float = 0, val_seed: int = 0, public_size: float = 0):
        super().__init__(None, None, num_classes=num_classes, input_key=input_key, label_key=label_key,
                         num_workers=num_workers, num_clients=num_clients, partition=partition,
                         batch_size=batch_size, seed=seed, eval_batch_size=eval_batch_size, val_size=val_size,
                         val_seed=val_seed, public_size=public_size)
        self.datamodule = datamodule

    def datasets(self) -> tuple[Dataset, Dataset]:
        dm, name = self.datamodule, type(self.datamodule).__name__
        dm.prepare_data()
        dm.setup("fit")
        train = getattr(dm.train_dataloader(), "dataset", None)
        test = None
        for stage, hook in (("test", "test_dataloader"), ("validate", "val_dataloader")):
            if _overrides(dm, hook):
                dm.setup(stage)
                test = getattr(getattr(dm, hook)(), "dataset", None)
                break
        if train is None or test is None:
            raise ValueError(f"data.datamodule: {name} needs a train_dataloader and a test_dataloader (or "
                             f"val_dataloader) whose loaders have a map-style dataset; flcore splits the first "
                             f"among the clients and evaluates the global model on the second")
        return train, test


def _overrides(dm: L.LightningDataModule, hook: str) -> bool:
    """Whether ``dm``'s class defines ``hook`` itself (LightningDataModule's own raises)."""
    return getattr(type(dm), hook) is not getattr(L.LightningDataModule, hook)
