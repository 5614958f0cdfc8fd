"""FedCross's math (Hu et al., ICDE 2024, "FedCross: Towards Accurate Federated Learning via
Multi-Model Cross-Aggregation"): collaborative-model selection, cross-aggregation and the
dynamic alpha; the strategy is :class:`flcore.strategies.FedCross`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from flcore.functional.averaging import StateDict, _check_same_keys, mix
from flcore.functional.geometry import _cosine_from_gram, gram_matrices

__all__ = ["in_order_partners", "cross_aggregate", "dynamic_alpha", "SIMILARITY_MODES", "similarity_matrix", "select_collaborators"]


def in_order_partners(k: int, rnd: int, num_partners: int = 1) -> list[list[int]]:
    """Collaborative (or propeller) model indices of the in-order strategy.

    FedCross paper, Sec. III-B.1: in round ``r`` model ``i`` takes model
    ``(i + (r % (K-1) + 1)) % K``. With ``num_partners = m > 1`` (propeller models,
    Sec. III-D) model ``i`` takes the next ``m`` models of that rotation:
    ``(i + ((r + j) % (K-1) + 1)) % K`` for ``j = 0..m-1``. Each shift is a permutation of the
    K models, so every model is used equally often and cross-aggregation keeps the sum.

    Returns:
        ``K`` lists of ``num_partners`` distinct indices, none equal to its own index.

    Raises:
        ValueError: if ``k < 2`` or ``num_partners`` is not in ``[1, K-1]``.

    >>> in_order_partners(4, rnd=0), in_order_partners(4, rnd=1)
    ([[1], [2], [3], [0]], [[2], [3], [0], [1]])
    >>> in_order_partners(4, rnd=0, num_partners=2)
    [[1, 2], [2, 3], [3, 0], [0, 1]]
    """
    if k < 2:
        raise ValueError(f"K (number of middleware models): must be >= 2, got {k}")
    if not 1 <= num_partners <= k - 1:
        raise ValueError(f"num_partners: must be in [1, {k - 1}] for K={k}, got {num_partners}")
    return [[(i + ((rnd + j) % (k - 1) + 1)) % k for j in range(num_partners)] for i in range(k)]


def cross_aggregate(
    states: Sequence[Mapping[str, Tensor]], partners: Sequence[Sequence[int]], alpha: float, inplace: bool = False
) -> list[StateDict]:
    """Multi-model cross-aggregation (FedCross paper, Sec. III-B.2, CrossAggr).

    One partner per model is the paper's equation ``w_i = alpha v_i + (1 - alpha) v_co(i)``.
    With ``m`` partners (propeller models, Sec. III-D, which the paper describes only in words)
    every partner gets the weight a collaborative model gets, relative to the model's own:
    ``w_i = (alpha v_i + (1 - alpha) sum_p v_p) / (alpha + m (1 - alpha))``, so more partners
    bring more knowledge, which is the stated purpose of propeller models. When every partner
    list is made of in-order shifts (each a permutation of the K models), the sum of the models
    is preserved. Applies to every key, buffers included (integer buffers rounded, see module
    docstring).

    Args:
        states: K uploaded models ``v_1..v_K``.
        partners: for each ``i``, the indices of its collaborative / propeller models.
        alpha: weight of the model itself, in ``[0, 1]`` (FedCross uses ``[0.5, 1)``).
        inplace: write the results into the input tensors (which must not share storage) and
            return the input dicts: key by key, so at most K tensors of one key are extra, never
            K extra models, and no fresh memory is faulted in (about 10x faster on CPU for
            VGG-16). ``False``: inputs untouched, K new state_dicts.

    Returns:
        K state_dicts (new ones, or ``states`` itself when ``inplace``).

    Raises:
        ValueError: on a partner index out of range or equal to ``i``, or alpha out of range.

    >>> v = [{"w": torch.tensor([float(i)])} for i in range(3)]
    >>> w = cross_aggregate(v, in_order_partners(3, rnd=0), alpha=0.75)
    >>> [float(m["w"]) for m in w]  # w_0 = 0.75 * 0 + 0.25 * 1, ...
    [0.25, 1.25, 1.5]
    >>> float(sum(m["w"] for m in w))  # the sum of the models is kept
    3.0
    """
    _check_same_keys(states)
    k = len(states)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: must be in [0, 1], got {alpha}")
    if len(partners) != k:
        raise ValueError(f"partners: expected {k} lists, got {len(partners)}")
    plan = []  # (member indices, weights) of each new model
    for i, ps in enumerate(partners):
        if not ps or any(not 0 <= p < k or p == i for p in ps):
            raise ValueError(f"partners[{i}]: indices must be in [0, {k}) and differ from {i}, got {list(ps)}")
        norm = alpha + len(ps) * (1.0 - alpha)
        plan.append(([i, *ps], [alpha / norm] + [(1.0 - alpha) / norm] * len(ps)))
    if inplace:
        for key in states[0]:
            _mix_inplace([s[key] for s in states], plan)
        return [dict(s) for s in states]
    return [{key: mix([states[m][key] for m in members], weights) for key in states[0]} for members, weights in plan]


def _mix_inplace(tensors: list[Tensor], plan: list[tuple[list[int], list[float]]], chunk: int = 1 << 16) -> None:
    """``tensors[i] <- sum_j plan[i].weights[j] * tensors[plan[i].members[j]]`` for all i at once.

    Column chunks of the K tensors are copied into one small (cache-resident) block and the new
    values written straight back, so memory is read and written once and nothing model-sized is
    allocated. Non-float32/64 or non-contiguous tensors go through :func:`mix` (same values).
    """
    first = tensors[0]
    if first.dtype not in (torch.float32, torch.float64) or not all(t.is_contiguous() for t in tensors):
        new = [mix([tensors[m] for m in members], weights) for members, weights in plan]
        for t, n in zip(tensors, new):
            t.copy_(n)
        return
    flats = [t.view(-1) for t in tensors]
    for start in range(0, first.numel(), chunk):
        block = torch.stack([f[start : start + chunk] for f in flats])
        for dst, (members, weights) in zip(flats, plan):
            mix([block[m] for m in members], weights, out=dst[start : start + chunk])


def dynamic_alpha(target: float, step: int, steps: int, start: float = 0.5) -> float:
    """Dynamic alpha (FedCross paper, Sec. III-D): linear growth from ``start`` to ``target``.

    ``alpha(t) = start + (target - start) * t / steps`` for ``t`` in ``[0, steps)`` (``t`` counts
    the rounds since the schedule began), and ``target`` from ``t >= steps`` on. The paper says
    only "gradually increase from 0.5"; linear is the simplest such schedule.

    >>> dynamic_alpha(0.99, step=0, steps=10), dynamic_alpha(0.99, step=5, steps=10), dynamic_alpha(0.99, step=12, steps=10)
    (0.5, 0.745, 0.99)
    """
    if steps <= 0 or step >= steps:
        return float(target)
    return float(start + (target - start) * max(step, 0) / steps)


#: ``similarity_matrix`` modes.
SIMILARITY_MODES = ("model", "layerwise", "authors")


def similarity_matrix(
    states: Sequence[Mapping[str, Tensor]],
    mode: str = "model",
    keys: Sequence[str] | None = None,
    chunk_elems: int = 1 << 16,
) -> Tensor:
    """K x K cosine similarities of models (FedCross paper, Sec. III-B.1).

    The paper prints ``sum X_i Y_i / (||X|| + ||Y||)``; that is a typo: this computes the true
    cosine similarity ``<X, Y> / (||X|| ||Y||)``.

    * ``mode="model"``: one cosine over the whole flattened model (the trained weights).
    * ``mode="layerwise"``: the sum over state_dict keys of the per-key cosine similarities
      (range ``[-L, L]`` for L keys).
    * ``mode="authors"``: the measure of the FedCross authors' code as recorded in DESIGN.md:
      every state_dict entry (buffers included, integers as floats), taken in consecutive pairs
      of keys (a layer's weight with its bias: keys 0-1, 2-3, ...; an odd last key alone), one
      cosine per pair over the pair's concatenated entries, summed, with the last pair's cosine
      counted twice.

    One pass over the models: each key's K tensors are stacked, ``chunk_elems`` columns at a
    time, into a ``(K, chunk)`` block whose Gram matrix ``X X^T`` is computed in float32 (float64
    inputs stay float64) and accumulated in float64 across chunks; no loop over the K^2 pairs.
    Small chunks keep each float32 partial sum short (relative error of the Gram entries about
    5e-7 on VGG-16, against 1e-13 for an all-float64 product that is 2-4x slower on CPU). A
    zero-norm model gets similarity 0 with every other model.

    Args:
        states: K state_dicts.
        mode: ``"model"`` or ``"layerwise"``.
        keys: entries to use; default the trained weights: every floating-point entry except
            BatchNorm running statistics (``running_mean`` / ``running_var``).
        chunk_elems: columns per block (memory bound: ``K * chunk_elems`` elements at once).

    Returns:
        ``(K, K)`` float64 tensor, symmetric, diagonal 1 (or L in layerwise mode) where norms > 0.

    Raises:
        ValueError: on an unknown ``mode``.

    >>> s = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([2.0, 0.0])}, {"w": torch.tensor([0.0, 1.0])}]
    >>> similarity_matrix(s)
    tensor([[1., 1., 0.],
            [1., 1., 0.],
            [0., 0., 1.]], dtype=torch.float64)
    """
    if mode not in SIMILARITY_MODES:
        raise ValueError(f"similarity: must be one of {list(SIMILARITY_MODES)}, got {mode!r}")
    _check_same_keys(states)
    k = len(states)
    if keys is None and mode == "authors":
        keys = list(states[0])
    grams = gram_matrices(states, keys, chunk_elems)
    if mode == "model":
        return _cosine_from_gram(sum(grams, torch.zeros(k, k, dtype=torch.float64)))
    if mode == "layerwise":
        return sum((_cosine_from_gram(g) for g in grams), torch.zeros(k, k, dtype=torch.float64))
    pairs = [_cosine_from_gram(sum(grams[i : i + 2])) for i in range(0, len(grams), 2)]  # Gram of a concatenation
    return sum(pairs, torch.zeros(k, k, dtype=torch.float64)) + (pairs[-1] if pairs else 0)


def select_collaborators(similarity: Tensor, criterion: str) -> list[int]:
    """Collaborative model of each middleware model by similarity (FedCross Sec. III-B.1).

    Args:
        similarity: ``(K, K)`` matrix, higher = more similar.
        criterion: ``"highest_similarity"`` (argmax) or ``"lowest_similarity"`` (argmin), in both
            cases over ``j != i``; ties go to the smallest index.

    Returns:
        K indices, ``result[i] != i``.

    Raises:
        ValueError: on an unknown criterion or a matrix that is not square with K >= 2.

    >>> sim = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> select_collaborators(sim, "highest_similarity"), select_collaborators(sim, "lowest_similarity")
    ([1, 0, 0], [2, 2, 0])
    """
    k = similarity.shape[0]
    if similarity.dim() != 2 or similarity.shape[1] != k or k < 2:
        raise ValueError(f"similarity: expected a square (K, K) matrix with K >= 2, got {tuple(similarity.shape)}")
    s = similarity.to(torch.float64).clone()
    eye = torch.eye(k, dtype=torch.bool)
    if criterion == "highest_similarity":
        return s.masked_fill(eye, float("-inf")).argmax(dim=1).tolist()
    if criterion == "lowest_similarity":
        return s.masked_fill(eye, float("inf")).argmin(dim=1).tolist()
    raise ValueError(
        f"selection: must be one of ['in_order', 'highest_similarity', 'lowest_similarity'], got {criterion!r}"
    )
