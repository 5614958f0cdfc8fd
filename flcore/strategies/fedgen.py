"""FedGen server (Zhu, Hong & Zhou, ICML 2021, Algorithm 1): FedAvg plus a feature generator
trained on the ensemble of the clients' classifier heads."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from flcore.functional import StateDict, classifier_keys, ensemble_teacher_loss, teacher_weights
from flcore.server_opt import ServerOptimizer
from flcore.strategies.base import ClientTask
from flcore.strategies.fedavg import FedAvg
from lightning_modules.fedgen import GeneratorTask, LabelCounts
from lightning_modules.models.generator import FeatureGenerator, diversity_loss

__all__ = ["FedGen", "GeneratorServer"]


class GeneratorServer:
    """FedGen's server-side generator (Zhu, Hong & Zhou, ICML 2021, Algorithm 1), shared by
    :class:`FedGen` (homogeneous clients) and ``HeteroFedGen`` (a model family).

    After the round's aggregation the server trains the generator ``G`` for ``generator_steps``
    Adam steps on batches of labels drawn from those the round's clients hold:
    ``min_G sum_k mean_b w[k, y_b] CE(h_k(G(eps_b, y_b)), y_b) + diversity_weight * L_div``
    (Algorithm 1's ensemble-knowledge objective with the reference code's label weights and
    diversity loss), where ``h_k`` is client k's uploaded classifier head ``(C, D)`` (every client
    needs one head shape; a model family shares its classifier). The generator goes down to the
    clients with the model (counted in ``round/bytes_down``).

    Args:
        noise_dim, hidden: generator sizes (must match the client module's).
        generator_lr: Adam learning rate (reference: 3e-4, weight decay 1e-2).
        generator_steps: generator updates per round (reference: 5).
        generator_batch: labels per generator step.
        diversity_weight: weight of the diversity loss (reference: 1).

    Raises:
        ValueError: non-positive sizes, steps or learning rate; negative diversity weight.
    """

    client_objective = "lightning_modules.FedGenModule"

    def _set_generator_args(self, noise_dim: int, hidden: int, generator_lr: float, generator_steps: int,
                            generator_batch: int, diversity_weight: float) -> None:
        for name, v in (("noise_dim", noise_dim), ("hidden", hidden), ("generator_lr", generator_lr),
                        ("generator_steps", generator_steps), ("generator_batch", generator_batch)):
            if not v > 0:
                raise ValueError(f"strategy.{name}: must be > 0, got {v}")
        if diversity_weight < 0:
            raise ValueError(f"strategy.diversity_weight: must be >= 0, got {diversity_weight}")
        self.noise_dim, self.hidden = int(noise_dim), int(hidden)
        self.generator_lr, self.generator_steps = float(generator_lr), int(generator_steps)
        self.generator_batch, self.diversity_weight = int(generator_batch), float(diversity_weight)

    def _generator(self, model_state: StateDict) -> FeatureGenerator:
        w_key, _ = classifier_keys(model_state)
        num_classes, feature_dim = model_state[w_key].shape
        return FeatureGenerator(num_classes, feature_dim, self.noise_dim, self.hidden)

    def _optimizer(self, gen: FeatureGenerator) -> torch.optim.Optimizer:
        return torch.optim.Adam(gen.parameters(), lr=self.generator_lr, weight_decay=1e-2)

    def initial_generator(self, model_state: StateDict) -> dict[str, Any]:
        """The generator's part of the round-0 state, sized from one client model's head."""
        gen = self._generator(model_state)
        return {"generator": gen.state_dict(), "generator_opt": self._optimizer(gen).state_dict(),
                "generator_trained": False}

    @staticmethod
    def generator_payload(state: dict[str, Any]) -> GeneratorTask | dict:
        """What a client receives besides its model: the generator, once it has been trained
        (:class:`~lightning_modules.fedgen.GeneratorTask`; ``{}`` before)."""
        return GeneratorTask(state["generator"]) if state["generator_trained"] else {}

    def updated_generator(self, results, state: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The generator's part of the new state after the round's generator updates (unchanged
        when no client uploaded label counts). Does not mutate ``state``."""
        uploads = [r for r in results if isinstance(r.payload, LabelCounts)]
        if not uploads:
            return {}
        gen = self._generator(uploads[0].state)
        gen.load_state_dict(state["generator"])
        opt = self._optimizer(gen)
        # Optimizer.load_state_dict keeps the given moment tensors (no copy) and Adam updates them in
        # place: copy them, so the previous state stays intact for an interrupt checkpoint
        opt.load_state_dict(copy.deepcopy(state["generator_opt"]))
        self.train_generator(gen, opt, uploads, rng)
        return {"generator": {k: v.detach().clone() for k, v in gen.state_dict().items()},
                "generator_opt": opt.state_dict(), "generator_trained": True}

    def train_generator(self, gen, opt, uploads, rng: np.random.Generator) -> list[float]:
        """The round's generator updates; returns the loss of each step."""
        w_key, b_key = classifier_keys(uploads[0].state)
        heads = [(u.state[w_key].float(), u.state[b_key].float() if b_key else None) for u in uploads]
        weights = teacher_weights(torch.stack([u.payload.counts for u in uploads])).float()
        labels = torch.nonzero(weights.sum(0) > 0).flatten()
        noise = torch.Generator().manual_seed(int(rng.integers(2**62)))
        gen.train()
        losses = []
        for _ in range(self.generator_steps):
            y = labels[torch.randint(len(labels), (self.generator_batch,), generator=noise)]
            z, eps = gen.sample(y, generator=noise)
            loss = ensemble_teacher_loss(z, y, heads, weights) + self.diversity_weight * diversity_loss(eps, z)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses


class FedGen(GeneratorServer, FedAvg):
    """Server half of FedGen on homogeneous clients: FedAvg, then the generator updates of
    :class:`GeneratorServer`; pair with ``model: lightning_modules.FedGenModule``.

    State: ``{"global", "generator", "generator_opt", "generator_trained"}``. Arguments and errors
    as :class:`GeneratorServer`.
    """

    def __init__(self, noise_dim: int = 32, hidden: int = 256, generator_lr: float = 3e-4, generator_steps: int = 5,
                 generator_batch: int = 32, diversity_weight: float = 1.0, server_optimizer: ServerOptimizer | None = None):
        FedAvg.__init__(self, server_optimizer)
        self._set_generator_args(noise_dim, hidden, generator_lr, generator_steps, generator_batch, diversity_weight)

    def initialize(self, model_state, clients_per_round, num_clients=0):
        return {**super().initialize(model_state, clients_per_round), **self.initial_generator(model_state)}

    def configure_fit(self, rnd, clients, state, rng):
        payload = self.generator_payload(state)
        return [ClientTask(cid=c, state=state["global"], slot=i, payload=payload) for i, c in enumerate(clients)]

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        return {**super().aggregate_fit(rnd, results, state, rng), **self.updated_generator(results, state, rng)}
