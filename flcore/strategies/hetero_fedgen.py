"""FedGen on heterogeneous clients (FedIN paper, Sec. 5.1 and Table 1): layer-wise heterogeneous
aggregation of a model family plus FedGen's server-trained feature generator."""

from __future__ import annotations

from typing import Any

from flcore.strategies.base import ClientTask
from flcore.strategies.fedgen import GeneratorServer
from flcore.strategies.hetero_fedavg import HeteroFedAvg

__all__ = ["HeteroFedGen"]


class HeteroFedGen(GeneratorServer, HeteroFedAvg):
    """FedGen (Zhu, Hong & Zhou, ICML 2021) over a model family (ResNet10 ... ResNet26), as the
    FedIN paper's comparison ran it: the models are aggregated as :class:`HeteroFedAvg` does
    (``aggregation="layerwise"``, FedIN Eq. 19, by default), and the generator is trained on the
    round's clients' classifier heads as in :class:`GeneratorServer`.

    This works because every family member ends in the same classifier, ``(B, 8 * width) ->
    (B, classes)``: one generator of ``8 * width`` features serves every architecture, and every
    client's head is a teacher. Pair with ``lightning_modules.FedGenModule`` (its generated-
    feature regulariser acts on the client's own classifier).

    State: HeteroFedAvg's plus ``{"generator", "generator_opt", "generator_trained"}``.

    Args:
        aggregation, weighted: as :class:`HeteroFedAvg`.
        noise_dim, hidden, generator_lr, generator_steps, generator_batch, diversity_weight: as
            :class:`GeneratorServer`.

    Raises:
        ValueError: as :class:`HeteroFedAvg` and :class:`GeneratorServer`.
    """

    def __init__(self, aggregation: str = "layerwise", weighted: bool | None = None, noise_dim: int = 32,
                 hidden: int = 256, generator_lr: float = 3e-4, generator_steps: int = 5, generator_batch: int = 32,
                 diversity_weight: float = 1.0):
        super().__init__(aggregation, weighted)
        self._set_generator_args(noise_dim, hidden, generator_lr, generator_steps, generator_batch, diversity_weight)

    def initialize(self, model_state, clients_per_round, num_clients=0) -> dict[str, Any]:
        """``model_state``: one initial state_dict per architecture (all share the classifier)."""
        first = next(iter(model_state.values()))
        return {**super().initialize(model_state, clients_per_round, num_clients),
                **self.initial_generator(first)}

    def configure_fit(self, rnd, clients, state, rng) -> list[ClientTask]:
        payload = self.generator_payload(state)
        tasks = super().configure_fit(rnd, clients, state, rng)
        for t in tasks:
            t.payload = payload
        return tasks

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        return {**super().aggregate_fit(rnd, results, state, rng),
                **self.updated_generator(results, state, rng)}
