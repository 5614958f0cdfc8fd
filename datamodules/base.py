"""``FederatedDataModule``: a dataset plus its partition into clients.

Usable without flcore: ``dm = Digits(num_clients=20, partition=Dirichlet(0.5)); dm.setup();
loader = dm.client_dataloader(3)``.

Data are held in memory as pre-transformed tensors (inputs float32, already normalised; labels
int64) and client batches are drawn by index (``__getitems__``), so a local epoch costs no
per-sample Python work.
"""

from __future__ import annotations

import hashlib
import os
from abc import abstractmethod
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.partition import IID, Partitioner, label_distribution

__all__ = ["FederatedDataModule", "IndexedTensors", "ShuffledEpochs", "PoissonEpochs", "DatasetNotFoundError", "collate_batch",
           "downloading", "kept_samples"]


class DatasetNotFoundError(FileNotFoundError):
    """Dataset files are missing and ``download`` is off; the message says where and how."""


@contextmanager
def downloading(root: str | os.PathLike, what: str):
    """Around a download into ``root``: runs on one machine that download into the same ``root``
    take turns (an exclusive ``fcntl`` lock on ``root/.flcore-download.lock``; the second finds
    the files in place), and a failed download (no network, a refused URL) becomes one
    :class:`DatasetNotFoundError` line naming ``data.download`` and ``data.root``."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".flcore-download.lock"), "a") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: no lock
            pass
        try:
            yield
        except DatasetNotFoundError:
            raise
        except OSError as err:  # urllib's URLError, socket errors, HTTP errors are OSErrors
            reason = str(getattr(err, "reason", "") or err).strip().splitlines()
            raise DatasetNotFoundError(
                f"data.download: could not download {what} ({reason[0][:120] if reason else type(err).__name__}); "
                f"copy the files under data.root={os.path.abspath(root)} instead") from None


def kept_samples(n: int, batch_size: int) -> int:
    """Samples of a client's ``n`` that an epoch trains on: all but a trailing mini-batch of a
    single sample, which is dropped (BatchNorm cannot train on one sample)."""
    return n - 1 if n > batch_size and n % batch_size == 1 else n


Augment = Callable  # (C, H, W) tensor -> (C, H, W) tensor


def augment_samples(x: Tensor, augment: Augment, seed: int | None = None) -> Tensor:
    """``augment`` applied to each sample of ``x`` on its own (each draws its own random
    parameters, where a torchvision ``v2`` transform given the whole batch would draw one set
    for all of it).

    Args:
        x: ``(B, ...)`` inputs.
        augment: a per-sample transform ``(...) -> (...)``, e.g. ``torchvision.transforms.v2``.
        seed: seeds the draws (torch's CPU generator, restored afterwards); ``None`` draws from
            the generator as it is.

    Returns:
        ``(B, ...)`` augmented inputs (the transform may change the per-sample shape, the same
        for every sample).
    """
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
        return torch.stack([augment(sample) for sample in x])


class IndexedTensors(Dataset):
    """A view of ``(x, y)`` restricted to ``indices``, fetched a whole batch at a time.

    Args:
        x: ``(N, ...)`` inputs; y: ``(N,)`` labels; indices: positions into ``x`` (default all).
        augment: a per-sample training transform applied to every fetched batch (drawing from
            torch's generator), or ``None``.
    """

    def __init__(self, x: Tensor, y: Tensor, indices: Sequence[int] | np.ndarray | None = None,
                 augment: Augment | None = None):
        self.x, self.y, self.augment = x, y, augment
        self.indices = None if indices is None else torch.as_tensor(np.asarray(indices), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y) if self.indices is None else len(self.indices)

    def __getitems__(self, positions: list[int]) -> tuple[Tensor, Tensor]:
        pos = torch.as_tensor(positions, dtype=torch.long)
        idx = pos if self.indices is None else self.indices[pos]
        x = self.x[idx]
        return (x if self.augment is None else augment_samples(x, self.augment)), self.y[idx]

    def __getitem__(self, position: int) -> tuple[Tensor, Tensor]:
        idx = position if self.indices is None else int(self.indices[position])
        x = self.x[idx]
        return (x if self.augment is None else self.augment(x)), self.y[idx]


class ShuffledEpochs:
    """A lean batch source for in-memory tensors: each pass is one local epoch.

    Iterating yields a single item per pass: the list of the epoch's mini-batches
    ``[(x_b, y_b), ...]``, drawn in a fresh order from ``generator`` (``torch.randperm`` over the
    client's samples, as ``DataLoader(shuffle=True)`` draws it). The samples are gathered with one
    index operation per epoch and split into contiguous views, so an epoch costs two tensor
    operations instead of one DataLoader round trip per mini-batch. A trailing mini-batch of a
    single sample is dropped (BatchNorm cannot train on one sample).

    Args:
        x: ``(N, ...)`` inputs; y: ``(N,)`` labels; indices: the client's positions into ``x``.
        batch_size: mini-batch size B (>= 1).
        generator: seeds the order; the same generator state gives the same epochs.
        augment: a per-sample training transform (:func:`augment_samples`), or ``None``. Each
            epoch's augmentation is seeded by a draw from ``generator`` after the order, so it
            depends on the client's data stream alone (not on dropout or other draws of the
            local update).

    ``len()`` is 1 (one item per pass); :attr:`num_samples` is the client's sample count and
    :attr:`num_batches` the mini-batches per epoch.
    """

    def __init__(self, x: Tensor, y: Tensor, indices, batch_size: int, generator: torch.Generator | None = None,
                 augment: Augment | None = None):
        self.x, self.y, self.augment = x, y, augment
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.batch_size = int(batch_size)
        self.generator = generator
        n = len(self.indices)
        self.keep = kept_samples(n, self.batch_size)
        self.num_samples = n

    @property
    def num_batches(self) -> int:
        return -(-self.keep // self.batch_size)

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        order = self.indices[torch.randperm(self.num_samples, generator=self.generator)[: self.keep]]
        x = self.x[order]
        if self.augment is not None:
            x = augment_samples(x, self.augment, int(torch.randint(2**62, (), generator=self.generator)))
        yield list(zip(x.split(self.batch_size), self.y[order].split(self.batch_size)))


class PoissonEpochs:
    """A client's local epochs under Poisson sampling (DP-SGD's sampling; Abadi et al., CCS
    2016): each epoch is ``S = ceil(n / B)`` mini-batches, each holding every one of the client's
    ``n`` samples independently with probability ``q = 1 / S`` (expected size ``n / S``, about
    ``B``; a mini-batch may be empty). The same interface as :class:`ShuffledEpochs`: one item
    per pass, the epoch's list of ``(x_b, y_b)``.

    Args:
        x, y, indices, batch_size, generator, augment: as :class:`ShuffledEpochs` (each mini-batch's
            augmentation is seeded by a draw from ``generator``).

    Attributes:
        sample_rate: ``q``; :attr:`num_batches`: ``S``; :attr:`num_samples`: ``n``.

    >>> import torch
    >>> src = PoissonEpochs(torch.arange(10.0), torch.arange(10), range(10), 4, torch.Generator().manual_seed(0))
    >>> src.num_batches, round(src.sample_rate, 4), len(next(iter(src)))
    (3, 0.3333, 3)
    """

    def __init__(self, x: Tensor, y: Tensor, indices, batch_size: int, generator: torch.Generator | None = None,
                 augment: Augment | None = None):
        self.x, self.y, self.augment, self.generator = x, y, augment, generator
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.batch_size = int(batch_size)
        self.num_samples = len(self.indices)
        self.num_batches = max(1, -(-self.num_samples // self.batch_size))
        self.sample_rate = 1.0 / self.num_batches

    @classmethod
    def like(cls, source: ShuffledEpochs) -> PoissonEpochs:
        """The Poisson-sampled epochs of ``source``'s client (same data, generator and
        augmentation)."""
        return cls(source.x, source.y, source.indices, source.batch_size, source.generator, source.augment)

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        chosen = torch.rand(self.num_batches, self.num_samples, generator=self.generator) < self.sample_rate
        batches = []
        for row in chosen:
            idx = self.indices[row.nonzero().squeeze(1)]
            x = self.x[idx]
            if self.augment is not None and len(idx):
                x = augment_samples(x, self.augment, int(torch.randint(2**62, (), generator=self.generator)))
            batches.append((x, self.y[idx]))
        yield batches


def collate_batch(batch):
    """Collate for :class:`IndexedTensors`: batches arrive already stacked."""
    return batch


class FederatedDataModule(L.LightningDataModule):
    """A train set split among ``num_clients`` clients, plus a global test set.

    Subclasses implement :meth:`load` and set ``num_classes`` and ``input_shape``.

    Args:
        root: directory with the dataset files (downloaded there when ``download`` is true).
        num_clients: number of clients N (>= 1, <= number of training samples).
        partition: a :class:`~datamodules.partition.Partitioner` (default IID).
        batch_size: local mini-batch size (default 50, as in the papers).
        seed: seed of the partition (the split is a function of this seed alone).
        download: fetch missing files (needs internet).
        eval_batch_size: batch size of the test and validation loaders.
        val_size: a server-held validation set carved from the training data before it is
            partitioned, never trained on: a fraction in (0, 1) of the training samples, or a
            count >= 1; 0 (default) keeps every training sample for the clients, as the papers
            do. Model selection ("best" round) uses it; the test set is only reported.
        val_seed: seed of the validation draw (uniform without replacement).
        public_size: an unlabelled server-held set carved from the training data (after the
            validation set, from the same seeded draw), never given to a client: a fraction in
            (0, 1) or a count >= 1; 0 (default) none. Its labels are dropped
            (:meth:`public_inputs`). Knowledge-transfer strategies (FedET) distil on it.
        augment: a training-time transform applied to each training sample on its own, every
            local epoch, e.g. ``torchvision.transforms.v2.Compose([RandomCrop(32, padding=4),
            RandomHorizontalFlip()])``; it sees the stored (normalised) ``(C, H, W)`` tensors and
            must keep their shape. Seeded per client and epoch from the order's generator
            (:class:`ShuffledEpochs`). ``None`` (default): no augmentation, as in the papers.
            Test, validation and public data are never augmented.

    Raises:
        ValueError: num_clients < 1, batch_size < 1, eval_batch_size < 1, val_size < 0,
            public_size < 0 (construction); num_clients larger than the training set, a val_size that leaves
            fewer training samples than clients, or a partition that leaves a client without
            samples (setup).
        DatasetNotFoundError: files missing with ``download=False``, or a download that failed
            (setup).
    """

    num_classes: int = 0
    input_shape: tuple[int, ...] = ()

    def __init__(
        self,
        root: str = "data",
        num_clients: int = 100,
        partition: Partitioner | None = None,
        batch_size: int = 50,
        seed: int = 0,
        download: bool = False,
        eval_batch_size: int = 1000,
        val_size: float = 0,
        val_seed: int = 0,
        public_size: float = 0,
        augment: Augment | None = None,
    ):
        super().__init__()
        if not public_size >= 0:
            raise ValueError(f"data.public_size: must be a fraction in (0, 1), a count >= 1, or 0 (none), got {public_size}")
        if not val_size >= 0:
            raise ValueError(f"data.val_size: must be a fraction in (0, 1), a count >= 1, or 0 (none), got {val_size}")
        if num_clients < 1:
            raise ValueError(f"data.num_clients: must be >= 1, got {num_clients}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size: must be >= 1, got {batch_size}")
        if eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size: must be >= 1, got {eval_batch_size}")
        self.root = root
        self.num_clients = int(num_clients)
        self.partition = partition if partition is not None else IID()
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.seed = int(seed)
        self.download = bool(download)
        self.val_size, self.val_seed = val_size, int(val_seed)
        self.public_size = public_size
        if augment is not None and not callable(augment):
            raise ValueError(f"data.augment: must be a callable transform (e.g. a torchvision.transforms.v2 "
                             f"transform) or null, got {type(augment).__name__}")
        self.augment = augment
        self.x_public: Tensor | None = None
        self.x_val: Tensor | None = None
        self.y_val: Tensor | None = None
        self.x_train: Tensor | None = None
        self.client_indices: list[np.ndarray] = []

    @abstractmethod
    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return ``(x_train, y_train, x_test, y_test)``: float inputs ``(N, C, H, W)`` (or
        ``(N, ...)``), int64 labels ``(N,)``.

        Raises:
            DatasetNotFoundError: files missing and ``self.download`` false.
        """

    def setup(self, stage: str | None = None) -> None:
        """Load the data once and compute the partition (seeded by ``seed``)."""
        if self.x_train is not None:
            return
        x_train, y_train, x_test, y_test = self.load()
        val, pub, keep = self.held_out(len(y_train))
        if keep is not None:
            if len(val):
                self.x_val, self.y_val = x_train[val].contiguous(), y_train[val].long()
            if len(pub):
                self.x_public = x_train[pub].contiguous()
            x_train, y_train = x_train[keep], y_train[keep]
        self.x_train, self.y_train = x_train.contiguous(), y_train.long()
        self.x_test, self.y_test = x_test.contiguous(), y_test.long()
        self.client_indices = self.split(self.y_train.numpy())

    def held_out(self, n: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """The server-held sets carved from ``n`` training samples before partitioning:
        ``(val, public, keep)`` sorted position tensors (``val_size``, then ``public_size``, from
        one draw seeded by ``val_seed``); ``keep`` is ``None`` when nothing is held out.

        Raises:
            ValueError: a held-out set that leaves fewer training samples than clients.
        """
        n_val = self._count("val_size", self.val_size, n, 0)
        n_pub = self._count("public_size", self.public_size, n, n_val)
        if not (n_val or n_pub):
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty, None
        order = torch.from_numpy(np.random.default_rng(self.val_seed).permutation(n))
        return (order[:n_val].sort().values, order[n_val:n_val + n_pub].sort().values,
                order[n_val + n_pub:].sort().values)

    def split(self, labels: np.ndarray, columns: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """The partition of the ``(N,)`` training labels into ``num_clients`` index arrays
        (``partition``, seeded by ``seed``).

        Args:
            labels: ``(N,)`` training labels.
            columns: the data's other per-sample columns, name -> ``(N,)`` values; those the
                partitioner declares (:attr:`Partitioner.columns`) are passed to it.

        Raises:
            ValueError: a column the partitioner reads that the data lacks; a client left
                without training samples.
        """
        rng = np.random.default_rng(self.seed)
        needs = self.partition_columns
        if needs:
            missing = [name for name in needs if name not in (columns or {})]
            if missing:
                raise ValueError(f"data.partition: {type(self.partition).__name__} reads the column(s) {missing}, "
                                 f"which {type(self).__name__} does not have; use FromDatasets over a dataset with "
                                 f"those columns, or give FlwrPartitioner their values (columns)")
            parts = self.partition(labels, self.num_clients, rng, columns={name: columns[name] for name in needs})
        else:
            parts = self.partition(labels, self.num_clients, rng)
        empty = [c for c, part in enumerate(parts) if len(part) == 0]
        if empty:  # a client with no data can never train: refuse it here, not in round r of a run
            raise ValueError(
                f"data.partition: {len(empty)} of {self.num_clients} clients get no training samples "
                f"(clients {empty[:5]}{' ...' if len(empty) > 5 else ''}); lower data.num_clients or set "
                f"partition.min_size >= 1")
        return parts

    def _count(self, field: str, v: float, n: int, taken: int) -> int:
        """Samples a held-out set of size ``v`` (fraction or count) takes from ``n``, after
        ``taken`` already held out; refuses one that leaves fewer samples than clients."""
        count = int(round(v * n)) if 0 < v < 1 else int(v)
        left = n - taken - count
        if count and left < self.num_clients <= n:  # (more clients than samples: the partitioner says so)
            have = f"{max(left, 0)} training samples" if left >= 0 else f"no training samples ({n - taken} available)"
            raise ValueError(f"data.{field}: {v:g} leaves {have} for {self.num_clients} clients")
        return count

    def public_inputs(self) -> Tensor:
        """The unlabelled server-held inputs ``(P, ...)`` (``public_size``), after :meth:`setup`.

        Raises:
            ValueError: no public set (``public_size`` is 0).
        """
        if self.x_public is None:
            raise ValueError("data.public_size: no public set; set a fraction in (0, 1) or a count")
        return self.x_public

    @property
    def has_val(self) -> bool:
        """Whether a validation set was carved (after :meth:`setup`)."""
        return self.x_val is not None

    @property
    def partition_columns(self) -> tuple[str, ...]:
        """The per-sample columns besides the labels that the partitioner reads
        (:attr:`Partitioner.columns`; none for a plain callable)."""
        return self.partition.columns if isinstance(self.partition, Partitioner) else ()

    def prepare_net(self, net: torch.nn.Module) -> None:
        """Data-dependent initialisation of a freshly built ``net`` before round 1 (e.g.
        Sent140's GloVe embeddings); nothing by default.

        Raises:
            ValueError: (overrides) a net this data cannot initialise.
        """

    def save_artifacts(self, directory: Path) -> None:
        """Write what a run folder needs to read its records besides the weights (e.g. Sent140's
        vocabulary); nothing by default."""

    @property
    def client_sizes(self) -> list[int]:
        """Number of training samples of each client (after :meth:`setup`)."""
        return [len(p) for p in self.client_indices]

    def label_distribution(self) -> np.ndarray:
        """``(num_clients, num_classes)`` label counts of the clients' training data."""
        return label_distribution(self.y_train.numpy(), self.client_indices, self.num_classes)

    def client_test_sets(self, size: int = 100) -> list[np.ndarray]:
        """Each client's held-out local test data, as index arrays into the global test set
        (``x_test``): LEAF datamodules return the users' own test splits; others draw, for every
        client, ``size`` test samples whose labels follow that client's training label
        distribution (largest-remainder rounding; without replacement within a client, capped at
        the test samples of the class), seeded by ``seed``. Cached per ``size``.

        Raises:
            ValueError: ``size < 1``.
        """
        native = getattr(self, "client_test_indices", None)
        if native:
            return native
        if size < 1:
            raise ValueError(f"trainer.client_test_size: must be >= 1, got {size}")
        cache = self.__dict__.setdefault("_client_test_sets", {})
        if size not in cache:
            rng = np.random.default_rng([self.seed, 7])
            y_test = self.y_test.numpy()
            by_class = [np.flatnonzero(y_test == c) for c in range(self.num_classes)]
            sets = []
            for counts in self.label_distribution():
                share = counts / max(counts.sum(), 1) * size
                k = np.floor(share).astype(int)
                k[np.argsort(-(share - k))[: size - k.sum()]] += 1
                sets.append(np.sort(np.concatenate(
                    [rng.choice(by_class[c], min(k[c], len(by_class[c])), replace=False) for c in range(len(k))
                     if k[c] and len(by_class[c])] or [np.zeros(0, dtype=np.int64)])))
            cache[size] = sets
        return cache[size]

    def test_samples(self, indices) -> tuple[Tensor, Tensor]:
        """Global test samples ``indices`` (a sequence or ``(n,)`` tensor of positions) as
        ``(x (n, ...), y (n,))`` tensors, e.g. a probe batch for the pre-training checks or the
        samples of per-client evaluation."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return self.x_test[idx], self.y_test[idx]

    def partition_checksum(self) -> str:
        """SHA-256 of the partition (to check that a resumed run sees the same split)."""
        h = hashlib.sha256()
        for p in self.client_indices:
            h.update(np.asarray(p, dtype=np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()

    def client_dataset(self, cid: int) -> IndexedTensors:
        """Training samples of client ``cid``."""
        if not 0 <= cid < self.num_clients:
            raise ValueError(f"client id: must be in [0, {self.num_clients}), got {cid}")
        return IndexedTensors(self.x_train, self.y_train, self.client_indices[cid])

    def client_dataloader(self, cid: int, generator: torch.Generator | None = None) -> DataLoader:
        """Shuffled mini-batches of client ``cid``; ``generator`` fixes the order. A trailing
        batch of a single sample is dropped (BatchNorm cannot train on one sample; with shuffling
        it is a different sample each epoch)."""
        dataset = self.client_dataset(cid)
        dataset.augment = self.augment
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=collate_batch,
            drop_last=kept_samples(len(dataset), self.batch_size) < len(dataset),
        )

    def client_batches(self, cid: int, generator: torch.Generator | None = None) -> ShuffledEpochs:
        """Client ``cid``'s training data as a :class:`ShuffledEpochs` source (one item per local
        epoch: that epoch's shuffled mini-batches); what the federated loop trains on. The same
        samples and drop rule as :meth:`client_dataloader`."""
        if not 0 <= cid < self.num_clients:
            raise ValueError(f"client id: must be in [0, {self.num_clients}), got {cid}")
        return ShuffledEpochs(self.x_train, self.y_train, self.client_indices[cid], self.batch_size, generator,
                              self.augment)

    def train_dataloader(self) -> DataLoader:
        """All training data (centralised training; not used by the federated loop)."""
        return DataLoader(
            IndexedTensors(self.x_train, self.y_train, augment=self.augment), batch_size=self.batch_size, shuffle=True,
            collate_fn=collate_batch,
        )

    def test_dataloader(self) -> DataLoader:
        """The global test set, in order."""
        return DataLoader(
            IndexedTensors(self.x_test, self.y_test), batch_size=self.eval_batch_size, collate_fn=collate_batch
        )

    def val_dataloader(self) -> DataLoader:
        """The server-held validation set (``val_size``), in order.

        Raises:
            ValueError: no validation set (``val_size`` is 0).
        """
        if self.x_val is None:
            raise ValueError("data.val_size: no validation set; set a fraction in (0, 1) or a count")
        return DataLoader(IndexedTensors(self.x_val, self.y_val), batch_size=self.eval_batch_size,
                          collate_fn=collate_batch)
