"""Client samplers: which clients take part in a round."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

__all__ = ["ClientSampler", "UniformSampler"]


class ClientSampler(ABC):
    """Chooses the round's clients. ``sample`` gets a generator seeded from (run seed, round).

    Attributes:
        equal_weights: if true, the trainer aggregates the round's results with equal weights
            instead of sample counts (samplers that already draw proportionally to size).
    """

    equal_weights: bool = False

    def setup(self, client_sizes: list[int]) -> None:
        """Called once before training with every client's training-set size."""

    def observe(self, tasks: list, results: list) -> None:
        """Called after each round with its tasks and successful results (for adaptive samplers)."""

    @abstractmethod
    def sample(self, rnd: int, num_clients: int, k: int, rng: np.random.Generator) -> list[int]:
        """``k`` client ids in ``[0, num_clients)`` for round ``rnd`` (distinct unless the sampler
        draws with replacement, as clustered sampling does)."""

    def state_dict(self) -> dict:
        """Persistent state (none for stateless samplers)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


class UniformSampler(ClientSampler):
    """``k`` clients uniformly at random without replacement (FedAvg, FedMR, FedCross)."""

    def sample(self, rnd, num_clients, k, rng):
        return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))
