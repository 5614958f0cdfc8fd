"""Client-objective terms as Lightning callbacks, for a user's own LightningModule.

A term changes the gradients of the module's own loss right before each optimizer step
(``on_before_optimizer_step``: after the backward passes of an accumulation group and, under AMP,
after unscaling), which is the same update as adding the term to the loss, without touching the
user's ``training_step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_modules.models.protocols import Representation
from lightning_modules.moon import moon_contrastive_loss

__all__ = ["ClientTerm", "ProximalTerm", "ControlVariates", "ContrastiveTerm", "option2_update", "ScaffoldTask",
           "ScaffoldUpload"]


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


class ClientTerm(L.Callback):
    """A client-objective term applied to a user's own LightningModule
    (:class:`lightning_modules.plain.PlainClient`), with the client-side hooks of a method pair.
    The base keeps no client state, receives nothing and uploads nothing."""

    #: The term keeps state on the client between its rounds (:meth:`client_state`).
    keeps_client_state: ClassVar[bool] = False

    def check_module(self, module: L.LightningModule) -> None:
        """Before training: raise ``ValueError`` naming the field when this term cannot wrap
        ``module``. The base accepts every module."""

    def load_client_state(self, state: dict[str, Any] | None) -> None:
        """This client's state from its previous participation (``None``: its first)."""

    def configure_client(self, payload: Any) -> None:
        """The strategy's payload of this round (``ClientTask.payload``)."""

    def client_upload(self) -> Any:
        """What the term sends to the server after the local update (``None``: nothing)."""
        return None

    def client_state(self) -> dict[str, Any] | None:
        """What the client keeps for its next participation (``None``: nothing)."""
        return None


class ProximalTerm(ClientTerm):
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


class ControlVariates(ClientTerm):
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


class _Representation(nn.Module):
    """``module.features`` as a module's ``forward``, so that :func:`torch.func.functional_call`
    can run it with another model's tensors (names prefixed ``m.``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.m = module

    def forward(self, x: Tensor) -> Tensor:
        return self.m.features(x)


class ContrastiveTerm(ClientTerm):
    """MOON's model-contrastive term ``mu * l_con`` (Li, He & Song, CVPR 2021, Eq. 3 and 4) for a
    user's own LightningModule, as :class:`lightning_modules.MoonModule` applies it to the
    shipped nets: the module's representation ``z = module.features(x)`` (``(B, D)``; the
    layer before the classifier, or a projection head's output) is pulled towards the received
    global model's ``z_glob`` and away from ``z_prev`` of this client's model after its previous
    participation (the global model on its first), both frozen and in eval mode.

    For every mini-batch ``x = batch[0]`` of the module's own ``training_step``, after the
    module's backward, the gradient of ``mu * l_con / accumulate_grad_batches`` (Lightning's
    normalisation of the module's loss) is computed by a second forward of ``features`` (the
    module's buffers, e.g. BatchNorm's running statistics, are restored after it) and added to
    the parameters' gradients before the optimizer step: the update of ``CE + mu * l_con``,
    without touching ``training_step``. Client state: ``{"prev": state_dict}`` on the CPU.

    Args:
        mu: weight of the contrastive term >= 0 (MOON paper: 5 for CIFAR-10, 1 for CIFAR-100).
        temperature: tau > 0 (paper: 0.5).

    Raises:
        ValueError: ``mu < 0`` or ``temperature <= 0``; a mini-batch that is not ``(x, ...)``.
    """

    keeps_client_state = True

    def __init__(self, mu: float, temperature: float = 0.5):
        if mu < 0:
            raise ValueError(f"trainer.strategy.init_args.mu: the contrastive weight must be >= 0, got {mu}")
        if not temperature > 0:
            raise ValueError(f"trainer.strategy.init_args.temperature: tau must be > 0, got {temperature}")
        self.mu, self.temperature = float(mu), float(temperature)
        self._prev_in: dict[str, Tensor] | None = None
        self._new_prev: dict[str, Tensor] | None = None
        self._frozen: list[dict[str, Tensor]] = []  # the global and previous models, "m."-prefixed
        self._extra: list[Tensor] = []  # the term's gradients, summed over an accumulation group
        self._params: list[Tensor] = []
        self._wrapper: _Representation | None = None
        self._scale = 0.0
        self._x: Tensor | None = None

    def check_module(self, module: L.LightningModule) -> None:
        if not isinstance(module, Representation):
            raise ValueError(f"model: MOON's contrastive term reads the module's representation; give "
                             f"{type(module).__name__} a features(x) method returning (B, D) (the layer before the "
                             f"classifier, or a projection head's output)")

    def load_client_state(self, state: dict[str, Any] | None) -> None:
        self._prev_in = (state or {}).get("prev")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._wrapper = _Representation(pl_module)
        glob = {f"m.{k}": v.detach().clone() for k, v in pl_module.state_dict().items()}
        prev = glob if self._prev_in is None else {f"m.{k}": v.to(pl_module.device) for k, v in self._prev_in.items()}
        self._frozen = [glob, prev]
        self._params = [p for p in pl_module.parameters() if p.requires_grad]
        self._extra = [torch.zeros_like(p) for p in self._params]
        self._scale = self.mu / trainer.accumulate_grad_batches
        self._new_prev = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if not (isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor)):
            raise ValueError(f"model: MOON's contrastive term reads x from (x, y) mini-batches, got {type(batch).__name__}")
        self._x = batch[0]

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.mu or self._x is None:
            return
        x, self._x = self._x.to(pl_module.device), None
        was = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            z_glob, z_prev = (functional_call(self._wrapper, frozen, (x,)) for frozen in self._frozen)
        pl_module.train(was)
        buffers = [b.detach().clone() for b in pl_module.buffers()]
        with torch.enable_grad():
            z = pl_module.features(x)
            with torch.no_grad():
                for b, saved in zip(pl_module.buffers(), buffers):
                    b.copy_(saved)
            loss = self._scale * moon_contrastive_loss(z, z_glob, z_prev, self.temperature)
            grads = torch.autograd.grad(loss, self._params, allow_unused=True)
        for extra, g in zip(self._extra, grads):
            if g is not None:
                extra.add_(g)

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        for p, extra in zip(self._params, self._extra):
            if p.grad is None:
                p.grad = extra.clone()
            else:
                p.grad.add_(extra)
            extra.zero_()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._new_prev = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        self._frozen, self._extra, self._params, self._wrapper = [], [], [], None

    def client_state(self) -> dict[str, Any] | None:
        """``{"prev": state_dict}``: this client's model after its local update, for ``z_prev``
        at its next participation."""
        return None if self._new_prev is None else {"prev": self._new_prev}

