"""SCAFFOLD on heterogeneous clients: control variates key by key (FedIN paper's baseline)."""

from __future__ import annotations

from typing import Any

from flcore.functional import StateDict, layerwise_average, mix
from flcore.strategies.hetero_fedavg import HeteroFedAvg

__all__ = ["HeteroScaffold"]


class HeteroScaffold(HeteroFedAvg):
    """SCAFFOLD (Karimireddy et al., ICML 2020, Alg. 1) with layer-wise heterogeneous
    aggregation; pair with ``lightning_modules.ScaffoldModule``.

    The server keeps x and c over the union of the architectures' keys; a client receives the
    entries of both that its architecture has, and keeps its own c_i (client state, kept by the
    trainer). Per entry, over the round's
    clients that have it: ``x <- x + eta_g * mean_i (y_i - x)`` and
    ``c <- c + (1 / N_key) * sum_i delta_c_i``, with ``N_key`` the number of clients (of all N)
    whose architecture has the entry, the Eq. 19 idea applied to Alg. 1 lines 16-17. With one
    architecture this is exactly :class:`flcore.strategies.Scaffold`.

    Args:
        global_lr: eta_g > 0.

    Raises:
        ValueError: ``global_lr <= 0``.
    """

    client_objective = "lightning_modules.ScaffoldModule"

    def __init__(self, global_lr: float = 1.0):
        super().__init__("layerwise", weighted=False)
        if not global_lr > 0:
            raise ValueError(f"strategy.global_lr: must be > 0, got {global_lr}")
        self.global_lr = float(global_lr)

    def initialize(self, model_state, clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        return {**super().initialize(model_state, clients_per_round, num_clients), "c": {}}

    def configure_fit(self, rnd, clients, state, rng):
        tasks = super().configure_fit(rnd, clients, state, rng)
        per_arch: dict[str, StateDict] = {}
        for t in tasks:
            if t.arch not in per_arch:
                per_arch[t.arch] = {k: state["c"][k] for k in state["arch_keys"][t.arch] if k in state["c"]}
            t.payload = {**t.payload, "c": per_arch[t.arch]}
        return tasks

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        if not results:
            return state
        x = state["global"]
        mean_y = layerwise_average([r.state for r in results])
        new_x = dict(x)
        for key, y in mean_y.items():
            new_x[key] = mix([x[key], y], [1.0 - self.global_lr, self.global_lr])
        owners_of = {a: sum(1 for arch in self.client_arch if arch == a) for a in state["arch_keys"]}
        c = dict(state["c"])
        deltas = [r.payload["delta_c"] for r in results if "delta_c" in r.payload]
        for key in dict.fromkeys(k for d in deltas for k in d):
            have = [d[key] for d in deltas if key in d]
            n_key = max(sum(n for a, n in owners_of.items() if key in state["arch_keys"][a]), len(have))
            total = mix(have, [1.0] * len(have))
            c[key] = total / n_key if key not in c else c[key] + total / n_key
        return {**state, "global": new_x, "c": c}
