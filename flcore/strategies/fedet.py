"""FedET (Cho et al., IJCAI 2022, "Heterogeneous Ensemble Knowledge Transfer for Training Large
Models in Federated Learning"): small heterogeneous client models teach a larger server model by
a confidence-weighted, diversity-regularised ensemble on unlabelled public data, and share its
representation (classifier) layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from flcore.functional import StateDict, classifier_keys, ensemble_targets, weighted_average
from flcore.strategies.base import ClientResult, ClientTask, HeterogeneousStrategy

__all__ = ["FedET"]


class FedET(HeterogeneousStrategy):
    """FedET over a model family (ResNet10 ... ResNet26 in the FedIN setting).

    Each round:

    1. Per client architecture, the round's clients' models are averaged (FedAvg within the
       architecture, sample-weighted).
    2. Every client model of the round predicts the unlabelled public inputs; their
       confidence-weighted consensus labels and diversity targets come from
       :func:`ensemble_targets`.
    3. The server model (architecture ``server_arch``) takes as its representation layer (the
       classifier, which the family shares) the mean of the round's client classifiers, then
       is trained for ``distill_steps`` SGD steps (``distill_lr``, batches of ``distill_batch``,
       reshuffled every pass) on
       ``CE(f_s(x), consensus) + diversity_weight * KL(softmax(diversity) || softmax(f_s(x)))``,
       the KL term on samples where some model disagrees (FedET Sec. 3.2's ensemble transfer).
    4. Every client architecture's model takes the server model's classifier (weight sharing of
       the representation layers, FedET Sec. 3).

    The FedIN setting puts every family member, the largest included, on clients; here the
    clients of ``server_arch`` train the server model itself (their average seeds step 3), and
    the other architectures are the "small" models. Evaluation: every architecture's model;
    :meth:`global_model` is the server model.

    Public data: ``data.public_size`` carves an unlabelled, server-held slice of the training
    set that no client holds (no second data set is available offline, and a slice of the same
    distribution is the setting FedET's "unlabelled public data" assumes). Distillation defaults
    (128 steps, lr 5e-3, batch 64, weight 0.05) follow a public re-implementation; the paper
    leaves them open.

    State: ``{"server": state_dict, "edge": {arch: state_dict}, "server_arch": str}``.

    Args:
        server_arch: the server model's architecture, one of ``trainer.architectures``
            (default: the one with the most parameters).
        distill_steps, distill_lr, distill_batch: server distillation per round.
        diversity_weight: weight of the diversity KL term (lambda).

    Raises:
        ValueError: non-positive steps, learning rate or batch; negative ``diversity_weight``;
            a ``server_arch`` not in ``trainer.architectures`` (before training).
    """

    needs_public_data = True

    def __init__(self, server_arch: str | None = None, distill_steps: int = 128, distill_lr: float = 5e-3,
                 distill_batch: int = 64, diversity_weight: float = 0.05):
        for name, v in (("distill_steps", distill_steps), ("distill_lr", distill_lr), ("distill_batch", distill_batch)):
            if not v > 0:
                raise ValueError(f"strategy.{name}: must be > 0, got {v}")
        if diversity_weight < 0:
            raise ValueError(f"strategy.diversity_weight: must be >= 0, got {diversity_weight}")
        self.server_arch = server_arch
        self.distill_steps, self.distill_lr = int(distill_steps), float(distill_lr)
        self.distill_batch, self.diversity_weight = int(distill_batch), float(diversity_weight)
        self.client_arch: list[str] = []
        self._nets: dict[str, torch.nn.Module] = {}
        self._public: Tensor | None = None

    def validate_architectures(self, names: list[str]) -> None:
        if self.server_arch is not None and self.server_arch not in names:
            raise ValueError(f"strategy.server_arch: must be one of trainer.architectures {names}, got {self.server_arch!r}")

    def bind_server(self, nets, public_inputs) -> None:
        self._nets, self._public = nets, public_inputs

    def initialize(self, model_state: dict[str, StateDict], clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        server = self.server_arch or max(model_state, key=lambda a: sum(v.numel() for v in model_state[a].values()))
        clone = lambda s: {k: v.clone() for k, v in s.items()}  # noqa: E731
        return {"server": clone(model_state[server]), "server_arch": server,
                "edge": {a: clone(s) for a, s in model_state.items() if a != server}}

    def _model(self, state, arch: str) -> StateDict:
        return state["server"] if arch == state["server_arch"] else state["edge"][arch]

    def configure_fit(self, rnd, clients, state, rng) -> list[ClientTask]:
        return [ClientTask(cid=c, state=self._model(state, self.client_arch[c]), slot=i, arch=self.client_arch[c])
                for i, c in enumerate(clients)]

    @torch.no_grad()
    def _log_probs(self, arch: str, model: StateDict) -> Tensor:
        net = self._nets[arch]
        net.load_state_dict(model)
        net.eval()
        return torch.cat([F.log_softmax(net(x).float(), dim=1) for x in self._public.split(512)])

    def aggregate_fit(self, rnd, results: list[ClientResult], state, rng: np.random.Generator) -> dict[str, Any]:
        if not results:
            return state
        server_arch = state["server_arch"]
        edge, server = dict(state["edge"]), state["server"]
        by_arch: dict[str, list[ClientResult]] = {}
        for r in results:
            by_arch.setdefault(self.client_arch[r.cid], []).append(r)
        labels, diversity, has_div = ensemble_targets(
            torch.stack([self._log_probs(self.client_arch[r.cid], r.state) for r in results]))
        w_key, b_key = classifier_keys(server)
        shared = {k: torch.stack([r.state[k].float() for r in results]).mean(0) for k in (w_key, b_key) if k}
        for arch, rs in by_arch.items():  # step 1
            avg = weighted_average([r.state for r in rs], [r.weight for r in rs])
            if arch == server_arch:
                server = avg
            else:
                edge[arch] = avg
        server = self._distill(server_arch, {**server, **shared}, labels, diversity, has_div, rng)
        head = {k: server[k] for k in shared}
        edge = {a: {**m, **{k: v.clone() for k, v in head.items()}} for a, m in edge.items()}  # step 4
        return {**state, "server": server, "edge": edge}

    def _distill(self, arch: str, model: StateDict, labels: Tensor, diversity: Tensor, has_div: Tensor,
                 rng: np.random.Generator) -> StateDict:
        """Step 3: the server model after ``distill_steps`` SGD steps on the public inputs."""
        net = self._nets[arch]
        net.load_state_dict(model)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=self.distill_lr)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        n, step = len(labels), 0
        target = F.softmax(diversity, dim=1)
        with torch.enable_grad():
            while step < self.distill_steps:
                for idx in torch.randperm(n, generator=gen).split(self.distill_batch):
                    out = net(self._public[idx])
                    loss = F.cross_entropy(out, labels[idx])
                    mask = has_div[idx]
                    if self.diversity_weight and bool(mask.any()):
                        loss = loss + self.diversity_weight * F.kl_div(
                            F.log_softmax(out[mask], dim=1), target[idx][mask], reduction="batchmean")
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    step += 1
                    if step == self.distill_steps:
                        break
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    def global_models(self, state) -> dict[str, StateDict]:
        """Every architecture's model: the client architectures' and the server model."""
        return {**state["edge"], state["server_arch"]: state["server"]}

    def global_model(self, state) -> StateDict:
        """The server model (FedET's large model)."""
        return state["server"]
