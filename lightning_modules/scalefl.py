"""ScaleFL client objective: cross-entropy at every exit plus self-distillation from the deepest
exit (Ilhan, Su & Liu, CVPR 2023)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lightning_modules.client import ClientModule, default_optimizer
from lightning_modules.models.protocols import EarlyExitNet

__all__ = ["ScaleFLModule", "exit_loss"]


def exit_loss(outs: list[Tensor], y: Tensor, kd_gamma: float = 0.05, temperature: float = 3.0) -> Tensor:
    """ScaleFL's local loss over a sub-model's ``n`` exits (each ``(B, C)``, shallow to deep)::

        L = sum_j (j + 1) * l_j / (n (n + 1) / 2),
        l_j = CE(p_j, y) + gamma * T^2 * KL(softmax(p_n / T) || softmax(p_j / T))   (j < n)
        l_n = CE(p_n, y)

    Deeper exits weigh more (the authors' ``execute_epoch``); the deepest exit the client has is
    the teacher of the others. Choices: the KL is averaged over the batch (``batchmean``, the
    usual KD; the authors' ``nn.KLDivLoss()`` also divides by the class count) and the teacher
    is detached (the authors' code lets the KD gradient reach it). ``gamma = 0`` is plain
    weighted cross-entropy. Returns a scalar.

    >>> outs, y = [torch.zeros(1, 2), torch.tensor([[2.0, 0.0]])], torch.tensor([0])
    >>> ce = [float(F.cross_entropy(p, y)) for p in outs]
    >>> round(float(exit_loss(outs, y, kd_gamma=0.0)), 6) == round((ce[0] + 2 * ce[1]) / 3, 6)
    True
    """
    n = len(outs)
    loss = outs[-1].new_zeros(())
    teacher = F.softmax(outs[-1].detach() / temperature, dim=1) if kd_gamma and n > 1 else None
    for j, p in enumerate(outs):
        term = F.cross_entropy(p, y)
        if j < n - 1 and teacher is not None:
            kl = F.kl_div(F.log_softmax(p / temperature, dim=1), teacher, reduction="batchmean")
            term = term + kd_gamma * temperature**2 * kl
        loss = loss + (j + 1) * term
    return loss / (n * (n + 1) / 2)


class ScaleFLModule(ClientModule):
    """Local objective of ScaleFL: :func:`exit_loss` over the exits of the client's level of
    :class:`lightning_modules.models.ScaleFLResNet`. Self-distillation starts at round
    ``kd_start_round`` (the authors start it after a quarter of the rounds: 125 of 500), before
    which every exit learns from the labels only. Metrics use the deepest exit.

    Args:
        net: a :class:`~lightning_modules.models.ScaleFLResNet` (any net with ``exit_logits``).
        kd_gamma: KD weight gamma (``0.05``: the only non-zero value in the authors' published
            commands; their image default is 0, i.e. no distillation).
        temperature: KD temperature T (authors: 3).
        kd_start_round: first round (0-based) with distillation.

    Raises:
        ValueError: a net without exits; negative ``kd_gamma`` or ``kd_start_round``;
            ``temperature <= 0``.
    """

    server_strategies = ("flcore.strategies.ScaleFL",)  # it sends the round that gates distillation

    def __init__(self, net: nn.Module, optimizer: OptimizerCallable = default_optimizer, channels_last: bool = False,
                 kd_gamma: float = 0.05, temperature: float = 3.0, kd_start_round: int = 0):
        if not isinstance(net, EarlyExitNet):
            raise ValueError(f"model.net: ScaleFL needs a network with early exits (exit_logits), such as "
                             f"lightning_modules.models.ScaleFLResNet, got {type(net).__name__}")
        if kd_gamma < 0:
            raise ValueError(f"model.kd_gamma: must be >= 0, got {kd_gamma}")
        if not temperature > 0:
            raise ValueError(f"model.temperature: must be > 0, got {temperature}")
        if kd_start_round < 0:
            raise ValueError(f"model.kd_start_round: must be >= 0, got {kd_start_round}")
        super().__init__(net, optimizer, channels_last)
        self.kd_gamma, self.temperature, self.kd_start_round = float(kd_gamma), float(temperature), int(kd_start_round)
        self._gamma = 0.0

    def configure_client(self, payload: Any) -> None:
        self._gamma = self.kd_gamma if self.current_round >= self.kd_start_round else 0.0

    def batch_loss(self, batch):
        """:func:`exit_loss` on one mini-batch; records the deepest exit's metrics."""
        x, y = batch
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = self.net.exit_logits(x)
        loss = exit_loss(outs, y, self._gamma, self.temperature)
        self._record(loss, outs[-1], y)
        return loss
