"""FedGen's conditional generator (Zhu, Hong & Zhou, ICML 2021, Sec. 3): noise and a label to a
feature vector in the classifier's input space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeatureGenerator", "diversity_loss"]


class FeatureGenerator(nn.Module):
    """``G(eps, y)``: ``[eps, onehot(y)]`` -> Linear -> BatchNorm -> ReLU -> Linear -> feature.

    Shapes: ``eps (B, noise_dim)``, ``y (B,)`` int -> ``(B, feature_dim)``. The sizes follow the
    FedGen reference (hidden 256, noise 32).
    """

    def __init__(self, num_classes: int, feature_dim: int, noise_dim: int = 32, hidden: int = 256):
        super().__init__()
        self.num_classes, self.noise_dim = num_classes, noise_dim
        self.fc = nn.Linear(noise_dim + num_classes, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.out = nn.Linear(hidden, feature_dim)

    def forward(self, eps: Tensor, y: Tensor) -> Tensor:
        h = torch.cat([eps, F.one_hot(y, self.num_classes).to(eps.dtype)], dim=1)
        return self.out(F.relu(self.bn(self.fc(h))))

    def sample(self, y: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Features for labels ``y`` with fresh standard-normal noise; returns ``(features, eps)``."""
        eps = torch.randn(len(y), self.noise_dim, generator=generator, device=y.device if generator is None else "cpu")
        eps = eps.to(y.device)
        return self(eps, y), eps


def diversity_loss(eps: Tensor, features: Tensor) -> Tensor:
    """FedGen's diversity regulariser: ``exp(-mean_ij d_noise(i, j) * d_feat(i, j))`` with
    ``d_noise`` the mean squared difference of the noises and ``d_feat`` the mean absolute
    difference of the generated features (pairs over the batch). Shapes: ``(B, *)``; scalar."""
    e, f = eps.flatten(1), features.flatten(1)
    d_noise = ((e[:, None, :] - e[None, :, :]) ** 2).mean(-1)
    d_feat = (f[:, None, :] - f[None, :, :]).abs().mean(-1)
    return torch.exp(-(d_noise * d_feat).mean())
