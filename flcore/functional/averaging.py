"""Weighted averaging of model states: FedAvg's mean, its streaming form, and the layer-wise
mean over models with different key sets (FedIN paper, Eq. 19).

Buffer policy (every averaging function of :mod:`flcore.functional` follows it):

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

__all__ = ["StateDict", "mix", "RunningMix", "weighted_average", "layerwise_average", "union_state", "state_bytes"]


StateDict = dict[str, Tensor]


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

    >>> mix([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])], [0.5, 0.25])
    tensor([1.2500, 2.5000])
    >>> mix([torch.tensor(3), torch.tensor(4)], [0.5, 0.5])  # integer buffer: 3.5 rounded to even
    tensor(4)
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

    >>> a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    >>> b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(4)}
    >>> weighted_average([a, b], [3, 1])  # 3/4 a + 1/4 b; the count 3.25 rounds to 3
    {'w': tensor([1.5000, 3.0000]), 'n': tensor(3)}
    """
    _check_same_keys(states)
    if len(weights) != len(states):
        raise ValueError(f"weights: expected {len(states)} values, got {len(weights)}")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights: must be non-negative with a positive sum, got {list(weights)}")
    norm = [float(w) / total for w in weights]
    return {k: mix([s[k] for s in states], norm) for k in states[0]}


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

    >>> layerwise_average([{"a": torch.tensor([1.0]), "b": torch.tensor([2.0])}, {"a": torch.tensor([3.0])}])
    {'a': tensor([2.]), 'b': tensor([2.])}
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


def union_state(model_state: dict[str, StateDict]) -> StateDict:
    """All architectures' entries in one dict; an entry several share takes the first
    architecture's tensor (config order), so every client starts from one global model.
    Returns references, not copies.

    >>> union_state({"small": {"a": torch.tensor(1.0)}, "large": {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}})
    {'a': tensor(1.), 'b': tensor(3.)}
    """
    union: StateDict = {}
    for arch_state in model_state.values():
        for k, v in arch_state.items():
            union.setdefault(k, v)
    return union


def state_bytes(state: Mapping[str, Tensor]) -> int:
    """Size of a state_dict on the wire in bytes (sum of ``numel * element_size``).

    >>> state_bytes({"w": torch.zeros(10, 4), "n": torch.tensor(0)})  # 40 float32 + one int64
    168
    """
    return sum(t.numel() * t.element_size() for t in state.values())
