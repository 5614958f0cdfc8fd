"""Where K models sit relative to each other: Gram matrices, cosine similarities and distances
over their trained weights (the diagnostics of the middleware models, and FedCross's similarity)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from flcore.functional.averaging import _check_same_keys

__all__ = ["trained_keys", "gram_matrices", "model_geometry"]


def trained_keys(state: Mapping[str, Tensor]) -> list[str]:
    """The trained weights of a state_dict: every floating-point entry except BatchNorm running
    statistics (``running_mean`` / ``running_var``).

    >>> trained_keys({"conv.weight": torch.zeros(1), "bn.running_mean": torch.zeros(1), "bn.num_batches_tracked": torch.tensor(0)})
    ['conv.weight']
    """
    return [key for key, t in state.items() if t.is_floating_point() and not key.endswith(("running_mean", "running_var"))]


def gram_matrices(states: Sequence[Mapping[str, Tensor]], keys: Sequence[str] | None = None,
                  chunk_elems: int = 1 << 16) -> list[Tensor]:
    """One ``(K, K)`` float64 Gram matrix ``G[i, j] = <s_i[key], s_j[key]>`` per key of ``keys``
    (default :func:`trained_keys`), in one pass over the K models, ``chunk_elems`` columns at a
    time (float32 blocks, float64 accumulation; see :func:`similarity_matrix`).

    >>> gram_matrices([{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([1.0, 1.0])}])
    [tensor([[1., 1.],
            [1., 2.]], dtype=torch.float64)]
    """
    _check_same_keys(states)
    k = len(states)
    keys = trained_keys(states[0]) if keys is None else keys
    step = max(1, chunk_elems)
    grams = []
    for key in keys:
        flats = [s[key].detach().reshape(-1) for s in states]
        gram = torch.zeros(k, k, dtype=torch.float64)
        for start in range(0, flats[0].numel(), step):
            block = torch.stack([f[start : start + step] for f in flats])
            if block.dtype != torch.float64:
                block = block.to(torch.float32)
            gram += (block @ block.T).to(torch.float64)
        grams.append(gram)
    return grams


def model_geometry(states: Sequence[Mapping[str, Tensor]], keys: Sequence[str] | None = None) -> dict[str, Tensor]:
    """How K models sit relative to each other (the middleware models of FedCross / FedMR), from
    one Gram matrix ``G`` over the trained weights (default :func:`trained_keys`):

    * ``cosine``: ``(K, K)`` cosine similarities ``G_ij / sqrt(G_ii G_jj)``;
    * ``distance``: ``(K, K)`` Euclidean distances ``sqrt(G_ii + G_jj - 2 G_ij)``;
    * ``to_mean``: ``(K,)`` distance of each model to their mean,
      ``sqrt(G_ii - (2/K) sum_j G_ij + (1/K^2) sum_jl G_jl)``.

    All float64. Raises ``ValueError`` (via the key check) on models with different keys.

    >>> g = model_geometry([{"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([3.0, 4.0])}])
    >>> g["distance"][0, 1].item(), g["to_mean"].tolist()  # a zero model has cosine 0 with every model
    (5.0, [2.5, 2.5])
    """
    g = sum(gram_matrices(states, keys), torch.zeros(len(states), len(states), dtype=torch.float64))
    diag = g.diagonal()
    k = len(states)
    distance = (diag[:, None] + diag[None, :] - 2 * g).clamp_min(0).sqrt()
    distance.fill_diagonal_(0.0)
    to_mean = (diag - 2.0 / k * g.sum(1) + g.sum() / k**2).clamp_min(0).sqrt()
    return {"cosine": _cosine_from_gram(g), "distance": distance, "to_mean": to_mean}


def _cosine_from_gram(gram: Tensor) -> Tensor:
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))
