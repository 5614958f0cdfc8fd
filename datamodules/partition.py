"""Partitioners: split a labelled dataset's sample indices among clients.

A partitioner is a callable ``partitioner(labels, num_clients, rng) -> list[np.ndarray]`` that
returns one array of sample indices per client. Every index appears in exactly one client
(a partition of ``range(len(labels))``). The generator ``rng`` makes the split reproducible.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

__all__ = ["Partitioner", "IID", "Dirichlet", "Shards", "label_distribution"]


class Partitioner(ABC):
    """Base class: ``__call__(labels, num_clients, rng)`` -> list of index arrays."""

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


def label_distribution(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-client label counts.

    Returns:
        ``(num_clients, num_classes)`` int64 array; row ``i`` counts client ``i``'s labels.
    """
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts]).astype(np.int64)
