"""q-FedAvg, server half (Li, Sanjabi, Beirami and Smith, "Fair Resource Allocation in Federated
Learning", ICLR 2020, Algorithm 2): the worked example of CONTRIBUTING.md."""

from __future__ import annotations

from typing import Any

import torch

from flcore.functional import weighted_average
from flcore.strategies import FedAvg

__all__ = ["QFedAvg"]


class QFedAvg(FedAvg):
    """q-FedAvg: clients with a higher loss weigh more, so the accuracy is spread more evenly.

    Client k reports ``F_k``, its loss at the global model ``w`` (``payload["loss"]``, from
    :class:`qffl_client.QFFLModule`). With ``Delta w_k = L (w - w_k)``:
    ``Delta_k = F_k^q Delta w_k``, ``h_k = q F_k^(q-1) ||Delta w_k||^2 + L F_k^q`` and
    ``w <- w - sum_k Delta_k / sum_k h_k`` (Algorithm 2, lines 9-11), over the floating-point
    entries; integer buffers take FedAvg's mean. ``q = 0`` is FedAvg with equal weights and step
    ``1 / (L K) * L``, i.e. the plain mean.

    Args:
        q: fairness q >= 0 (default 1).
        lipschitz: L > 0, the inverse of the clients' learning rate in the paper (default 100,
            for lr 0.01).

    Raises:
        ValueError: ``q < 0`` or ``lipschitz <= 0``.
    """

    client_objective = "qffl_client.QFFLModule"

    def __init__(self, q: float = 1.0, lipschitz: float = 100.0):
        super().__init__()
        if q < 0:
            raise ValueError(f"strategy.q: must be >= 0, got {q}")
        if not lipschitz > 0:
            raise ValueError(f"strategy.lipschitz: must be > 0, got {lipschitz}")
        self.q, self.lipschitz = float(q), float(lipschitz)

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        if not results:
            return state
        w = state["global"]
        floats = [k for k, v in w.items() if v.is_floating_point()]
        num = {k: torch.zeros_like(w[k], dtype=torch.float64) for k in floats}
        den = 0.0
        for r in results:
            loss = float(r.payload["loss"])
            dw = {k: self.lipschitz * (w[k].double() - r.state[k].double()) for k in floats}
            sq = sum(float(v.pow(2).sum()) for v in dw.values())
            for k in floats:
                num[k] += loss ** self.q * dw[k]
            den += self.q * loss ** (self.q - 1) * sq + self.lipschitz * loss ** self.q
        mean = weighted_average([r.state for r in results], [r.weight for r in results])
        new = {k: (w[k].double() - num[k] / den).to(w[k].dtype) if k in num else mean[k] for k in w}
        return {**state, "global": new}
