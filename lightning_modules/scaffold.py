"""SCAFFOLD local objective (Karimireddy et al., ICML 2020, Algorithm 1, option II)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning.pytorch.cli import OptimizerCallable

from lightning_modules.client import ClientModule, default_optimizer
from lightning_modules.terms import ScaffoldTask, ScaffoldUpload, option2_update

__all__ = ["ScaffoldModule"]

_FP16 = {"16", "16-mixed", 16}


class ScaffoldModule(ClientModule):
    """Local SGD with corrected gradients ``g(y) - c_i + c`` (Alg. 1, line 10).

    The correction is added to every parameter's gradient before each optimizer step (so with a
    momentum optimizer the momentum acts on the corrected gradient). After the K local steps the
    client control variate is updated with option II (Alg. 1, line 12):
    ``c_i+ = c_i - c + (x - y) / (K * lr)``; the module uploads ``delta_c = c_i+ - c_i`` and
    keeps ``c_i+`` as client state. ``lr`` is the optimizer's first-group learning rate.

    Payload in: :class:`~lightning_modules.terms.ScaffoldTask` (``c``); client state
    ``{"c_i": {param: tensor}}``; a missing entry means zeros. Upload:
    :class:`~lightning_modules.terms.ScaffoldUpload` (``delta_c``); client state kept:
    ``{"c_i": {...}}``.
    Pairs with ``flcore.strategies.Scaffold`` (one model or a model family; checked before training).

    Raises:
        ValueError: (``check_local_config``) fp16 precision with gradient scaling, which skips
            steps on overflow and so breaks the step count K of the update.
    """

    server_strategies = ("flcore.strategies.Scaffold",)
    keeps_client_state = True

    def __init__(self, net: nn.Module, optimizer: OptimizerCallable = default_optimizer, channels_last: bool = False):
        super().__init__(net, optimizer, channels_last)
        self._c: list[Tensor] = []
        self._ci: list[Tensor] = []
        self._ci_in: dict[str, Tensor] = {}
        self._new_ci: dict[str, Tensor] | None = None
        self._x: list[Tensor] = []
        self._steps = 0
        self._lr = 0.0

    def check_local_config(self, local: dict[str, Any]) -> None:
        precision = local.get("precision", "32-true")
        if precision in _FP16:
            raise ValueError(
                f"trainer.local.precision: SCAFFOLD cannot run under fp16 gradient scaling (skipped steps "
                f"corrupt its control-variate update); use 32-true, bf16-mixed or bf16-true, got {precision!r}"
            )

    def load_client_state(self, state: dict[str, Any] | None) -> None:
        self._ci_in = (state or {}).get("c_i", {})

    def configure_client(self, payload: Any) -> None:
        named = list(self.net.named_parameters())
        c, ci = payload.c if isinstance(payload, ScaffoldTask) else {}, self._ci_in
        self._new_ci = None
        self._c = [c[n].detach().clone() if n in c else torch.zeros_like(p) for n, p in named]
        self._ci = [ci[n].detach().clone() if n in ci else torch.zeros_like(p) for n, p in named]
        self._x = [p.detach().clone() for _, p in named]
        self._steps = 0

    def on_client_start(self) -> None:
        dev = next(self.net.parameters()).device
        self._c, self._ci, self._x = ([t.to(dev) for t in ts] for ts in (self._c, self._ci, self._x))
        self._correction = [c - ci for c, ci in zip(self._c, self._ci)]
        self._lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_before_optimizer_step(self, optimizer) -> None:
        for p, corr in zip(self.net.parameters(), self._correction):
            if p.grad is not None:
                p.grad.add_(corr)
        self._steps += 1
        super().on_before_optimizer_step(optimizer)

    def _updated_ci(self) -> dict[str, Tensor] | None:
        """``c_i+`` (option II), computed once per client; ``None`` if no step was taken."""
        if self._steps == 0:
            return None
        if self._new_ci is None:
            names = [n for n, _ in self.net.named_parameters()]
            self._new_ci = option2_update(names, self._ci, self._c, self._x, list(self.net.parameters()), self._steps,
                                          self._lr)
        return self._new_ci

    def client_upload(self) -> ScaffoldUpload | None:
        new_ci = self._updated_ci()
        if new_ci is None:
            return None
        return ScaffoldUpload({n: (a - b).cpu() for (n, a), b in zip(new_ci.items(), self._ci)})

    def client_state(self) -> dict[str, Any] | None:
        new_ci = self._updated_ci()
        return None if new_ci is None else {"c_i": {n: a.cpu() for n, a in new_ci.items()}}
