"""FedAvg (McMahan et al., AISTATS 2017, Algorithm 1): one global model, sample-weighted mean."""

from __future__ import annotations

from typing import Any

from flcore.functional import StateDict, weighted_average
from flcore.strategies.base import ClientResult, ClientTask, Strategy

__all__ = ["FedAvg"]


class FedAvg(Strategy):
    """Federated averaging.

    Each round every sampled client trains the global model ``w``; the server sets
    ``w <- sum_k (n_k / n) w_k`` over the returned models (all state_dict entries, BatchNorm
    buffers included; integer buffers rounded, see :mod:`flcore.functional`).

    State: ``{"global": state_dict}``.
    """

    def initialize(self, model_state: StateDict, clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        return {"global": {k: v.clone() for k, v in model_state.items()}}

    def configure_fit(self, rnd, clients, state, rng) -> list[ClientTask]:
        return [ClientTask(cid=c, state=state["global"], slot=i) for i, c in enumerate(clients)]

    def aggregate_fit(self, rnd, results: list[ClientResult], state, rng) -> dict[str, Any]:
        if not results:
            return state
        return {**state, "global": weighted_average([r.state for r in results], [r.weight for r in results])}

    def global_model(self, state) -> StateDict:
        return state["global"]
