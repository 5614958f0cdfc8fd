"""q-FedAvg, client half (Li et al., ICLR 2020, Algorithm 2): train as FedAvg and report the loss
at the received model. The worked example of CONTRIBUTING.md."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_modules import ClientModule

__all__ = ["QFFLModule"]


class QFFLModule(ClientModule):
    """Cross-entropy training, as :class:`ClientModule`; uploads ``loss``: ``F_k(w)``, the loss
    of the client's first mini-batch at the model it received (an estimate of the loss on its
    data; the paper evaluates the whole local set). Pair with ``qffl_server.QFedAvg``."""

    server_strategies = ("qffl_server.QFedAvg",)

    def configure_client(self, payload: dict[str, Any]) -> None:
        self._start_loss: float | None = None

    def training_loss(self, logits: Tensor, y: Tensor, x: Tensor) -> Tensor:
        loss = super().training_loss(logits, y, x)
        if self._start_loss is None:
            self._start_loss = float(loss.detach())
        return loss

    def client_upload(self) -> dict[str, Any]:
        return {"loss": self._start_loss}
