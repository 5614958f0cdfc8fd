"""Pure functions of federated aggregation on lists of ``state_dict``s.

Every function here takes model states (``dict[str, Tensor]``, all with the same keys and
shapes unless stated) and returns new ones, and touches no data, optimizers or trainers.
Inputs are never mutated, except where a function says so by an explicit argument:
``mix(..., out=t)`` writes its result into ``t``, and ``cross_aggregate(..., inplace=True)``
writes the K new models into the K input tensors (FedCross does this with the uploads it is
handed, to need no extra model copies). Strategies in :mod:`flcore.strategies` hold state and
call these.

Buffer policy (applies to every averaging function in this module):

* floating tensors (weights, biases, BatchNorm ``running_mean`` / ``running_var``) are averaged
  in float32 or wider and cast back to their dtype;
* integer and boolean tensors (BatchNorm ``num_batches_tracked``) cannot be averaged as floats
  without changing their meaning, so they get the weighted mean *rounded to the nearest
  integer* and cast back to their dtype. For ``num_batches_tracked`` this keeps a count of the
  right magnitude (it only matters for BatchNorm with ``momentum=None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

StateDict = dict[str, Tensor]

__all__ = [
    "StateDict",
    "weighted_average",
    "mix",
    "RunningMix",
    "cross_aggregate",
    "gram_matrices",
    "model_geometry",
    "trained_keys",
    "in_order_partners",
    "dynamic_alpha",
    "similarity_matrix",
    "select_collaborators",
    "recombine",
    "module_groups",
    "layerwise_average",
    "state_bytes",
    "nova_mix",
    "slice_indices",
    "extract_submodel",
    "aggregate_slices",
]


def _check_same_keys(states: Sequence[Mapping[str, Tensor]]) -> None:
    if not states:
        raise ValueError("states: need at least one state_dict, got an empty list")
    keys = list(states[0].keys())
    for i, s in enumerate(states[1:], start=1):
        if list(s.keys()) != keys:
            missing = sorted(set(keys) ^ set(s.keys()))[:3]
            raise ValueError(f"states[{i}]: keys differ from states[0] (e.g. {missing})")


def mix(tensors: Sequence[Tensor], weights: Sequence[float], out: Tensor | None = None) -> Tensor:
    """Return ``sum_i weights[i] * tensors[i]`` with this module's buffer policy.

    Args:
        tensors: same-shape tensors, any dtype (all of one dtype).
        weights: one float per tensor; used as given (not normalised).
        out: write the result here (same shape and dtype; must not alias the inputs) instead of
            a new tensor.

    Returns:
        A tensor of the inputs' shape and dtype (``out`` when given). Floating inputs are
        accumulated in at least float32; integer/bool inputs are accumulated in float64 and
        rounded to nearest.
    """
    first = tensors[0]
    if first.is_floating_point():
        acc_dtype = torch.promote_types(first.dtype, torch.float32)
        if first.dtype == acc_dtype:  # float32/64: accumulate straight into the result
            if len(tensors) == 2 and abs(float(weights[0]) + float(weights[1]) - 1.0) < 1e-12:
                # w0 t0 + (1 - w0) t1 in one read-read-write kernel (cross-aggregation's common case)
                return torch.lerp(tensors[1], first, float(weights[0]), out=out)
            result = torch.mul(first, float(weights[0]), out=out)  # no zero-fill pass
            for w, t in zip(weights[1:], tensors[1:]):
                result.add_(t, alpha=float(w))
            return result
        acc = torch.mul(first.to(acc_dtype), float(weights[0]))
        for w, t in zip(weights[1:], tensors[1:]):
            acc.add_(t.to(acc_dtype), alpha=float(w))
        result = acc.to(first.dtype)
    else:
        acc = torch.zeros(first.shape, dtype=torch.float64, device=first.device)
        for w, t in zip(weights, tensors):
            acc.add_(t.to(torch.float64), alpha=float(w))
        result = acc.round_().to(first.dtype)
    return result if out is None else out.copy_(result)


class RunningMix:
    """:func:`mix` one tensor at a time, for aggregation that takes results as they arrive.

    After ``add(t_1, w_1) ... add(t_K, w_K)``, :meth:`result` is ``mix([t_1..t_K], [w_1..w_K])``
    bit for bit (the same kernels in the same order), except for :func:`mix`'s two-tensor
    shortcut (``K = 2`` with weights summing to 1), which only a whole list can take. Holds one
    accumulator of the tensors' shape (float32/64 for floating inputs, float64 for integers).

    >>> acc = RunningMix()
    >>> for t, w in [(torch.tensor([1.0, 2.0]), 0.5), (torch.tensor([3.0, 4.0]), 0.25), (torch.tensor([0.0, 4.0]), 0.25)]:
    ...     acc.add(t, w)
    >>> acc.result()
    tensor([1.2500, 3.0000])
    """

    def __init__(self):
        self._acc: Tensor | None = None
        self._dtype: torch.dtype | None = None

    def add(self, tensor: Tensor, weight: float) -> None:
        """Accumulate ``weight * tensor`` (same shape and dtype as the first one added)."""
        if self._acc is None:
            self._dtype = tensor.dtype
            if tensor.is_floating_point():
                acc_dtype = torch.promote_types(tensor.dtype, torch.float32)
                self._acc = torch.mul(tensor if tensor.dtype == acc_dtype else tensor.to(acc_dtype), float(weight))
            else:
                self._acc = torch.zeros(tensor.shape, dtype=torch.float64, device=tensor.device)
                self._acc.add_(tensor.to(torch.float64), alpha=float(weight))
            return
        self._acc.add_(tensor if tensor.dtype == self._acc.dtype else tensor.to(self._acc.dtype), alpha=float(weight))

    def scale_(self, factor: float) -> None:
        """Multiply what was accumulated by ``factor`` (e.g. to renormalise weights)."""
        self._acc.mul_(float(factor))

    def result(self) -> Tensor:
        """The mix, in the inputs' dtype (integers rounded to nearest).

        Raises:
            ValueError: nothing was added.
        """
        if self._acc is None:
            raise ValueError("RunningMix.result: nothing was added")
        if self._dtype.is_floating_point:
            return self._acc if self._acc.dtype == self._dtype else self._acc.to(self._dtype)
        return self._acc.round_().to(self._dtype)


def weighted_average(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> StateDict:
    """Weighted mean of K models, key by key (FedAvg, McMahan et al. 2017, Alg. 1).

    ``w = sum_k (n_k / n) w_k`` with ``n = sum_k n_k``.

    Args:
        states: K state_dicts with identical keys and shapes.
        weights: K non-negative numbers (e.g. client sample counts); normalised here.

    Returns:
        A new state_dict; integer buffers follow the module's rounding policy.

    Raises:
        ValueError: if ``states`` is empty, keys differ, lengths differ, or the weights sum to 0
            or contain a negative value.
    """
    _check_same_keys(states)
    if len(weights) != len(states):
        raise ValueError(f"weights: expected {len(states)} values, got {len(weights)}")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights: must be non-negative with a positive sum, got {list(weights)}")
    norm = [float(w) / total for w in weights]
    return {k: mix([s[k] for s in states], norm) for k in states[0]}


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


def trained_keys(state: Mapping[str, Tensor]) -> list[str]:
    """The trained weights of a state_dict: every floating-point entry except BatchNorm running
    statistics (``running_mean`` / ``running_var``)."""
    return [key for key, t in state.items() if t.is_floating_point() and not key.endswith(("running_mean", "running_var"))]


def gram_matrices(states: Sequence[Mapping[str, Tensor]], keys: Sequence[str] | None = None,
                  chunk_elems: int = 1 << 16) -> list[Tensor]:
    """One ``(K, K)`` float64 Gram matrix ``G[i, j] = <s_i[key], s_j[key]>`` per key of ``keys``
    (default :func:`trained_keys`), in one pass over the K models, ``chunk_elems`` columns at a
    time (float32 blocks, float64 accumulation; see :func:`similarity_matrix`)."""
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


def module_groups(keys: Sequence[str]) -> list[list[str]]:
    """Group state_dict keys by owning module: ``"a.b.weight"`` and ``"a.b.bias"`` -> ``"a.b"``.

    Returns:
        Lists of keys in first-seen order; every key in exactly one group.
    """
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.rpartition(".")[0], []).append(key)
    return list(groups.values())


def recombine(
    states: Sequence[Mapping[str, Tensor]], generator: torch.Generator, unit: str = "key"
) -> tuple[list[StateDict], dict[str, list[int]]]:
    """Layer-wise model recombination (FedMR paper, Sec. III-B.2, ModelRecombine).

    For every layer, the K models' copies are shuffled by a random permutation ``pi``; new model
    ``i`` takes model ``pi[i]``'s copy. Every uploaded layer is used by exactly one recombined
    model (the paper's invariant), so the multiset of tensors per key is unchanged.

    * ``unit="key"``: an independent permutation per state_dict entry, as the authors' code does
      (a conv weight and its bias may come from different models).
    * ``unit="module"``: one permutation per module (weight, bias and BatchNorm buffers move
      together; see :func:`module_groups`).

    The returned dicts reference the input tensors (no copies); treat them as read-only.

    Args:
        states: K state_dicts.
        generator: source of the permutations (seeded by the caller for reproducibility).
        unit: ``"key"`` or ``"module"``.

    Returns:
        ``(new_states, sources)``: K state_dicts and, per key, ``sources[key][i]`` = index of the
        model whose tensor new model ``i`` received.

    Raises:
        ValueError: on an unknown ``unit``.
    """
    if unit not in ("key", "module"):
        raise ValueError(f"unit: must be one of ['key', 'module'], got {unit!r}")
    _check_same_keys(states)
    k = len(states)
    keys = list(states[0].keys())
    groups = [[key] for key in keys] if unit == "key" else module_groups(keys)
    sources: dict[str, list[int]] = {}
    for group in groups:
        perm = torch.randperm(k, generator=generator).tolist()
        for key in group:
            sources[key] = perm
    new_states = [{key: states[sources[key][i]][key] for key in keys} for i in range(k)]
    return new_states, sources


def layerwise_average(
    states: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None
) -> StateDict:
    """Average each key over the models that have it (FedIN paper, Eq. 19; heterogeneous FL).

    Models may have different key sets (e.g. ResNet10 and ResNet26); a key present in ``m`` of
    the models is the (weighted) mean of those ``m`` tensors, which must share a shape.

    Args:
        states: state_dicts with possibly different keys.
        weights: one non-negative weight per state (default: equal); renormalised per key.

    Returns:
        The union of all keys, each averaged over its owners.

    Raises:
        ValueError: if a key has different shapes across models, or on bad weights.
    """
    if not states:
        raise ValueError("states: need at least one state_dict, got an empty list")
    weights = [1.0] * len(states) if weights is None else [float(w) for w in weights]
    if len(weights) != len(states) or any(w < 0 for w in weights):
        raise ValueError(f"weights: need {len(states)} non-negative values, got {weights}")
    owners: dict[str, list[int]] = {}
    for i, s in enumerate(states):
        for key in s:
            owners.setdefault(key, []).append(i)
    out: StateDict = {}
    for key, idx in owners.items():
        shapes = {tuple(states[i][key].shape) for i in idx}
        if len(shapes) > 1:
            raise ValueError(f"state key {key!r}: shapes differ across models: {sorted(shapes)}")
        w = [weights[i] for i in idx]
        total = sum(w)
        if total <= 0:
            raise ValueError(f"weights: owners of key {key!r} have zero total weight")
        out[key] = mix([states[i][key] for i in idx], [x / total for x in w])
    return out


def nova_mix(x: Tensor, ys: Sequence[Tensor], sizes: Sequence[float], a_norms: Sequence[float]) -> Tensor:
    """FedNova's normalized averaging of one tensor (Wang et al., NeurIPS 2020, Eq. 6).

    With ``p_i = n_i / sum n``, ``d_i = (x - y_i) / a_i`` and ``tau_eff = sum_i p_i a_i``:
    ``x - tau_eff * sum_i p_i d_i = (1 - sum_i w_i) x + sum_i w_i y_i`` with
    ``w_i = tau_eff p_i / a_i``.

    Args:
        x: the tensor the clients started from; ys: their trained tensors (same shape).
        sizes: sample counts n_i; a_norms: ``||a_i||_1`` (local steps for plain SGD), > 0.
    """
    total = float(sum(sizes))
    p = [float(n) / total for n in sizes]
    a = [max(float(v), 1e-12) for v in a_norms]
    tau_eff = sum(pi * ai for pi, ai in zip(p, a))
    w = [tau_eff * pi / ai for pi, ai in zip(p, a)]
    return mix([x, *ys], [1.0 - sum(w), *w])


def state_bytes(state: Mapping[str, Tensor]) -> int:
    """Size of a state_dict on the wire in bytes (sum of ``numel * element_size``)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def slice_indices(full: int, size: int, offset: int | None = None) -> Tensor:
    """Indices of a sub-model's ``size`` channels among the global ``full``: the leading ones
    (HeteroFL, Diao et al. ICLR 2021, ``offset=None``) or the rolling window
    ``(offset + arange(size)) % full`` (FedRolex, Alam et al. NeurIPS 2022, ``offset`` = round).

    Raises:
        ValueError: ``size`` not in ``[1, full]``.
    """
    if not 1 <= size <= full:
        raise ValueError(f"sub-model size: must be in [1, {full}], got {size}")
    if offset is None or size == full:
        return torch.arange(size)
    return (offset + torch.arange(size)) % full


def _dim_indices(full_shape, sub_shape, offset) -> list[Tensor]:
    return [slice_indices(f, s, offset) for f, s in zip(full_shape, sub_shape)]


def extract_submodel(full: StateDict, shapes: dict[str, tuple[int, ...]], offset: int | None = None) -> StateDict:
    """The sub-model of the given shapes: every dimension that is smaller than the global one is
    sliced by :func:`slice_indices` (the same indices wherever a layer's width appears, so
    consecutive layers stay connected); other dimensions are taken whole.

    Returns:
        New tensors (or the global tensor itself where nothing is sliced; read-only).
    """
    out: StateDict = {}
    for key, shape in shapes.items():
        t = full[key]
        for d, idx in enumerate(_dim_indices(full[key].shape, shape, offset)):
            if len(idx) != t.shape[d]:
                t = t.index_select(d, idx)
        out[key] = t
    return out


def aggregate_slices(full: StateDict, subs: list[StateDict], offsets: list[int | None]) -> StateDict:
    """HeteroFL aggregation: each global entry becomes the mean of the clients' values for it,
    over the clients whose sub-model contains it; entries no client has keep their value.

    Args:
        full: the global model.
        subs: the clients' trained sub-models (any subset of keys, sliced shapes).
        offsets: per client, the offset its slices were taken with (``None``: leading).
    """
    acc = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in full.items()}
    cnt = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in full.items()}
    for sub, offset in zip(subs, offsets):
        for key, value in sub.items():
            idx = _dim_indices(full[key].shape, value.shape, offset)
            nd = len(idx)
            index = tuple(i.view([-1 if j == d else 1 for j in range(nd)]) for d, i in enumerate(idx))
            acc[key].index_put_(index, value.to(torch.float64), accumulate=True)
            cnt[key].index_put_(index, torch.ones(value.shape, dtype=torch.float64), accumulate=True)
    out: StateDict = {}
    for key, v in full.items():
        mean = acc[key] / cnt[key].clamp_min(1)
        if not v.is_floating_point():
            mean = mean.round()
        out[key] = torch.where(cnt[key] > 0, mean, v.to(torch.float64)).to(v.dtype)
    return out
