"""Client samplers: which clients take part in a round."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

__all__ = ["ClientSampler", "UniformSampler"]


class ClientSampler(ABC):
    """Chooses the round's clients. ``sample`` gets a generator seeded from (run seed, round)."""

    @abstractmethod
    def sample(self, rnd: int, num_clients: int, k: int, rng: np.random.Generator) -> list[int]:
        """``k`` distinct client ids in ``[0, num_clients)`` for round ``rnd``."""

    def state_dict(self) -> dict:
        """Persistent state (none for stateless samplers)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


class UniformSampler(ClientSampler):
    """``k`` clients uniformly at random without replacement (FedAvg, FedMR, FedCross)."""

    def sample(self, rnd, num_clients, k, rng):
        return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))
