"""SCAFFOLD server (Karimireddy et al., ICML 2020, Algorithm 1)."""

from __future__ import annotations

from typing import Any

from flcore.functional import RunningMix, mix, weighted_average
from flcore.server_opt import ServerOptimizer
from lightning_modules.terms import ControlVariates
from flcore.strategies.base import ClientResult, ClientTask, RoundAccumulator
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

    def client_terms(self) -> list:
        """``[ControlVariates()]``: SCAFFOLD's client half for a user's own LightningModule."""
        return [ControlVariates()]

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
        mean_y = weighted_average([r.state for r in results], [1.0] * len(results))
        deltas = [r.payload["delta_c"] for r in results if "delta_c" in r.payload]
        totals = {key: mix([d[key] for d in deltas], [1.0] * len(deltas)) for key in (deltas[0] if deltas else [])}
        return self._update(state, mean_y, totals, len(results))

    def _update(self, state, mean_y, delta_totals, count: int) -> dict[str, Any]:
        """``x <- x + eta_g (mean_y - x)`` and ``c <- c + (1 / N) sum_i delta_c_i`` (Alg. 1,
        lines 16-17) from the round's mean model and summed control-variate updates."""
        x = state["global"]
        new_x = {k: mix([x[k], mean_y[k]], [1.0 - self.global_lr, self.global_lr]) for k in x}
        c = dict(state["c"])
        n = max(state["num_clients"], count)
        for key, total in delta_totals.items():
            c[key] = total / n if key not in c else c[key] + total / n
        return self.server_step(state, {**state, "global": new_x, "c": c})

    def accumulator(self, rnd, state, weights):
        """Alg. 1's two sums one result at a time (:class:`ScaffoldSums`); ``None`` for two tasks
        (as :meth:`FedAvg.accumulator`) or a subclass with an aggregation of its own."""
        if type(self).aggregate_fit is not Scaffold.aggregate_fit or len(weights) == 2:
            return None
        return ScaffoldSums(len(weights), lambda mean_y, totals, count: self._update(state, mean_y, totals, count))


class ScaffoldSums(RoundAccumulator):
    """SCAFFOLD's server sums over results taken one at a time: the unweighted mean of the
    returned models and the sum of their ``delta_c`` uploads, equal bit for bit to
    :meth:`Scaffold.aggregate_fit` when every task returned (renormalised to the returned count
    otherwise). Each result's ``state`` and ``payload`` are emptied once added.

    Args:
        expected: the number of tasks.
        done: ``(mean model, {key: summed delta_c}, returned count) -> new server state``.
    """

    def __init__(self, expected: int, done):
        self.expected, self.count, self.done = expected, 0, done
        self.models: dict[str, RunningMix] = {}
        self.deltas: dict[str, RunningMix] = {}

    def add(self, result: ClientResult) -> None:
        self.count += 1
        share = 1.0 / self.expected
        for key, tensor in result.state.items():
            self.models.setdefault(key, RunningMix()).add(tensor, share)
        for key, tensor in result.payload.get("delta_c", {}).items():
            self.deltas.setdefault(key, RunningMix()).add(tensor, 1.0)
        result.state, result.payload = {}, {}

    def finish(self, rnd, results, state, rng):
        if not results:
            return state
        if self.count != self.expected:
            for m in self.models.values():
                m.scale_(self.expected / self.count)
        return self.done({k: m.result() for k, m in self.models.items()},
                         {k: m.result() for k, m in self.deltas.items()}, self.count)
