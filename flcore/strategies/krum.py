"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017; El Mhamdi et al., ICML 2018)."""

from __future__ import annotations

from typing import Any

from flcore.functional.robust import coordinate_median, multi_krum
from flcore.server_opt import ServerOptimizer
from flcore.strategies.fedavg import FedAvg

__all__ = ["Krum"]


class Krum(FedAvg):
    """Krum / Multi-Krum aggregation: each returned model is scored by the summed squared
    distances to its ``n - f - 2`` nearest others; the global model is the unweighted mean of the
    ``num_selected`` lowest-scored models (:func:`flcore.functional.robust.multi_krum`;
    ``num_selected = 1`` is Krum). Needs ``clients_per_round > 2 f + 2`` (checked before
    training); a round whose failed clients leave fewer results uses the largest f that round
    allows, ``(n - 3) // 2``, and a round of one or two results takes their median.

    State: ``{"global": state_dict}`` (plus ``"server_opt"``).

    Args:
        num_malicious: f, the Byzantine clients tolerated per round (>= 0, default 0).
        num_selected: m, models averaged (>= 1, default 1: Krum).
        server_optimizer: as :class:`FedAvg`.

    Raises:
        ValueError: ``num_malicious < 0`` or ``num_selected < 1``.
    """

    def __init__(self, num_malicious: int = 0, num_selected: int = 1, server_optimizer: ServerOptimizer | None = None):
        super().__init__(server_optimizer)
        if num_malicious < 0:
            raise ValueError(f"strategy.num_malicious: must be >= 0, got {num_malicious}")
        if num_selected < 1:
            raise ValueError(f"strategy.num_selected: must be >= 1, got {num_selected}")
        self.num_malicious, self.num_selected = int(num_malicious), int(num_selected)

    def validate(self, num_clients: int, clients_per_round: int) -> None:
        if clients_per_round <= 2 * self.num_malicious + 2:
            raise ValueError(f"strategy.num_malicious: Krum needs trainer.clients_per_round > 2 f + 2; got "
                             f"clients_per_round = {clients_per_round} and f = {self.num_malicious}")

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        if not results:
            return state
        states, n = [r.state for r in results], len(results)
        if n < 3:
            return self.server_step(state, {**state, "global": coordinate_median(states)})
        f = min(self.num_malicious, (n - 3) // 2)
        return self.server_step(state, {**state, "global": multi_krum(states, f, min(self.num_selected, n))})
