"""FedGen's server math (Zhu, Hong & Zhou, ICML 2021, "Data-Free Knowledge Distillation for
Heterogeneous Federated Learning", Algorithm 1): the classifier head of an uploaded model, the
teachers' label weights and the ensemble objective the generator is trained on; the strategy is
:class:`flcore.strategies.FedGen`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from flcore.functional.averaging import StateDict

__all__ = ["classifier_keys", "teacher_weights", "ensemble_teacher_loss"]


def classifier_keys(state: StateDict) -> tuple[str, str | None]:
    """The classifier head's weight and bias keys: the last 2-D floating entry and the 1-D entry
    that follows it (the networks' ``classifier`` is one Linear registered last).

    >>> state = {"conv.weight": torch.zeros(4, 1, 3, 3), "fc.weight": torch.zeros(10, 4),
    ...          "fc.bias": torch.zeros(10), "classifier.weight": torch.zeros(3, 10), "classifier.bias": torch.zeros(3)}
    >>> classifier_keys(state)
    ('classifier.weight', 'classifier.bias')

    Raises:
        ValueError: the state has no 2-D floating entry.
    """
    keys = list(state)
    heads = [i for i, k in enumerate(keys) if state[k].dim() == 2 and state[k].is_floating_point()]
    if not heads:
        raise ValueError("classifier_keys: the model state has no 2-D floating entry (no Linear classifier)")
    idx = heads[-1]
    bias = keys[idx + 1] if idx + 1 < len(keys) and state[keys[idx + 1]].dim() == 1 else None
    return keys[idx], bias


def teacher_weights(label_counts: Tensor) -> Tensor:
    """``w[k, y] = n_k,y / sum_j n_j,y`` (0 where no client has label y): how much client k's head
    counts as a teacher of label y (the FedGen reference code's label weights).

    Args:
        label_counts: ``(K, C)`` sample counts per client and class.

    Returns:
        ``(K, C)`` float64; every column with a positive count sums to 1.

    >>> teacher_weights(torch.tensor([[3, 0, 0], [1, 2, 0]]))
    tensor([[0.7500, 0.0000, 0.0000],
            [0.2500, 1.0000, 0.0000]], dtype=torch.float64)
    """
    counts = label_counts.to(torch.float64)
    total = counts.sum(0, keepdim=True)
    return torch.where(total > 0, counts / total.clamp_min(1), torch.zeros_like(counts))


def ensemble_teacher_loss(z: Tensor, y: Tensor, heads: Sequence[tuple[Tensor, Tensor | None]], weights: Tensor) -> Tensor:
    """The ensemble-knowledge term of FedGen's generator objective (Algorithm 1, line 10):
    ``sum_k mean_b w[k, y_b] CE(h_k(z_b), y_b)``.

    Args:
        z: ``(B, D)`` generated features; y: ``(B,)`` their labels.
        heads: per client, the classifier ``(C, D)`` weight and ``(C,)`` bias (or ``None``).
        weights: ``(K, C)`` from :func:`teacher_weights`, in ``z``'s dtype.

    Returns:
        A scalar tensor (differentiable in ``z``).

    >>> w = torch.eye(2)
    >>> z, y = torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])
    >>> heads = [(torch.zeros(2, 3), None), (torch.zeros(2, 3), torch.zeros(2))]
    >>> round(float(ensemble_teacher_loss(z, y, heads, w)), 4)  # two uniform heads: 2 * 0.5 * ln 2
    0.6931
    """
    return sum((F.cross_entropy(F.linear(z, w, b), y, reduction="none") * weights[k, y]).mean()
               for k, (w, b) in enumerate(heads))
