"""FedNova server (Wang et al., NeurIPS 2020): normalized averaging."""

from __future__ import annotations

from typing import Any

from flcore.functional import nova_mix, weighted_average
from flcore.strategies.fedavg import FedAvg

__all__ = ["FedNova"]


class FedNova(FedAvg):
    """Normalized averaging; pair with ``model: lightning_modules.FedNovaModule``.

    Client i ran ``tau_i`` local steps and reports ``||a_i||_1`` (``tau_i`` for plain SGD). With
    ``p_i = n_i / sum n`` the server forms the normalized updates ``d_i = (x - y_i) / ||a_i||_1``
    and the effective step count ``tau_eff = sum_i p_i ||a_i||_1`` (FedNova Eq. 6 with the paper's
    default tau_eff), then ``x <- x - tau_eff * sum_i p_i d_i`` for every trained parameter, so a
    client that ran more steps (more data) does not pull the model further. Buffers (BatchNorm
    statistics) take the sample-weighted mean as in FedAvg. The pairing with ``FedNovaModule``
    (which uploads ``a_norm``) is checked before training; a round whose results lack ``a_norm``
    (a client that took no step) is averaged as FedAvg.
    """

    client_objective = "lightning_modules.FedNovaModule"

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        if not results or any("a_norm" not in r.payload for r in results):
            return super().aggregate_fit(rnd, results, state, rng)
        x = state["global"]
        params = set(results[0].payload.get("param_keys", x.keys()))
        avg = weighted_average([r.state for r in results], [r.weight for r in results])
        sizes, a_norms = [r.weight for r in results], [r.payload["a_norm"] for r in results]
        new_x = {key: nova_mix(x[key], [r.state[key] for r in results], sizes, a_norms)
                 if key in params and x[key].is_floating_point() else avg[key] for key in x}
        return self.server_step(state, {**state, "global": new_x})
