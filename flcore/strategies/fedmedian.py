"""FedMedian: coordinate-wise median aggregation (Yin et al., ICML 2018)."""

from __future__ import annotations

from typing import Any

from flcore.functional.robust import coordinate_median
from flcore.strategies.fedavg import FedAvg

__all__ = ["FedMedian"]


class FedMedian(FedAvg):
    """FedAvg with the entry-wise median of the returned models instead of their mean
    (:func:`flcore.functional.robust.coordinate_median`; sample counts ignored): a minority of
    clients returning arbitrary models cannot move an entry beyond the honest clients' range.
    Pair with any client objective that FedAvg takes; ``server_optimizer`` as :class:`FedAvg`.

    State: ``{"global": state_dict}`` (plus ``"server_opt"``).
    """

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        if not results:
            return state
        return self.server_step(state, {**state, "global": coordinate_median([r.state for r in results])})
