"""FedTrimmedAvg: coordinate-wise trimmed-mean aggregation (Yin et al., ICML 2018)."""

from __future__ import annotations

from typing import Any

from flcore.functional.robust import trimmed_mean
from flcore.server_opt import ServerOptimizer
from flcore.strategies.fedavg import FedAvg

__all__ = ["FedTrimmedAvg"]


class FedTrimmedAvg(FedAvg):
    """FedAvg with the entry-wise beta-trimmed mean of the returned models
    (:func:`flcore.functional.robust.trimmed_mean`: the ``floor(beta * n)`` largest and smallest
    values of each entry dropped; sample counts ignored).

    State: ``{"global": state_dict}`` (plus ``"server_opt"``).

    Args:
        beta: fraction trimmed at each end, ``0 <= beta < 0.5`` (default 0.2).
        server_optimizer: as :class:`FedAvg`.

    Raises:
        ValueError: ``beta`` out of range.
    """

    def __init__(self, beta: float = 0.2, server_optimizer: ServerOptimizer | None = None):
        super().__init__(server_optimizer)
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"strategy.beta: must be in [0, 0.5), got {beta}")
        self.beta = float(beta)

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        if not results:
            return state
        return self.server_step(state, {**state, "global": trimmed_mean([r.state for r in results], self.beta)})
