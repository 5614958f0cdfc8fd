"""FedNova on heterogeneous clients: normalized averaging, key by key (FedIN paper's baseline)."""

from __future__ import annotations

from typing import Any

from flcore.functional import layerwise_average, nova_mix
from flcore.strategies.hetero_fedavg import HeteroFedAvg

__all__ = ["HeteroFedNova"]


class HeteroFedNova(HeteroFedAvg):
    """FedNova's normalized averaging with layer-wise heterogeneous aggregation; pair with
    ``lightning_modules.FedNovaModule``.

    Every trained parameter entry is updated by :func:`flcore.functional.nova_mix` over the
    round's clients whose architecture has it (``p_i`` and ``tau_eff`` renormalised over those
    owners, the Eq. 19 idea applied to FedNova's Eq. 6); buffers take the owners' sample-weighted
    mean. With one architecture this is exactly :class:`flcore.strategies.FedNova`. Without
    ``a_norm`` in the clients' payloads it is layer-wise FedAvg (sample-weighted).
    """

    client_objective = "lightning_modules.FedNovaModule"

    def __init__(self):
        super().__init__("layerwise", weighted=True)

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        if not results or any("a_norm" not in r.payload for r in results):
            return super().aggregate_fit(rnd, results, state, rng)
        x = state["global"]
        avg = layerwise_average([r.state for r in results], [r.weight for r in results])
        new_x = dict(x)
        for key, mean in avg.items():
            owners = [r for r in results if key in r.state]
            if key in owners[0].payload.get("param_keys", ()) and x[key].is_floating_point():
                new_x[key] = nova_mix(x[key], [r.state[key] for r in owners], [r.weight for r in owners],
                                      [r.payload["a_norm"] for r in owners])
            else:
                new_x[key] = mean
        return {**state, "global": new_x}
