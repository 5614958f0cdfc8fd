"""Partitioners: split a labelled dataset's sample indices among clients.

A partitioner is a callable ``partitioner(labels, num_clients, rng) -> list[np.ndarray]`` that
returns one array of sample indices per client. Every index appears in exactly one client
(a partition of ``range(len(labels))``). The generator ``rng`` makes the split reproducible.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

__all__ = ["Partitioner", "IID", "Dirichlet", "Shards", "ClassesPerClient", "QuantitySkew", "FlwrPartitioner",
           "label_distribution"]


class Partitioner(ABC):
    """Base class: ``__call__(labels, num_clients, rng)`` -> list of index arrays.

    A partitioner that reads per-sample columns besides the labels (a natural id) names them in
    :attr:`columns`; the datamodule then passes them as ``columns={name: (N,) array}``.
    """

    columns: tuple[str, ...] = ()

    @abstractmethod
    def __call__(self, labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Split ``range(len(labels))`` into ``num_clients`` disjoint index arrays.

        Args:
            labels: ``(N,)`` integer class labels.
            num_clients: number of clients, ``1 <= num_clients <= N``.
            rng: NumPy generator (seeded by the caller).

        Raises:
            ValueError: when the split is impossible for these labels.
        """

    @staticmethod
    def _check(labels: np.ndarray, num_clients: int) -> None:
        if num_clients < 1:
            raise ValueError(f"num_clients: must be >= 1, got {num_clients}")
        if num_clients > len(labels):
            raise ValueError(
                f"num_clients: must be <= the number of training samples ({len(labels)}), got {num_clients}"
            )


class IID(Partitioner):
    """Uniformly random split into clients of (almost) equal size."""

    def __call__(self, labels, num_clients, rng):
        self._check(labels, num_clients)
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), num_clients)]


class Dirichlet(Partitioner):
    """Label-skewed split with per-class Dirichlet proportions (Dir(beta)).

    For every class c, proportions ``p_c ~ Dir(beta * 1_N)`` over the N clients decide how
    that class's samples are dealt out; smaller beta gives more skew. As in NIID-Bench
    (Li et al., ICDE 2022) and the FedMR/FedCross experiments, a client whose share already
    exceeds ``len(labels) / N`` gets no more samples, and the draw is repeated until every
    client holds at least ``min_size`` samples.

    Args:
        beta: concentration β > 0 (papers use 0.1, 0.5, 1.0).
        min_size: minimum samples per client (default 10, NIID-Bench's value).
        max_tries: redraws before giving up.

    Raises:
        ValueError: ``beta <= 0`` or ``min_size < 0`` (at construction); the minimum size not
            reachable in ``max_tries`` draws (at call time).
    """

    def __init__(self, beta: float = 0.5, min_size: int = 10, max_tries: int = 1000):
        if not beta > 0:
            raise ValueError(f"partition.beta: must be > 0, got {beta}")
        if min_size < 0:
            raise ValueError(f"partition.min_size: must be >= 0, got {min_size}")
        self.beta = float(beta)
        self.min_size = int(min_size)
        self.max_tries = int(max_tries)

    def __call__(self, labels, num_clients, rng):
        self._check(labels, num_clients)
        labels = np.asarray(labels)
        n = len(labels)
        min_size = min(self.min_size, n // num_clients)
        classes = np.unique(labels)
        for _ in range(self.max_tries):
            parts: list[list[int]] = [[] for _ in range(num_clients)]
            for c in classes:
                idx = rng.permutation(np.flatnonzero(labels == c))
                p = rng.dirichlet(np.full(num_clients, self.beta))
                sizes = np.array([len(q) for q in parts])
                p = p * (sizes < n / num_clients)
                p = p / p.sum() if p.sum() > 0 else np.full(num_clients, 1.0 / num_clients)
                cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
                for cid, chunk in enumerate(np.split(idx, cuts)):
                    parts[cid].extend(chunk.tolist())
            if min(len(q) for q in parts) >= min_size:
                return [np.sort(np.asarray(q, dtype=np.int64)) for q in parts]
        raise ValueError(
            f"partition: Dirichlet(beta={self.beta}) could not give every one of {num_clients} clients "
            f">= {min_size} samples in {self.max_tries} draws; lower min_size or num_clients"
        )


class Shards(Partitioner):
    """Pathological non-IID split of McMahan et al. (2017): sort by label, cut into shards.

    Args:
        shards_per_client: shards each client receives (2 in the FedAvg paper).

    Raises:
        ValueError: ``shards_per_client < 1``, or fewer samples than shards.
    """

    def __init__(self, shards_per_client: int = 2):
        if shards_per_client < 1:
            raise ValueError(f"partition.shards_per_client: must be >= 1, got {shards_per_client}")
        self.shards_per_client = int(shards_per_client)

    def __call__(self, labels, num_clients, rng):
        self._check(labels, num_clients)
        num_shards = num_clients * self.shards_per_client
        if num_shards > len(labels):
            raise ValueError(
                f"partition.shards_per_client: {num_clients} clients x {self.shards_per_client} shards "
                f"exceeds the {len(labels)} samples"
            )
        order = np.argsort(labels, kind="stable")
        shards = np.array_split(order, num_shards)
        assignment = rng.permutation(num_shards).reshape(num_clients, self.shards_per_client)
        return [np.sort(np.concatenate([shards[s] for s in row])) for row in assignment]


class ClassesPerClient(Partitioner):
    """Pathological "#C = k" label skew (NIID-Bench, Li et al., ICDE 2022, Sec. 4.1): each client
    holds samples of exactly ``k`` classes. Client ``i``'s classes are ``i mod C`` and ``k - 1``
    others drawn uniformly without replacement (so every class is held by some client when
    ``num_clients >= C``); each class's samples are split evenly, at random, among the clients
    that hold it.

    Args:
        k: classes per client (1 <= k <= number of classes).

    Raises:
        ValueError: ``k < 1`` (construction); ``k`` above the number of classes, or a class held by
            more clients than it has samples (call time).
    """

    def __init__(self, k: int = 2):
        if k < 1:
            raise ValueError(f"partition.k: must be >= 1, got {k}")
        self.k = int(k)

    def __call__(self, labels, num_clients, rng):
        self._check(labels, num_clients)
        labels = np.asarray(labels)
        classes = np.unique(labels)
        if self.k > len(classes):
            raise ValueError(f"partition.k: must be <= the {len(classes)} classes, got {self.k}")
        held = []
        for i in range(num_clients):
            own = classes[i % len(classes)]
            others = rng.choice(np.setdiff1d(classes, [own]), self.k - 1, replace=False)
            held.append({own, *others.tolist()})
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            owners = [i for i in range(num_clients) if c in held[i]]
            idx = rng.permutation(np.flatnonzero(labels == c))
            if len(owners) > len(idx):
                raise ValueError(f"partition.k: class {c} has {len(idx)} samples for {len(owners)} clients")
            for i, chunk in zip(owners, np.array_split(idx, len(owners))):
                parts[i].append(chunk)
        return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


class QuantitySkew(Partitioner):
    """Quantity skew with IID labels: client sizes follow a distribution, labels are uniform.

    * ``"dirichlet"``: size proportions ``q ~ Dir(beta * 1_N)`` (NIID-Bench's quantity skew);
    * ``"power_law"``: proportions ``∝ rank^(-alpha)`` over a random order of the clients
      (LEAF-like long tail).

    Every client gets at least ``min_size`` samples; the rest follow the proportions.

    Args:
        distribution: ``"dirichlet"`` or ``"power_law"``.
        beta: Dirichlet concentration (> 0); alpha: power-law exponent (>= 0).
        min_size: samples every client receives first (>= 1).

    Raises:
        ValueError: an unknown distribution or a parameter out of range (construction); fewer
            samples than ``num_clients * min_size`` (call time).
    """

    def __init__(self, distribution: str = "dirichlet", beta: float = 0.5, alpha: float = 1.5, min_size: int = 1):
        if distribution not in ("dirichlet", "power_law"):
            raise ValueError(f"partition.distribution: must be one of ['dirichlet', 'power_law'], got {distribution!r}")
        if not beta > 0:
            raise ValueError(f"partition.beta: must be > 0, got {beta}")
        if not alpha >= 0:
            raise ValueError(f"partition.alpha: must be >= 0, got {alpha}")
        if min_size < 1:
            raise ValueError(f"partition.min_size: must be >= 1, got {min_size}")
        self.distribution, self.beta, self.alpha, self.min_size = distribution, float(beta), float(alpha), int(min_size)

    def proportions(self, num_clients: int, rng: np.random.Generator) -> np.ndarray:
        """The ``(num_clients,)`` size proportions (sum 1)."""
        if self.distribution == "dirichlet":
            return rng.dirichlet(np.full(num_clients, self.beta))
        w = np.arange(1, num_clients + 1, dtype=float) ** (-self.alpha)
        return rng.permutation(w / w.sum())

    def __call__(self, labels, num_clients, rng):
        self._check(labels, num_clients)
        n = len(labels)
        if n < num_clients * self.min_size:
            raise ValueError(f"partition.min_size: {num_clients} clients x {self.min_size} exceeds the {n} samples")
        extra = n - num_clients * self.min_size
        sizes = self.min_size + np.floor(self.proportions(num_clients, rng) * extra).astype(int)
        sizes[np.argmax(sizes)] += n - sizes.sum()  # rounding remainder to the largest client
        return [np.sort(part) for part in np.split(rng.permutation(n), np.cumsum(sizes)[:-1])]


class FlwrPartitioner(Partitioner):
    """Adapter for a Flower Datasets partitioner (``flwr_datasets.partitioner.*``; optional:
    ``pip install flwr-datasets``): its split of the training samples becomes flcore's client
    index arrays.

    The Flower partitioner is built from its class path and its own keyword arguments
    (``init_args``), then handed a Hugging Face ``datasets.Dataset`` holding the labels in
    ``label_column``, every extra column it reads, and the sample index, and asked for each
    partition; partition ``i``'s indices become client ``i``. flcore fills three arguments when
    the partitioner takes them and ``init_args`` leaves them out: ``num_partitions`` (the number
    of clients), ``partition_by`` (``label_column``) and ``seed`` (drawn from ``rng``).
    Partitioners that fix their own number of partitions (``NaturalIdPartitioner``,
    ``GroupedNaturalIdPartitioner``, ``SizePartitioner``, ``InnerDirichletPartitioner``) must make
    exactly ``num_clients``.

    A column other than the labels (a natural id, e.g. ``partition_by: writer_id``) comes from
    ``columns`` when given there, else from the datamodule: :class:`~datamodules.FromDatasets` over
    a Hugging Face dataset gives its columns (see :attr:`columns`).

    Args:
        class_path: e.g. ``"flwr_datasets.partitioner.DirichletPartitioner"``.
        init_args: the Flower partitioner's keyword arguments.
        label_column: the name the labels carry in the dataset the partitioner sees.
        columns: extra per-sample columns, name -> ``(N,)`` values over the training samples
            (after any held-out split).
        drop_unassigned: leave the samples the partitioner assigns to no client out of training
            (e.g. ``ShardPartitioner`` without ``keep_incomplete_shard``); by default that is an
            error.

    Raises:
        ImportError: flwr-datasets (or datasets) is not installed.
        ValueError: a vertical partitioner (it splits features, not samples); a partitioner whose
            number of partitions is not ``num_clients``; a column it reads that is missing or of
            the wrong length; partitions that overlap, or leave samples out without
            ``drop_unassigned``.
    """

    _VERTICAL = ("VerticalEvenPartitioner", "VerticalSizePartitioner")

    def __init__(self, class_path: str, init_args: dict | None = None, label_column: str = "label",
                 columns: dict | None = None, drop_unassigned: bool = False):
        self.class_path, self.init_args, self.label_column = class_path, dict(init_args or {}), label_column
        self.name = class_path.rpartition(".")[2]
        if self.name in self._VERTICAL:
            raise ValueError(f"partition: {self.name} splits features among parties (vertical FL), which flcore "
                             f"does not run; use a horizontal partitioner such as DirichletPartitioner")
        self.given = {k: np.asarray(v) for k, v in (columns or {}).items()}
        self.drop_unassigned = bool(drop_unassigned)

    @property
    def columns(self) -> tuple[str, ...]:
        """The extra columns the datamodule must supply: the partitioner's ``partition_by``
        when it is neither the label column nor given in ``columns``."""
        by = self.init_args.get("partition_by", self.label_column)
        return () if by == self.label_column or by in self.given else (by,)

    def _build(self, num_clients: int, rng: np.random.Generator):
        import importlib
        import inspect

        module, _, name = self.class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError as err:
            if (err.name or "").split(".")[0] != "flwr_datasets":
                raise
            raise ImportError("partition: FlwrPartitioner needs flwr-datasets: pip install flwr-datasets") from None
        takes = inspect.signature(cls).parameters
        kwargs = dict(self.init_args)
        defaults = {"num_partitions": num_clients, "partition_by": self.label_column}
        for key, value in defaults.items():
            if key in takes and key not in kwargs:
                kwargs[key] = value
        if "seed" in takes and "seed" not in kwargs:
            kwargs["seed"] = int(rng.integers(2**31))
        for key, value in kwargs.items():  # YAML gives lists where Flower checks for NumPy arrays
            if isinstance(value, list) and key in takes and "ndarray" in str(takes[key].annotation):
                kwargs[key] = np.asarray(value)
        return cls(**kwargs)

    def __call__(self, labels, num_clients, rng, columns: dict | None = None):
        self._check(labels, num_clients)
        try:
            from datasets import Dataset
        except ImportError:
            raise ImportError("partition: FlwrPartitioner needs flwr-datasets: pip install flwr-datasets") from None
        table = {**self.given, **(columns or {}), self.label_column: np.asarray(labels)}
        for key, values in table.items():
            if len(values) != len(labels):
                raise ValueError(f"partition.columns: column {key!r} has {len(values)} values for {len(labels)} "
                                 f"training samples")
        partitioner = self._build(num_clients, rng)
        partitioner.dataset = Dataset.from_dict({**{k: v.tolist() for k, v in table.items()},
                                                 "_idx": list(range(len(labels)))})
        made = partitioner.num_partitions
        if made != num_clients:
            raise ValueError(f"data.num_clients: {self.name} makes {made} partitions here; set data.num_clients to "
                             f"{made}")
        parts = [np.sort(np.asarray(partitioner.load_partition(i)["_idx"], dtype=np.int64)) for i in range(made)]
        covered = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if len(np.unique(covered)) != len(covered):
            raise ValueError(f"partition: {self.name} assigned some samples to more than one client")
        if len(covered) != len(labels) and not self.drop_unassigned:
            raise ValueError(f"partition: {self.name} assigned {len(covered)} of {len(labels)} training samples to "
                             f"clients; set partition.drop_unassigned: true to train without the rest")
        return parts


def label_distribution(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-client label counts.

    Returns:
        ``(num_clients, num_classes)`` int64 array; row ``i`` counts client ``i``'s labels.
    """
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts]).astype(np.int64)
