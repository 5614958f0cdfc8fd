"""FedNova client (Wang et al., NeurIPS 2020): plain local SGD that reports how far it went."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from lightning.pytorch.cli import OptimizerCallable

from lightning_modules.client import ClientModule, default_optimizer

__all__ = ["FedNovaModule", "FedNovaUpload", "momentum_a_norm"]


@dataclass
class FedNovaUpload:
    """What a FedNova client uploads besides its model (Wang et al., NeurIPS 2020, Sec. 4):
    ``tau`` local optimizer steps, ``a_norm = ||a_i||_1`` (:func:`momentum_a_norm`) and the names
    of the trained parameters (``param_keys``; the other state_dict entries are buffers, averaged
    as in FedAvg)."""

    tau: int
    a_norm: float
    param_keys: tuple[str, ...]


def momentum_a_norm(tau: int, rho: float) -> float:
    """``||a_i||_1`` of FedNova (Wang et al. 2020, Sec. 4 / Appendix): the sum of the weights that
    ``tau`` local SGD steps with momentum ``rho`` put on the accumulated gradients,
    ``[tau - rho (1 - rho^tau) / (1 - rho)] / (1 - rho)``; equals ``tau`` for plain SGD.

    >>> momentum_a_norm(10, 0.0)
    10.0
    >>> momentum_a_norm(2, 0.5)  # steps weigh 1 + 1.5: (2 - 0.5 * 0.75 / 0.5) / 0.5
    2.5
    """
    if rho == 0:
        return float(tau)
    return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


class FedNovaModule(ClientModule):
    """Cross-entropy with SGD (optionally with momentum); uploads a :class:`FedNovaUpload`
    (``tau`` local optimizer steps, ``a_norm`` = :func:`momentum_a_norm` and the names of the
    trained parameters), which the FedNova server normalises (buffers are averaged as in FedAvg)."""

    server_strategies = ("flcore.strategies.FedNova",)  # it reads a_norm

    def __init__(self, net: nn.Module, optimizer: OptimizerCallable = default_optimizer, channels_last: bool = False):
        super().__init__(net, optimizer, channels_last)
        self._steps = 0

    def configure_client(self, payload: Any) -> None:
        self._steps = 0

    def on_before_optimizer_step(self, optimizer) -> None:
        self._steps += 1
        super().on_before_optimizer_step(optimizer)

    def client_upload(self) -> FedNovaUpload:
        group = self.trainer.optimizers[0].param_groups[0]
        rho = float(group.get("momentum", 0.0) or 0.0)
        return FedNovaUpload(self._steps, momentum_a_norm(self._steps, rho),
                             tuple(n for n, _ in self.net.named_parameters()))
