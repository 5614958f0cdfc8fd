"""Client-objective terms as Lightning callbacks, for a user's own LightningModule.

A term changes the gradients of the module's own loss right before each optimizer step
(``on_before_optimizer_step``: after the backward passes of an accumulation group and, under AMP,
after unscaling), which is the same update as adding the term to the loss, without touching the
user's ``training_step``.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

__all__ = ["ProximalTerm"]


class ProximalTerm(L.Callback):
    """FedProx's proximal term ``(mu / 2) * ||w - w_global||^2`` (Li et al., MLSys 2020, Eq. 2)
    as a gradient correction: before every optimizer step each trainable parameter that the
    optimizer steps gets ``mu * (w - w_global)`` added, the gradient of the term. ``w_global`` is the model the
    client received, taken when its local update starts (``on_train_start``).

    Args:
        mu: proximal weight mu >= 0 (FedMR / FedCross papers: 0.01 CIFAR-10, 0.001 CIFAR-100).

    Raises:
        ValueError: ``mu < 0``.
    """

    def __init__(self, mu: float):
        if mu < 0:
            raise ValueError(f"trainer.strategy.init_args.mu: the proximal weight must be >= 0, got {mu}")
        self.mu = float(mu)
        self._anchor: list[tuple[Tensor, Tensor]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._anchor = [(p, p.detach().clone()) for p in pl_module.parameters() if p.requires_grad]

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self.mu:
            return
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}  # this optimizer's only
        for p, anchor in self._anchor:
            if p.grad is not None and id(p) in stepped:
                p.grad.add_(p.detach() - anchor, alpha=self.mu)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._anchor = []  # one model copy, freed between clients
