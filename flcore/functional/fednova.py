"""FedNova's math (Wang et al., NeurIPS 2020, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization"); the strategy is :class:`flcore.strategies.FedNova`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from flcore.functional.averaging import mix

__all__ = ["nova_mix"]


def nova_mix(x: Tensor, ys: Sequence[Tensor], sizes: Sequence[float], a_norms: Sequence[float]) -> Tensor:
    """FedNova's normalized averaging of one tensor (Wang et al., NeurIPS 2020, Eq. 6).

    With ``p_i = n_i / sum n``, ``d_i = (x - y_i) / a_i`` and ``tau_eff = sum_i p_i a_i``:
    ``x - tau_eff * sum_i p_i d_i = (1 - sum_i w_i) x + sum_i w_i y_i`` with
    ``w_i = tau_eff p_i / a_i``.

    Args:
        x: the tensor the clients started from; ys: their trained tensors (same shape).
        sizes: sample counts n_i; a_norms: ``||a_i||_1`` (local steps for plain SGD), > 0.

    >>> import torch
    >>> # p = (1/2, 1/2), a = (1, 2): tau_eff = 1.5, w = (0.75, 0.375); 1 - 1.125 * 1 + 0.375 * 0.5
    >>> nova_mix(torch.tensor([1.0]), [torch.tensor([0.0]), torch.tensor([0.5])], sizes=[1, 1], a_norms=[1, 2])
    tensor([0.0625])
    """
    total = float(sum(sizes))
    p = [float(n) / total for n in sizes]
    a = [max(float(v), 1e-12) for v in a_norms]
    tau_eff = sum(pi * ai for pi, ai in zip(p, a))
    w = [tau_eff * pi / ai for pi, ai in zip(p, a)]
    return mix([x, *ys], [1.0 - sum(w), *w])
