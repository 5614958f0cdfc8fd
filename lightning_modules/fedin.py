"""FedIN local objective (FedIN paper, Sec. 4.1-4.3): local training with a proximal term, IN
training of the intermediate layers on server features, and gradient correction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lightning_modules.client import default_optimizer
from lightning_modules.fedprox import FedProxModule
from lightning_modules.models.protocols import IntermediateNet

__all__ = ["FedINModule", "corrected_in_gradient", "CORRECTIONS", "add_feature_noise", "FedINTask", "FedINUpload"]


@dataclass
class FedINTask:
    """What a FedIN client receives besides its model (FedIN paper, Sec. III-B, Eq. 6-7): other
    clients' intermediate-layer input / output features, ``s_in`` ``(M, ...)`` and ``s_out``
    ``(M, ...)``, concatenated from ``len(batch_sizes)`` uploaded batches of ``batch_sizes[j]``
    rows each."""

    s_in: Tensor
    s_out: Tensor
    batch_sizes: Tensor


@dataclass
class FedINUpload:
    """What a FedIN client uploads besides its model (Eq. 4-5): one batch of its noised
    intermediate input / output features, ``s_in`` ``(B, ...)`` and ``s_out`` ``(B, ...)``, on
    the CPU."""

    s_in: Tensor
    s_out: Tensor

CORRECTIONS = ("eq12", "eq13", "none")


def corrected_in_gradient(g_in: list[Tensor], g_local: list[Tensor], mode: str = "eq13", lam: float = 1.0) -> list[Tensor]:
    """The corrected IN gradient Z of the intermediate layers (FedIN paper, Sec. 4.2).

    ``G_IN`` and ``G_local`` are the gradients of the IN loss (Eq. 7) and of the local loss
    (Eq. 3) with respect to the intermediate layers, taken together as one matrix (the lists
    hold one tensor per parameter; ``<A, B> = sum_p <A_p, B_p>``).

    * ``"eq12"``: the exact solution of Eq. 9, ``min ||G_IN - Z||^2 s.t. <Z, G_local> >= 0``:
      ``Z = G_IN`` if ``b >= 0``, else ``Z = G_IN - (b / a) G_local``, with
      ``a = <G_local, G_local>``, ``b = <G_local, G_IN>`` (Eq. 12; the projection of G_IN onto
      the half-space, so ``<Z, G_local> = 0`` in the second case). ``a = 0`` gives ``G_IN``.
    * ``"eq13"``: the simplified ``Z = G_IN + (lam / 2) G_local`` (Eq. 13; the paper uses
      ``lam = 1``).
    * ``"none"``: ``Z = G_IN`` (the "w/o Opt" ablation, Table 4b).

    Returns:
        One tensor per parameter, shapes as the inputs.

    Raises:
        ValueError: unknown ``mode``, or lists of different lengths.

    >>> g_in, g_local = [torch.tensor([1.0, -1.0])], [torch.tensor([0.0, 1.0])]  # b = -1 < 0, a = 1
    >>> corrected_in_gradient(g_in, g_local, "eq12")  # G_IN + G_local: orthogonal to G_local
    [tensor([1., 0.])]
    >>> corrected_in_gradient(g_in, g_local, "eq13")  # G_IN + G_local / 2
    [tensor([ 1.0000, -0.5000])]
    """
    if mode not in CORRECTIONS:
        raise ValueError(f"model.correction: must be one of {list(CORRECTIONS)}, got {mode!r}")
    if len(g_in) != len(g_local):
        raise ValueError(f"gradients: {len(g_in)} IN tensors vs {len(g_local)} local tensors")
    if mode == "none":
        return list(g_in)
    if mode == "eq13":
        return [gi + (lam / 2.0) * gl for gi, gl in zip(g_in, g_local)]
    a = sum((gl.double() * gl.double()).sum() for gl in g_local)
    b = sum((gl.double() * gi.double()).sum() for gi, gl in zip(g_in, g_local))
    if b >= 0 or a == 0:
        return list(g_in)
    ratio = float(b / a)
    return [gi - ratio * gl for gi, gl in zip(g_in, g_local)]


def add_feature_noise(features: Tensor, k: float, generator: torch.Generator | None = None) -> Tensor:
    """``features + k * sigma * N(0, 1)`` with ``sigma`` the standard deviation of ``features``
    over all its entries (FedIN paper, Sec. 4.3: ``k = 0.8`` for "FedIN (+Noise)").

    Raises:
        ValueError: ``k < 0``.

    >>> f = torch.tensor([1.0, 3.0])  # sigma = 1.4142
    >>> noisy = add_feature_noise(f, 0.5, torch.Generator().manual_seed(0))
    >>> torch.allclose(noisy - f, 0.5 * f.std() * torch.randn(2, generator=torch.Generator().manual_seed(0)))
    True
    >>> add_feature_noise(f, 0.0) is f
    True
    """
    if k < 0:
        raise ValueError(f"model.noise_k: must be >= 0, got {k}")
    if k == 0:
        return features
    noise = torch.randn(features.shape, generator=generator, dtype=features.dtype).to(features.device)
    return features + k * features.std() * noise


class FedINModule(FedProxModule):
    """FedIN client: local training plus IN training (FedIN paper, Fig. 2b/2c).

    Each step, on a local batch ``(x, y)``:

    1. ``G_local``: gradient of ``CE(f(x), y) + (mu / 2) ||w - w_prev||^2`` (Eq. 3; ``w_prev`` is
       the model the client received) for every parameter.
    2. ``G_IN``: gradient of ``MSE(intermediate(s_in^c), s_out^c)`` (Eq. 7) for the intermediate
       layers only, on the next batch of server features (cycled; a batch has the size the
       sending client used).
    3. The intermediate layers step with ``G_local + Z``, ``Z`` = :func:`corrected_in_gradient`
       (Eq. 12 or 13); the extractor and classifier step with ``G_local``. The paper defines Z as
       the corrected IN gradient of Eq. 9 and does not spell out how it meets the local one;
       here Z takes G_IN's place next to G_local.

    After training, the client features for the upload are ``s_in = extractor(x)`` and
    ``s_out = intermediate(s_in)`` (eval mode) on the client's last full training batch (Eq. 4-5),
    with ``noise_k * sigma`` Gaussian noise added to each when ``noise_k > 0`` (Sec. 4.3).

    Ablations (Table 4b): ``in_training=False`` (w/o IN), ``mu=0`` (w/o Prox),
    ``correction="none"`` (w/o Opt).

    Args:
        net: a model family member with ``extractor``, ``intermediate``, ``classifier``.
        optimizer, channels_last: as :class:`ClientModule` (the paper: Adam with PyTorch defaults).
        mu: proximal weight (paper: ``mu / 2 = 0.05``, so ``mu = 0.1``).
        in_training: run IN training.
        correction: ``"eq12"``, ``"eq13"`` (paper's experiments) or ``"none"``.
        lam: lambda of Eq. 13 (paper: 1).
        noise_k: noise level k >= 0 (0: FedIN; 0.8: "FedIN (+Noise)").

    Raises:
        ValueError: ``mu < 0``, ``noise_k < 0``, ``lam < 0``, unknown ``correction``; a net without
            ``extractor`` / ``intermediate`` (at :meth:`check_local_config`).
    """

    #: Not under local DP-SGD: the intermediate-layer terms need their own backward passes.
    supports_local_dp = False

    server_strategies = ("flcore.strategies.FedIN",)  # the server features come from its feature bank

    def __init__(self, net: nn.Module, optimizer: OptimizerCallable = default_optimizer, channels_last: bool = False,
                 mu: float = 0.1, in_training: bool = True, correction: str = "eq13", lam: float = 1.0,
                 noise_k: float = 0.0):
        super().__init__(net, optimizer, channels_last, mu)
        if correction not in CORRECTIONS:
            raise ValueError(f"model.correction: must be one of {list(CORRECTIONS)}, got {correction!r}")
        if noise_k < 0:
            raise ValueError(f"model.noise_k: must be >= 0, got {noise_k}")
        if lam < 0:
            raise ValueError(f"model.lam: must be >= 0, got {lam}")
        self.in_training, self.correction, self.lam, self.noise_k = bool(in_training), correction, float(lam), float(noise_k)
        self.automatic_optimization = False
        self._server: list[tuple[Tensor, Tensor]] = []
        self._cursor = 0
        self._upload_x: Tensor | None = None

    def check_local_config(self, local: dict[str, Any]) -> None:
        if not isinstance(self.net, IntermediateNet):
            raise ValueError("model.net: FedIN needs extractor / intermediate / classifier sub-modules "
                             "(e.g. lightning_modules.models.HeteroResNet)")
        if local.get("accumulate_grad_batches", 1) != 1:
            raise ValueError("trainer.local.accumulate_grad_batches: FedIN combines two gradients every step; must be 1")
        if str(local.get("precision", "32")).startswith("16"):
            raise ValueError("trainer.local.precision: FedIN combines two gradients by hand; use 32 or bf16-mixed, "
                             "not fp16 with gradient scaling")

    def configure_client(self, payload: Any) -> None:
        super().configure_client(payload)
        self._server, self._cursor, self._upload_x = [], 0, None
        if isinstance(payload, FedINTask) and self.in_training:
            sizes = [int(n) for n in payload.batch_sizes]
            self._server = list(zip(payload.s_in.split(sizes), payload.s_out.split(sizes)))

    def on_client_start(self) -> None:
        super().on_client_start()
        self._server = [(i.to(self.device), o.to(self.device)) for i, o in self._server]

    def local_step(self, batch, optimizer, first, last, scale):
        """One step: G_local from Eq. 3, G_IN from Eq. 7 on the next server batch, the intermediate
        layers step with G_local + Z (Eq. 12/13). Accumulation is refused (check_local_config)."""
        x, y = batch
        opt = optimizer
        opt.zero_grad()
        logits = self(x)
        loss = self.training_loss(logits, y, x)  # Eq. 3
        self.manual_backward(loss)
        if self._server:
            params = [p for p in self.net.intermediate.parameters() if p.requires_grad]
            s_in, s_out = self._server[self._cursor % len(self._server)]
            self._cursor += 1
            in_loss = F.mse_loss(self.net.intermediate(s_in), s_out)  # Eq. 7
            g_in = torch.autograd.grad(in_loss, params, allow_unused=True)
            g_in = [torch.zeros_like(p) if g is None else g for g, p in zip(g_in, params)]
            g_local = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            z = corrected_in_gradient(g_in, g_local, self.correction, self.lam)
            for p, zz in zip(params, z):  # G_local + Z, in place (z was computed from G_local first)
                if p.grad is None:
                    p.grad = zz
                else:
                    p.grad.add_(zz)
        opt.step()
        self._record(loss.detach(), logits, y)
        if self._upload_x is None or len(x) >= len(self._upload_x):
            self._upload_x = x.detach()
        return loss

    def client_upload(self) -> FedINUpload | None:
        """One batch of client features (:class:`FedINUpload`, Eq. 4-5, CPU); ``None`` before
        any training step."""
        if self._upload_x is None:
            return None
        was = self.net.training
        self.net.eval()
        with torch.no_grad():
            x = self._upload_x
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            s_in = self.net.extractor(x)
            s_out = self.net.intermediate(s_in)
        self.net.train(was)
        s_in, s_out = add_feature_noise(s_in.float(), self.noise_k), add_feature_noise(s_out.float(), self.noise_k)
        self._upload_x = None
        return FedINUpload(s_in.detach().cpu().contiguous(), s_out.detach().cpu())
