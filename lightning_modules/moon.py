"""MOON: model-contrastive federated learning (Li, He & Song, CVPR 2021)."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning.pytorch.cli import OptimizerCallable

from lightning_modules.client import ClientModule, default_optimizer
from lightning_modules.models.protocols import FeatureNet, ModelFamily

__all__ = ["MoonModule", "MoonNet", "moon_contrastive_loss"]


def moon_contrastive_loss(z: Tensor, z_glob: Tensor, z_prev: Tensor, temperature: float) -> Tensor:
    """Model-contrastive loss (MOON paper, Eq. 3), mean over the batch.

    ``l_con = -log( exp(sim(z, z_glob)/tau) / (exp(sim(z, z_glob)/tau) + exp(sim(z, z_prev)/tau)) )``
    with ``sim`` the cosine similarity. Shapes: ``(B, D)`` each; returns a scalar.

    >>> z = torch.tensor([[1.0, 0.0]])
    >>> round(float(moon_contrastive_loss(z, z, -z, temperature=1.0)), 4)  # -log(e / (e + 1/e))
    0.1269
    >>> round(float(moon_contrastive_loss(z, z, z, temperature=0.5)), 4)  # as close to both: log 2
    0.6931
    """
    pos = F.cosine_similarity(z, z_glob, dim=1)
    neg = F.cosine_similarity(z, z_prev, dim=1)
    logits = torch.stack([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))


class MoonNet(nn.Module):
    """MOON's network: base encoder, projection head (2-layer MLP), output layer on the projection.

    ``features(x) = l2(relu(l1(base.features(x))))`` of width ``projection_dim``;
    ``classifier(z) = l3(z)``. As in the authors' ``ModelFedCon``; the base net's own classifier
    is not used. Requires ``base.features`` and ``base.feature_dim``.
    """

    def __init__(self, base: nn.Module, projection_dim: int = 256):
        super().__init__()
        if not isinstance(base, FeatureNet):
            raise ValueError("model.net: MOON needs a network with features(), feature_dim and num_classes "
                             "(lightning_modules.models.CNN, ResNet20, VGG16)")
        self.base = base
        self.l1 = nn.Linear(base.feature_dim, base.feature_dim)
        self.l2 = nn.Linear(base.feature_dim, projection_dim)
        self.l3 = nn.Linear(projection_dim, base.num_classes)
        self.num_classes = base.num_classes
        self.feature_dim = projection_dim
        self.projection_dim = projection_dim
        if isinstance(base, ModelFamily):  # heterogeneous-model runs
            self.ARCHITECTURES = base.ARCHITECTURES

    def with_architecture(self, arch: str) -> MoonNet:
        """MOON's network over family member ``arch`` of the base (heterogeneous-model runs)."""
        return MoonNet(self.base.with_architecture(arch), self.projection_dim)

    def features(self, x: Tensor) -> Tensor:
        return self.l2(F.relu(self.l1(self.base.features(x))))

    def classifier(self, z: Tensor) -> Tensor:
        return self.l3(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class MoonModule(ClientModule):
    """Local objective ``CE + mu * l_con`` (MOON paper, Eq. 4).

    ``z_glob`` comes from the received global model and ``z_prev`` from this client's model after
    its previous participation (client state; the global model on a first participation), both
    frozen.

    Args:
        net: base encoder (wrapped into :class:`MoonNet`).
        mu: weight of the contrastive term (paper: 5 for CIFAR-10, 1 for CIFAR-100), >= 0.
        temperature: tau > 0 (paper: 0.5).
        projection_dim: output width of the projection head (paper: 256).

    Pairs with ``flcore.strategies.Moon`` or, on heterogeneous clients, ``HeteroFedAvg``
    (checked before training). The previous model is client state (:attr:`keeps_client_state`).

    Raises:
        ValueError: ``mu < 0``, ``temperature <= 0``, or a net without ``features``.
    """

    server_strategies = ("flcore.strategies.Moon", "flcore.strategies.HeteroFedAvg")
    keeps_client_state = True

    def __init__(self, net: nn.Module, optimizer: OptimizerCallable = default_optimizer, channels_last: bool = False,
                 mu: float = 1.0, temperature: float = 0.5, projection_dim: int = 256):
        if mu < 0:
            raise ValueError(f"model.mu: must be >= 0, got {mu}")
        if not temperature > 0:
            raise ValueError(f"model.temperature: tau must be > 0, got {temperature}")
        super().__init__(MoonNet(net, projection_dim), optimizer, channels_last)
        self.mu = float(mu)
        self.temperature = float(temperature)
        self.global_net: nn.Module | None = None
        self.prev_net: nn.Module | None = None
        self._prev: dict[str, Tensor] | None = None

    def load_client_state(self, state: dict[str, Any] | None) -> None:
        self._prev = (state or {}).get("prev")

    def configure_client(self, payload: Any) -> None:
        if self.global_net is None:
            self.global_net = copy.deepcopy(self.net).requires_grad_(False)
            self.prev_net = copy.deepcopy(self.net).requires_grad_(False)
        self.global_net.load_state_dict(self.net.state_dict())
        self.prev_net.load_state_dict(self._prev if self._prev is not None else self.net.state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in (self.global_net, self.prev_net):
            if frozen is not None:
                frozen.eval()
        return self

    def batch_loss(self, batch):
        """Cross-entropy plus mu times the model-contrastive loss (MOON Eq. 3) on one mini-batch."""
        x, y = batch
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        z = self.net.features(x)
        logits = self.net.classifier(z)
        loss = F.cross_entropy(logits, y)
        if self.mu and self.global_net is not None:
            with torch.no_grad():
                z_glob, z_prev = self.global_net.features(x), self.prev_net.features(x)
            loss = loss + self.mu * moon_contrastive_loss(z, z_glob, z_prev, self.temperature)
        self._record(loss, logits, y)
        return loss

    def client_state(self) -> dict[str, Any] | None:
        return {"prev": {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()}}
