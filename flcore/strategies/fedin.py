"""FedIN server (FedIN paper, Sec. 4 and Fig. 2): heterogeneous aggregation plus a bank of client
features that the server redistributes for IN training."""

from __future__ import annotations

from typing import Any

import torch

from flcore.strategies.base import ClientResult, ClientTask
from flcore.strategies.hetero_fedavg import HeteroFedAvg
from lightning_modules.fedin import FedINTask, FedINUpload

__all__ = ["FedIN"]


class FedIN(HeteroFedAvg):
    """Federated Intermediate Layers Learning, the server half.

    * Every client uploads, besides its weights, one batch of client features
      ``(s_in, s_out)`` = (extractor output, intermediate-layers output) of its own data
      (Eq. 4-6; Fig. 2 step 3). The server keeps the newest batch of every client (the
      feature bank, checkpointed with the models).
    * Each client of a round receives ``feature_batches`` batches of server features, drawn
      without replacement from the bank entries of *other* clients (Fig. 2 step 1; Fig. 6d
      varies this number). Before any client has uploaded, there are none and IN training is
      skipped.
    * Weights are aggregated layer-wise (Eq. 19, the paper's main setting) or within identical
      architectures (Eq. 20/21, the paper's Table 3): see :class:`HeteroFedAvg`.

    Pair with ``model: lightning_modules.FedINModule`` (local training with the proximal term,
    IN training, gradient correction and the privacy noise). Feature batches count in
    ``round/bytes_up`` / ``round/bytes_down``.

    State: :class:`HeteroFedAvg`'s plus ``{"features": {client id: {"s_in", "s_out"}}}``.

    Args:
        aggregation, weighted: as :class:`HeteroFedAvg`.
        feature_batches: server feature batches sent to each client per round (>= 1; paper: 1).

    Raises:
        ValueError: ``feature_batches < 1``; unknown ``aggregation``.
    """

    exchanges_features = True
    client_objective = "lightning_modules.FedINModule"

    def __init__(self, aggregation: str = "layerwise", weighted: bool | None = None, feature_batches: int = 1):
        super().__init__(aggregation, weighted)
        if feature_batches < 1:
            raise ValueError(f"strategy.feature_batches: must be >= 1, got {feature_batches}")
        self.feature_batches = int(feature_batches)

    def initialize(self, model_state, clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        return {**super().initialize(model_state, clients_per_round, num_clients), "features": {}}

    def configure_fit(self, rnd, clients, state, rng) -> list[ClientTask]:
        tasks = super().configure_fit(rnd, clients, state, rng)
        bank = state["features"]
        for task in tasks:
            others = sorted(c for c in bank if c != task.cid)
            if not others:
                continue
            picked = rng.choice(len(others), size=min(self.feature_batches, len(others)), replace=False)
            batches = [bank[others[i]] for i in sorted(picked)]
            task.payload = FedINTask(torch.cat([b["s_in"] for b in batches]), torch.cat([b["s_out"] for b in batches]),
                                     torch.tensor([len(b["s_in"]) for b in batches]))
        return tasks

    def aggregate_fit(self, rnd, results: list[ClientResult], state, rng) -> dict[str, Any]:
        new = super().aggregate_fit(rnd, results, state, rng)
        bank = dict(state["features"])
        for r in results:
            if isinstance(r.payload, FedINUpload):
                bank[r.cid] = {"s_in": r.payload.s_in, "s_out": r.payload.s_out}
        return {**new, "features": bank}
