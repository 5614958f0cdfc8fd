"""FedNova server (Wang et al., NeurIPS 2020): normalized averaging, for one model or a family."""

from __future__ import annotations

from typing import Any

from flcore.functional import layerwise_average, nova_mix
from flcore.server_opt import ServerOptimizer, server_step_on
from flcore.strategies.hetero_fedavg import HeteroFedAvg
from lightning_modules.fednova import FedNovaUpload

__all__ = ["FedNova", "HeteroFedNova"]


class FedNova(HeteroFedAvg):
    """Normalized averaging; pair with ``model: lightning_modules.FedNovaModule``.

    Client i ran ``tau_i`` local steps and reports ``||a_i||_1`` (``tau_i`` for plain SGD). With
    ``p_i = n_i / sum n`` the server forms the normalized updates ``d_i = (x - y_i) / ||a_i||_1``
    and the effective step count ``tau_eff = sum_i p_i ||a_i||_1`` (FedNova Eq. 6 with the paper's
    default tau_eff), then ``x <- x - tau_eff * sum_i p_i d_i`` for every trained parameter
    (:func:`flcore.functional.nova_mix`), so a client that ran more steps (more data) does not
    pull the model further. Buffers (BatchNorm statistics) take the sample-weighted mean as in
    FedAvg. The pairing with ``FedNovaModule`` (which uploads a
    :class:`~lightning_modules.fednova.FedNovaUpload`) is checked before training; a round with
    a result that carries none is averaged as FedAvg.

    One class for both kinds of run: a homogeneous run is a family of one architecture; with
    ``trainer.architectures`` (the FedIN paper's heterogeneous FedNova baseline) every entry is
    updated over the round's clients whose architecture has it (``p_i`` and ``tau_eff``
    renormalised over those owners, the Eq. 19 idea applied to Eq. 6).

    Args:
        server_optimizer: a server optimizer stepping from x to the new x on the entries the
            round trained (:func:`flcore.server_opt.server_step_on`).
    """

    client_objective = "lightning_modules.FedNovaModule"
    runs_homogeneous = True

    def __init__(self, server_optimizer: ServerOptimizer | None = None):
        super().__init__("layerwise", weighted=True, server_optimizer=server_optimizer)

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        if not results or any(not isinstance(r.payload, FedNovaUpload) for r in results):
            return super().aggregate_fit(rnd, results, state, rng)
        x = state["global"]
        avg = layerwise_average([r.state for r in results], [r.weight for r in results])
        new_x = dict(x)
        for key, mean in avg.items():
            owners = [r for r in results if key in r.state]
            if key in owners[0].payload.param_keys and x[key].is_floating_point():
                new_x[key] = nova_mix(x[key], [r.state[key] for r in owners], [r.weight for r in owners],
                                      [r.payload.a_norm for r in owners])
            else:
                new_x[key] = mean
        if self.server_optimizer is None:
            return {**state, "global": new_x}
        stepped, opt_state = server_step_on(self.server_optimizer, x, {k: new_x[k] for k in avg}, state["server_opt"])
        return {**state, "global": {**new_x, **stepped}, "server_opt": opt_state}


#: The name of :class:`FedNova` in heterogeneous-model configs (one class serves both runs).
HeteroFedNova = FedNova
