"""Local DP-SGD on each client (Abadi et al., CCS 2016, Algorithm 1) through Opacus.

Every local step of a client clips each sample's gradient to L2 norm ``C`` (``max_grad_norm``),
sums them, adds Gaussian noise ``N(0, (z C)^2)`` (``z`` = ``noise_multiplier``) and divides by
the expected batch size; with Poisson sampling (:class:`datamodules.PoissonEpochs`) each
mini-batch holds every sample of the client independently with probability ``q = 1 / S``
(``S`` mini-batches per local epoch), which is what the accountant assumes. Per-sample gradients
come from Opacus's ``GradSampleModule`` hooks and the clipping and noise from its
``DPOptimizer`` (``pre_step``); the privacy spent is Opacus's RDP accountant over every local
step of every round the client took part in.

Composition with the client objectives: the per-sample gradients are those of everything in the
loss that flows through the net's activations (cross-entropy, MOON's contrastive term), so those
are clipped together and the noised estimate replaces the gradient. An objective whose loss also
has a term that depends on no sample (FedProx's proximal term) says so
(``ClientModule.sample_free_loss_terms``): that part of the gradient, the batch gradient minus
the mean per-sample gradient, is added back unclipped after the noise. Gradient edits made before
the optimizer step (SCAFFOLD's correction ``c - c_i``, gradient clipping) come after the noise
too. Both are post-processing of data-independent quantities and spend no privacy.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LocalDP", "DPSteps", "rdp_epsilon", "dp_refusal", "local_dp_refusal", "LEDGER_KEY"]

#: The client-state entry that counts a client's DP-SGD steps over all its rounds.
LEDGER_KEY = "local_dp_steps"


def _opacus(what: str = "trainer.local_dp: local DP-SGD") -> None:
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise ImportError(f"{what} needs Opacus: pip install 'flcore[dp]'") from None


def rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The epsilon at ``delta`` of ``steps`` compositions of the sampled Gaussian mechanism with
    noise multiplier ``noise_multiplier`` and sampling rate ``sample_rate`` (Opacus's RDP
    accountant; Mironov et al. 2019). ``0.0`` for no steps, ``inf`` without noise.

    Raises:
        ImportError: Opacus is not installed.

    >>> rdp_epsilon(1.0, 0.1, steps=0, delta=1e-5), rdp_epsilon(0.0, 0.1, steps=5, delta=1e-5)
    (0.0, inf)
    >>> rdp_epsilon(1.0, 0.1, 200, 1e-5) > rdp_epsilon(1.0, 0.1, 100, 1e-5)
    True
    """
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    _opacus("privacy accounting")
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(accountant.get_epsilon(delta))


class LocalDP:
    """Settings of local DP-SGD (``trainer.local_dp``).

    Args:
        noise_multiplier: z >= 0, the noise standard deviation in units of ``max_grad_norm``
            (0: clipping only, epsilon infinite).
        max_grad_norm: C > 0, the per-sample gradient norm bound (L2, over all trained
            parameters).
        delta: the delta of (epsilon, delta)-DP, in (0, 1); the epsilon is reported at it.
        poisson: Poisson sampling of each mini-batch (the accountant's assumption); ``False``
            keeps the shuffled fixed-size mini-batches, for which the reported epsilon is the
            customary approximation, not a guarantee.
        secure_mode: Opacus's noise that resists floating-point attacks (slower).

    Raises:
        ValueError: a setting out of range (``trainer.local_dp.<field>: ...``).
    """

    def __init__(self, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0, delta: float = 1e-5,
                 poisson: bool = True, secure_mode: bool = False):
        for name, ok, allowed in (("noise_multiplier", noise_multiplier >= 0, ">= 0"),
                                  ("max_grad_norm", max_grad_norm > 0, "> 0"),
                                  ("delta", 0 < delta < 1, "in (0, 1)")):
            if not ok:
                raise ValueError(f"trainer.local_dp.{name}: must be {allowed}, got {locals()[name]}")
        self.noise_multiplier, self.max_grad_norm, self.delta = float(noise_multiplier), float(max_grad_norm), float(delta)
        self.poisson, self.secure_mode = bool(poisson), bool(secure_mode)

    def __repr__(self) -> str:
        return (f"LocalDP(noise_multiplier={self.noise_multiplier}, max_grad_norm={self.max_grad_norm}, "
                f"delta={self.delta}, poisson={self.poisson}, secure_mode={self.secure_mode})")


def dp_refusal(net: nn.Module) -> str | None:
    """Why Opacus cannot compute per-sample gradients of ``net`` (BatchNorm mixes the samples of
    a batch; some layers have no per-sample rule), or ``None`` when it can. ``net`` is not
    changed."""
    _opacus()
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        return f"{errors[0]} (opacus.validators.ModuleValidator.fix replaces BatchNorm with GroupNorm)"
    try:
        GradSampleModule(copy.deepcopy(net))
    except Exception as err:  # Opacus raises NotImplementedError or its own errors
        text = str(err).strip().splitlines()
        return text[0] if text else type(err).__name__
    return None


def local_dp_refusal(module, config: LocalDP, local: dict[str, Any], batches) -> str | None:
    """Why ``module`` (a client module) cannot train under local DP-SGD ``config`` with the
    per-client Trainer settings ``local`` and a client's batch source ``batches`` (one line naming
    the field), or ``None``.

    Refused: a user's plain LightningModule (its own ``training_step`` is not split into
    per-sample gradients), an objective that runs the net more than once per step (FedGen,
    FedIN: ``supports_local_dp``), a net Opacus cannot handle (:func:`dp_refusal`), a precision
    other than ``32-true``, gradient accumulation, and Poisson sampling of data that is not held
    in memory.
    """
    from datamodules.base import ShuffledEpochs
    from lightning_modules.plain import PlainClient

    if isinstance(module, PlainClient):
        return ("trainer.local_dp: local DP-SGD runs on flcore's client modules (lightning_modules.ClientModule and "
                "its subclasses), not on a plain LightningModule; wrap the network in lightning_modules.ClientModule")
    if not module.supports_local_dp:
        return (f"trainer.local_dp: {type(module).__name__} runs its net more than once per step, which per-sample "
                f"clipping cannot bound; use FedAvg, FedProx, SCAFFOLD, FedNova or MOON's client module")
    precision = local.get("precision", "32-true")
    if precision not in ("32-true", "32", 32):
        return f"trainer.local.precision: local DP-SGD runs in 32-true, got {precision!r}"
    if local.get("accumulate_grad_batches", 1) != 1:
        return ("trainer.local.accumulate_grad_batches: must be 1 under local DP-SGD (each mini-batch is one "
                f"private step), got {local['accumulate_grad_batches']!r}")
    reason = dp_refusal(module.net)
    if reason is not None:
        return f"model.net: local DP-SGD cannot compute per-sample gradients of {type(module.net).__name__}: {reason}"
    if not config.poisson or isinstance(batches, ShuffledEpochs):
        return None
    return (
        "trainer.local_dp.poisson: Poisson sampling needs the data in memory (a datamodule whose client_batches "
        f"give ShuffledEpochs, got {type(batches).__name__}); set poisson: false")


class DPSteps:
    """One client module's local DP-SGD: per-sample gradients on its net, the Opacus optimizer
    of each fit, and the client's step count for the accountant.

    Args:
        config: the :class:`LocalDP` settings.
    """

    def __init__(self, config: LocalDP):
        self.config = config
        self._hooked: list[Any] = []  # the GradSampleModule (kept out of the LightningModule's modules)
        self._optimizer = None
        self.sample_rate = 1.0
        self.steps_before = 0  # the client's steps in its earlier rounds
        self.steps = 0  # this round's

    def attach(self, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Per-sample gradient hooks on ``net`` (once) and an Opacus ``DPOptimizer`` around this
        fit's ``optimizer`` (the torch optimizer that steps)."""
        _opacus()
        from opacus.grad_sample import GradSampleModule
        from opacus.optimizers import DPOptimizer

        if not self._hooked or self._hooked[0]._module is not net:
            self._hooked = [GradSampleModule(net, batch_first=True, loss_reduction="mean")]
        if self._optimizer is None or self._optimizer.original_optimizer is not optimizer:
            cfg = self.config
            self._optimizer = DPOptimizer(optimizer, noise_multiplier=cfg.noise_multiplier,
                                          max_grad_norm=cfg.max_grad_norm, expected_batch_size=1,
                                          loss_reduction="mean", secure_mode=cfg.secure_mode)

    def begin_client(self, num_samples: int, num_batches: int) -> None:
        """A new client (after its :attr:`steps_before` were set from its kept state):
        ``num_samples`` samples in ``num_batches`` mini-batches per epoch; the sampling rate is
        ``1 / num_batches``, the expected batch ``num_samples / num_batches``."""
        self.sample_rate = 1.0 / max(num_batches, 1)
        self._optimizer.expected_batch_size = num_samples * self.sample_rate
        self.steps = 0

    def clear(self) -> None:
        """Drop the per-sample gradients of the previous step (Opacus accumulates them)."""
        for p in self._optimizer.params:
            p.grad_sample = None
            p.summed_grad = None

    @torch.no_grad()
    def privatize(self, batch_size: int, keep_rest: bool = False) -> None:
        """Replace the gradients of the step just back-propagated (a batch of ``batch_size``
        samples, possibly 0) by their DP-SGD estimate: clipped per-sample gradients plus noise over
        the expected batch size (without Poisson sampling, over ``batch_size``); with ``keep_rest``, plus the sample-independent rest of the
        gradient (module docstring).

        Raises:
            RuntimeError: the net ran more than once in the step (per-sample gradients of two
                batches).
        """
        opt = self._optimizer
        rests: list[Tensor | None] = []
        for p in opt.params:
            sample = p.grad_sample
            if isinstance(sample, list):
                raise RuntimeError("trainer.local_dp: the net ran more than once on one mini-batch; local DP-SGD "
                                   "needs one forward pass per step")
            if sample is None or batch_size == 0:  # a parameter the batch did not reach, or an empty batch
                p.grad_sample = sample = torch.zeros((batch_size, *p.shape), dtype=p.dtype, device=p.device)
            rests.append(p.grad - sample.mean(0) if keep_rest and p.grad is not None and batch_size else None)
        if not self.config.poisson:  # fixed-size batches: the mean over the batch itself
            opt.expected_batch_size = max(batch_size, 1)
        opt.pre_step()
        for p, rest in zip(opt.params, rests):
            if rest is not None:
                p.grad.add_(rest)
        self.steps += 1

    def epsilon(self) -> float:
        """The client's epsilon after all its steps so far (earlier rounds and this one)."""
        cfg = self.config
        return rdp_epsilon(cfg.noise_multiplier, self.sample_rate, self.steps_before + self.steps, cfg.delta)

    def metrics(self) -> dict[str, float]:
        """``dp_steps`` (this client's DP-SGD steps over all its rounds) and ``dp_epsilon`` (its
        cumulative epsilon; left out without noise, where it is infinite)."""
        out = {"dp_steps": float(self.steps_before + self.steps)}
        if self.config.noise_multiplier > 0:
            out["dp_epsilon"] = self.epsilon()
        return out

    def __getstate__(self) -> dict[str, Any]:  # the hooks and optimizer are rebuilt where the module trains
        return {**self.__dict__, "_hooked": [], "_optimizer": None}
