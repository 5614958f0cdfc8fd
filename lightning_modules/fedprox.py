"""FedProx local objective (Li et al., MLSys 2020, Eq. 2): cross-entropy plus a proximal term."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning.pytorch.cli import OptimizerCallable

from lightning_modules.client import ClientModule, default_optimizer

__all__ = ["FedProxModule"]


class FedProxModule(ClientModule):
    """``h(w) = F_k(w) + (mu / 2) * ||w - w_global||^2`` over the trainable parameters.

    ``w_global`` is the model the client received (snapshot at :meth:`configure_client`), so the
    gradient of the proximal term is ``mu * (w - w_global)``.

    Args:
        net, optimizer, channels_last: as :class:`ClientModule`.
        mu: proximal weight mu >= 0 (FedMR / FedCross papers: 0.01 CIFAR-10, 0.001 CIFAR-100,
            0.1 FEMNIST).

    Raises:
        ValueError: ``mu < 0``.
    """

    #: FedProx (homogeneous) or the FedIN paper's heterogeneous FedProx baseline; FedIN's own
    #: objective (a subclass) names its server itself.
    server_strategies = ("flcore.strategies.FedProx", "flcore.strategies.HeteroFedAvg")
    #: The proximal term depends on no sample: under local DP-SGD it is not clipped.
    sample_free_loss_terms = True

    def __init__(self, net: nn.Module, optimizer: OptimizerCallable = default_optimizer, channels_last: bool = False, mu: float = 0.01):
        super().__init__(net, optimizer, channels_last)
        if mu < 0:
            raise ValueError(f"model.mu: the proximal weight must be >= 0, got {mu}")
        self.mu = float(mu)
        self._anchor: list[Tensor] = []

    def configure_client(self, payload: Any) -> None:
        self._anchor = [p.detach().clone() for p in self.net.parameters()]

    def on_client_start(self) -> None:
        self._anchor = [a.to(p.device) for a, p in zip(self._anchor, self.net.parameters())]

    def proximal_term(self) -> Tensor:
        """``(mu / 2) * sum ||w - w_global||^2`` (a scalar tensor)."""
        total = sum(((p - a) ** 2).sum() for p, a in zip(self.net.parameters(), self._anchor))
        return 0.5 * self.mu * total

    def training_loss(self, logits: Tensor, y: Tensor, x: Tensor) -> Tensor:
        loss = super().training_loss(logits, y, x)
        if self.mu and self._anchor:
            loss = loss + self.proximal_term()
        return loss
