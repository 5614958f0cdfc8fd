"""Client-level differential privacy at the server (DP-FedAvg: McMahan et al., ICLR 2018; adaptive
clipping: Andrew et al., NeurIPS 2021): clipping, the noise split of adaptive clipping, and the
epsilon spent; the strategy is :class:`flcore.strategies.DPFedAvg`."""

from __future__ import annotations

import math


from flcore.functional.averaging import StateDict
from lightning_modules.dp import rdp_epsilon

__all__ = ["clip_update", "noise_multiplier_for_updates", "epsilon_spent"]


def clip_update(update: StateDict, clip_norm: float) -> tuple[StateDict, float]:
    """``update`` scaled to L2 norm at most ``clip_norm`` (over all its entries together), and its
    norm before clipping (McMahan et al. 2018, Algorithm 1, ``ClipFn``).

    >>> import torch
    >>> clipped, norm = clip_update({"w": torch.tensor([3.0]), "b": torch.tensor([4.0])}, 1.0)
    >>> norm, clipped["w"], clipped["b"]
    (5.0, tensor([0.6000]), tensor([0.8000]))
    >>> clip_update({"w": torch.tensor([0.3])}, 1.0)[0]["w"]  # inside the ball: unchanged
    tensor([0.3000])
    """
    norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in update.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in update.items()}, norm


def noise_multiplier_for_updates(noise_multiplier: float, count_stddev: float) -> float:
    """The noise multiplier left for the updates when adaptive clipping also releases a noised
    count with standard deviation ``count_stddev`` (Andrew et al. 2021, Theorem 1:
    ``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``), so that both together spend what ``z`` alone
    would.

    Raises:
        ValueError: ``count_stddev`` too small for ``noise_multiplier`` (``2 sigma_b <= z``).

    >>> round(noise_multiplier_for_updates(1.0, 10.0), 6)  # (1 - 1/400)^(-1/2)
    1.001252
    """
    if noise_multiplier == 0:
        return 0.0
    rest = noise_multiplier ** -2 - (2 * count_stddev) ** -2
    if rest <= 0:
        raise ValueError(f"strategy.clip_count_stddev: must exceed noise_multiplier / 2 = {noise_multiplier / 2:g}, "
                         f"got {count_stddev}")
    return rest ** -0.5


def epsilon_spent(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """The epsilon of ``rounds`` rounds of the subsampled Gaussian mechanism at ``delta``, from
    Opacus's RDP accountant (``inf`` without noise; 0 before the first round).

    Raises:
        ImportError: Opacus is not installed (``pip install 'flcore[dp]'``).

    >>> epsilon_spent(1.0, 0.1, rounds=0, delta=1e-5), epsilon_spent(0.0, 0.1, rounds=5, delta=1e-5)
    (0.0, inf)
    """
    return rdp_epsilon(noise_multiplier, sample_rate, rounds, delta)  # one step per round
