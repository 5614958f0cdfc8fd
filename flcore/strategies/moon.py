"""MOON server (Li, He & Song, CVPR 2021): FedAvg's aggregation for the model-contrastive objective."""

from __future__ import annotations

from flcore.strategies.fedavg import FedAvg

__all__ = ["Moon"]


class Moon(FedAvg):
    """Server half of MOON; pair with ``model: lightning_modules.MoonModule`` (checked before
    training).

    Aggregation is FedAvg's (MOON paper, Algorithm 1, server side). Each client's model after its
    local update is client state (``MoonModule.client_state``): the trainer keeps it and hands it
    back at the client's next participation as ``z_prev``'s model; it lives on the client in a
    real deployment, so it is not counted as communication.

    State: ``{"global": state_dict}``.
    """

    client_objective = "lightning_modules.MoonModule"
