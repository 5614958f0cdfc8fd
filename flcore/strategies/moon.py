"""MOON server (Li, He & Song, CVPR 2021): FedAvg plus each client's previous local model."""

from __future__ import annotations

from typing import Any

from flcore.strategies.base import ClientTask
from flcore.strategies.fedavg import FedAvg

__all__ = ["Moon"]


class Moon(FedAvg):
    """Server half of MOON; pair with ``model: lightning_modules.MoonModule``.

    Aggregation is FedAvg's. Each client's model after its local update is kept as that client's
    state (it lives on the client in a real deployment, so it is not counted as communication)
    and handed back at its next participation as ``z_prev``'s model.

    State: ``{"global": state_dict, "clients": {cid: {"prev": state_dict}}}``.
    """

    def initialize(self, model_state, clients_per_round, num_clients=0):
        return {**super().initialize(model_state, clients_per_round), "clients": {}}

    def configure_fit(self, rnd, clients, state, rng):
        return [ClientTask(cid=c, state=state["global"], slot=i, payload={"client_state": state["clients"].get(c, {})})
                for i, c in enumerate(clients)]

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        return self.with_client_states(super().aggregate_fit(rnd, results, state, rng), results)
