"""Client-objective terms as Lightning callbacks, for a user's own LightningModule.

A term changes the gradients of the module's own loss right before each optimizer step
(``on_before_optimizer_step``: after the backward passes of an accumulation group and, under AMP,
after unscaling), which is the same update as adding the term to the loss, without touching the
user's ``training_step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch

from torch import Tensor

__all__ = ["ProximalTerm", "ControlVariates", "option2_update", "ScaffoldTask", "ScaffoldUpload"]


@dataclass
class ScaffoldTask:
    """What a SCAFFOLD client receives besides the global model x (Karimireddy et al., ICML
    2020, Alg. 1, line 6): the server control variate ``c`` (``{param name: tensor}``, each of
    its parameter's shape; a missing entry means zeros, as in round 0)."""

    c: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class ScaffoldUpload:
    """What a SCAFFOLD client uploads besides its model (Alg. 1, line 13): ``delta_c = c_i+ -
    c_i`` per parameter (``{param name: tensor}`` on the CPU)."""

    delta_c: dict[str, Tensor]


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


def option2_update(names: list[str], ci: list[Tensor], c: list[Tensor], x: list[Tensor], y: list[Tensor], steps: int,
                   lr: float) -> dict[str, Tensor]:
    """SCAFFOLD's client control variate, option II (Karimireddy et al., ICML 2020, Alg. 1,
    line 12): ``c_i+ = c_i - c + (x - y) / (K * lr)`` per parameter, with ``x`` the received
    model, ``y`` the model after the ``K = steps`` local steps (all tensors of a parameter's shape).

    >>> option2_update(["w"], [torch.zeros(1)], [torch.ones(1)], [torch.tensor([2.0])], [torch.tensor([1.0])], 2, 0.5)
    {'w': tensor([0.])}
    """
    scale = 1.0 / (steps * lr)
    return {n: a - b + (xx - yy.detach()) * scale for n, a, b, xx, yy in zip(names, ci, c, x, y)}


class ControlVariates(L.Callback):
    """SCAFFOLD's client half for a user's own LightningModule (Karimireddy et al., ICML 2020,
    Alg. 1, option II), as :class:`lightning_modules.ScaffoldModule` does it for the shipped nets:
    before every optimizer step each parameter's gradient gets ``c - c_i`` added (line 10); after
    the K local steps ``c_i+`` (:func:`option2_update`, ``lr`` = the first optimizer's first-group
    learning rate) is kept as the client's state and ``delta_c = c_i+ - c_i`` uploaded.

    Payload in: :class:`ScaffoldTask`; client state ``{"c_i": {...}}`` (missing entries are
    zeros); upload :class:`ScaffoldUpload`. Parameter names are the module's ``named_parameters``.
    """

    keeps_client_state = True

    def __init__(self):
        self._ci_in: dict[str, Tensor] = {}
        self._payload_c: dict[str, Tensor] = {}
        self._names: list[str] = []
        self._c: list[Tensor] = []
        self._ci: list[Tensor] = []
        self._x: list[Tensor] = []
        self._correction: list[Tensor] = []
        self._steps, self._lr = 0, 0.0
        self._new_ci: dict[str, Tensor] | None = None

    def load_client_state(self, state: dict[str, Any] | None) -> None:
        """This client's ``{"c_i": ...}`` from its previous participation (``None``: zeros)."""
        self._ci_in = (state or {}).get("c_i", {})

    def configure_client(self, payload: Any) -> None:
        """The server control variate ``c`` of this round (:class:`ScaffoldTask`; anything else:
        zeros)."""
        self._payload_c = payload.c if isinstance(payload, ScaffoldTask) else {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        named = list(pl_module.named_parameters())
        c, ci = self._payload_c, self._ci_in
        self._names = [n for n, _ in named]
        self._c = [c[n].to(p.device) if n in c else torch.zeros_like(p) for n, p in named]
        self._ci = [ci[n].to(p.device) if n in ci else torch.zeros_like(p) for n, p in named]
        self._x = [p.detach().clone() for _, p in named]
        self._correction = [a - b for a, b in zip(self._c, self._ci)]
        self._steps, self._new_ci = 0, None
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        self._params = [p for _, p in named]

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        for p, corr in zip(self._params, self._correction):
            if p.grad is not None:
                p.grad.add_(corr)
        self._steps += 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._steps:
            self._new_ci = option2_update(self._names, self._ci, self._c, self._x, self._params, self._steps, self._lr)
        self._params = []

    def client_upload(self) -> ScaffoldUpload | None:
        """:class:`ScaffoldUpload` of ``c_i+ - c_i`` on the CPU (``None`` when no step was taken)."""
        if self._new_ci is None:
            return None
        return ScaffoldUpload({n: (a - b).cpu() for (n, a), b in zip(self._new_ci.items(), self._ci)})

    def client_state(self) -> dict[str, Any] | None:
        """``{"c_i": c_i+}`` on the CPU, kept for the client's next participation."""
        return None if self._new_ci is None else {"c_i": {n: a.cpu() for n, a in self._new_ci.items()}}
