"""FedET's server math (Cho et al., IJCAI 2022, "Heterogeneous Ensemble Knowledge Transfer for
Training Large Models in Federated Learning", Sec. 3.2): the confidence-weighted consensus and the
diversity targets of the client ensemble; the strategy is :class:`flcore.strategies.FedET`."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ensemble_targets"]


def ensemble_targets(log_probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """FedET's consensus and diversity targets from K client models on P public samples.

    ``log_probs``: ``(K, P, C)`` log-softmax outputs. A model's confidence on a sample is the
    variance of its log-probabilities over the classes, ``v_k = Var_c log p_k(c | x)`` (a peaked
    prediction has a large variance; log-probabilities, as a public re-implementation of FedET
    computes it). Returns:

    * ``labels (P,)``: ``argmax_c sum_k a_k log p_k(c)`` with ``a_k = v_k / sum_j v_j``: the
      confidence-weighted consensus (FedET Sec. 3.2, step 1);
    * ``diversity (P, C)``: ``sum_k b_k log p_k`` with ``b_k`` proportional to ``v_k`` over the
      models whose own prediction differs from the consensus (the diversity regulariser's
      target, FedET Sec. 3.2); zero where every model agrees;
    * ``has_diversity (P,)``: whether any model disagrees.

    >>> lp = torch.log_softmax(torch.tensor([[[4.0, 0.0, 0.0]], [[3.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]]), dim=2)
    >>> labels, diversity, has = ensemble_targets(lp)  # 3 models, 1 sample, 3 classes
    >>> labels.tolist(), has.tolist()  # two confident models say 0; the third disagrees
    ([0], [True])
    >>> torch.allclose(diversity, lp[2])  # the only dissenter is the whole diversity target
    True
    """
    var = log_probs.var(dim=2)  # (K, P), unbiased
    alpha = var / var.sum(0, keepdim=True).clamp_min(torch.finfo(var.dtype).tiny)
    labels = (alpha.unsqueeze(2) * log_probs).sum(0).argmax(1)
    disagree = (log_probs.argmax(2) != labels.unsqueeze(0)).to(var.dtype)
    dvar = disagree * var
    total = dvar.sum(0, keepdim=True)
    beta = dvar / total.clamp_min(torch.finfo(var.dtype).tiny)
    diversity = (beta.unsqueeze(2) * log_probs).sum(0)
    return labels, diversity, total.squeeze(0) > 0
