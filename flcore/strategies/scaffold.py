"""SCAFFOLD server (Karimireddy et al., ICML 2020, Algorithm 1)."""

from __future__ import annotations

from typing import Any

from flcore.functional import mix, weighted_average
from flcore.server_opt import ServerOptimizer
from flcore.strategies.base import ClientTask
from flcore.strategies.fedavg import FedAvg

__all__ = ["Scaffold"]


class Scaffold(FedAvg):
    """Server half of SCAFFOLD; pair with ``model: lightning_modules.ScaffoldModule``.

    Each round the server sends the global model x and the server control variate c (so twice
    the model's parameters go down); clients keep their own c_i (client state: kept and
    checkpointed by the trainer in this simulation, not counted as communication). Aggregation (Alg. 1, l. 16-17):
    ``x <- x + eta_g * mean_i (y_i - x)`` over every state_dict entry (buffers included; with
    ``eta_g = 1`` this is the plain mean), and ``c <- c + (|S| / N) * mean_i delta_c_i`` with N
    the number of clients.

    State: ``{"global": x, "c": {param: tensor}, "num_clients": N}``.

    Args:
        global_lr: eta_g > 0 (default 1).
        server_optimizer: a server optimizer stepping from x to the new x (as :class:`FedAvg`).

    Raises:
        ValueError: ``global_lr <= 0``.
    """

    client_objective = "lightning_modules.ScaffoldModule"

    def __init__(self, global_lr: float = 1.0, server_optimizer: ServerOptimizer | None = None):
        super().__init__(server_optimizer)
        if not global_lr > 0:
            raise ValueError(f"strategy.global_lr: must be > 0, got {global_lr}")
        self.global_lr = float(global_lr)

    def initialize(self, model_state, clients_per_round, num_clients=0):
        return {**super().initialize(model_state, clients_per_round), "c": {}, "num_clients": int(num_clients)}

    def configure_fit(self, rnd, clients, state, rng):
        return [ClientTask(cid=c, state=state["global"], slot=i, payload={"c": state["c"]})
                for i, c in enumerate(clients)]

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        if not results:
            return state
        x = state["global"]
        mean_y = weighted_average([r.state for r in results], [1.0] * len(results))
        new_x = {k: mix([x[k], mean_y[k]], [1.0 - self.global_lr, self.global_lr]) for k in x}
        deltas = [r.payload["delta_c"] for r in results if "delta_c" in r.payload]
        c = dict(state["c"])
        n = max(state["num_clients"], len(results))
        for key in deltas[0] if deltas else []:
            total = mix([d[key] for d in deltas], [1.0] * len(deltas))
            c[key] = total / n if key not in c else c[key] + total / n
        return self.server_step(state, {**state, "global": new_x, "c": c})
