"""The strategy API: the server half of a federated algorithm.

A strategy sees only tensors: it turns the server state into per-client tasks
(:meth:`Strategy.configure_fit`), folds the clients' results back into the server state
(:meth:`Strategy.aggregate_fit`) and names the model to evaluate (:meth:`Strategy.global_model`).
The server state is a plain ``dict`` of tensors, lists and numbers, so one ``torch.save`` stores
it and one ``torch.load(weights_only=True)`` restores it. Randomness comes from the ``rng``
argument, seeded by the trainer from (run seed, round), never from global RNG order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flcore.functional import StateDict

__all__ = ["Strategy", "ClientTask", "ClientResult", "ClientFailure"]


@dataclass
class ClientTask:
    """Work for one client in one round.

    Attributes:
        cid: client id in ``[0, num_clients)``.
        state: the model state_dict to start from (read-only; shared between tasks).
        slot: index of the server-side model this task trains (0 for single-model strategies,
            the middleware / local model index for FedCross / FedMR).
        payload: extra data for the local objective (e.g. FedProx's global weights).
        arch: the client's architecture in heterogeneous-model runs (``None``: the one model).
    """

    cid: int
    state: StateDict
    slot: int = 0
    payload: dict[str, Any] = field(default_factory=dict)
    arch: str | None = None


@dataclass
class ClientResult:
    """Outcome of one local update.

    Attributes:
        cid, slot: as in the task.
        state: the trained model's state_dict.
        num_samples: the client's training-set size n_k (FedAvg weight).
        metrics: e.g. ``{"train_loss": float, "train_acc": float}`` of the last local epoch.
        payload: extra uploads of the local objective.
        agg_weight: aggregation weight if not the sample count (set by the trainer when the
            sampler asks for equal weights, e.g. clustered sampling).
    """

    cid: int
    slot: int
    state: StateDict
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    agg_weight: float | None = None

    @property
    def weight(self) -> float:
        """The aggregation weight: ``agg_weight`` if set, else ``num_samples`` (FedAvg's n_k)."""
        return float(self.num_samples if self.agg_weight is None else self.agg_weight)


@dataclass
class ClientFailure:
    """A local update that raised or returned non-finite weights / loss.

    Attributes:
        cid, slot: as in the task.
        reason: one line: the exception (type and message) or what was non-finite.
    """

    cid: int
    slot: int
    reason: str


class Strategy(ABC):
    """Abstract server strategy (shape of Flower's ``Strategy``)."""

    def validate(self, num_clients: int, clients_per_round: int) -> None:
        """Check hyper-parameters against the federation; raise ``ValueError`` naming the field.

        Called before any training. The base accepts everything.
        """

    @abstractmethod
    def initialize(self, model_state: StateDict, clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        """Server state at round 0, from the freshly initialised model's state_dict.

        ``num_clients`` is N, the federation's size (for participation-rate-dependent updates).
        """

    @abstractmethod
    def configure_fit(
        self, rnd: int, clients: list[int], state: dict[str, Any], rng: np.random.Generator
    ) -> list[ClientTask]:
        """Tasks of round ``rnd`` (0-based) for the sampled ``clients``."""

    @abstractmethod
    def aggregate_fit(
        self, rnd: int, results: list[ClientResult], state: dict[str, Any], rng: np.random.Generator
    ) -> dict[str, Any]:
        """New server state from the round's results (in task order; failed clients absent).

        Must not mutate ``state`` or its tensors: the trainer keeps the previous state to
        checkpoint if the run is interrupted. The results' tensors are handed over: a strategy
        may overwrite them in place (FedCross does, to need no extra model copies).
        """

    @abstractmethod
    def global_model(self, state: dict[str, Any]) -> StateDict:
        """The model to evaluate and deploy."""

    @staticmethod
    def with_client_states(state: dict[str, Any], results: list[ClientResult]) -> dict[str, Any]:
        """``state["clients"]`` updated with each result's ``client_state`` upload (client-resident
        data such as SCAFFOLD's c_i or MOON's previous model); returns a new dict."""
        clients = dict(state.get("clients", {}))
        for r in results:
            if "client_state" in r.payload:
                clients[r.cid] = r.payload["client_state"]
        return {**state, "clients": clients}
