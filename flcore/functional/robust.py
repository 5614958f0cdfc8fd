"""Robust aggregation: coordinate-wise median, trimmed mean, Krum and Multi-Krum.

Pure functions on lists of ``state_dict``s (every entry, buffers included), each the math of one
strategy (:class:`flcore.strategies.FedMedian`, :class:`~flcore.strategies.FedTrimmedAvg`,
:class:`~flcore.strategies.Krum`). They ignore sample counts: a client cannot buy influence by
claiming more data. Integer buffers (``num_batches_tracked``) get the rounded result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from flcore.functional.averaging import StateDict, _check_same_keys
from flcore.functional.geometry import trained_keys

__all__ = ["coordinate_median", "trimmed_mean", "krum_scores", "krum_select", "multi_krum"]


def _per_key(states: Sequence[Mapping[str, Tensor]], reduce) -> StateDict:
    _check_same_keys(states)
    out = {}
    for key, first in states[0].items():
        stacked = torch.stack([s[key].to(torch.float64) for s in states])
        value = reduce(stacked)
        out[key] = value.round().to(first.dtype) if not first.is_floating_point() else value.to(first.dtype)
    return out


def coordinate_median(states: Sequence[Mapping[str, Tensor]]) -> StateDict:
    """Entry-wise median over the clients (Yin et al., ICML 2018): for an even number of clients
    the mean of the two middle values, as ``numpy.median``.

    Args:
        states: ``n >= 1`` state_dicts with the same keys and shapes.

    Returns:
        A state_dict of the same keys, shapes and dtypes.

    Raises:
        ValueError: no states, or keys that differ.

    >>> import torch
    >>> states = [{"w": torch.tensor([1.0, 10.0])}, {"w": torch.tensor([2.0, 20.0])},
    ...           {"w": torch.tensor([100.0, -5.0])}]
    >>> coordinate_median(states)["w"]
    tensor([ 2., 10.])
    >>> coordinate_median(states[:2])["w"]
    tensor([ 1.5000, 15.0000])
    """
    return _per_key(states, lambda x: x.quantile(0.5, dim=0))


def trimmed_mean(states: Sequence[Mapping[str, Tensor]], beta: float) -> StateDict:
    """Entry-wise beta-trimmed mean (Yin et al., ICML 2018): for each entry drop the
    ``floor(beta * n)`` largest and smallest client values and average the rest.

    Args:
        states: ``n`` state_dicts with the same keys and shapes.
        beta: fraction trimmed at each end, ``0 <= beta < 0.5`` (0: the plain mean).

    Returns:
        A state_dict of the same keys, shapes and dtypes.

    Raises:
        ValueError: ``beta`` out of range; no states or keys that differ.

    >>> import torch
    >>> states = [{"w": torch.tensor([v])} for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    >>> trimmed_mean(states, 0.2)["w"]   # drops 1 and 1000
    tensor([3.])
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"strategy.beta: must be in [0, 0.5), got {beta}")
    n = len(states)
    cut = math.floor(beta * n)
    return _per_key(states, lambda x: x.sort(dim=0).values[cut:n - cut].mean(dim=0))


def _flat(state: Mapping[str, Tensor], keys: Sequence[str]) -> Tensor:
    return torch.cat([state[k].detach().reshape(-1).to(torch.float64) for k in keys])


def krum_scores(states: Sequence[Mapping[str, Tensor]], f: int) -> Tensor:
    """Krum scores (Blanchard et al., NeurIPS 2017, Sec. 4): for each client, the sum of squared
    L2 distances (over the trained weights) to its ``n - f - 2`` nearest other clients.

    Args:
        states: ``n`` state_dicts with the same keys and shapes, ``n > 2 f + 2``.
        f: the number of Byzantine clients tolerated, ``f >= 0``.

    Returns:
        Shape ``(n,)``, float64; lower is more central.

    Raises:
        ValueError: ``f < 0`` or ``n <= 2 f + 2``; no states or keys that differ.

    >>> import torch
    >>> states = [{"w": torch.tensor([v])} for v in (0.0, 1.0, 2.0, 50.0)]
    >>> krum_scores(states, 0).tolist()   # two nearest others each: 0 -> 1 + 4, 1 -> 1 + 1, ...
    [5.0, 2.0, 5.0, 4705.0]
    """
    _check_same_keys(states)
    n = len(states)
    if f < 0 or n <= 2 * f + 2:
        raise ValueError(f"strategy.num_malicious: Krum needs clients_per_round > 2 f + 2 and f >= 0; "
                         f"got {n} clients and f = {f}")
    keys = trained_keys(states[0]) or list(states[0])
    flat = torch.stack([_flat(s, keys) for s in states])
    dist = torch.cdist(flat, flat).pow(2)
    dist.fill_diagonal_(float("inf"))
    return dist.sort(dim=1).values[:, : n - f - 2].sum(dim=1)


def krum_select(states: Sequence[Mapping[str, Tensor]], f: int, m: int = 1) -> list[int]:
    """Indices of the ``m`` clients with the lowest :func:`krum_scores` (ties: lower index first).

    Raises:
        ValueError: ``m`` not in ``[1, n]``; as :func:`krum_scores`.

    >>> import torch
    >>> krum_select([{"w": torch.tensor([v])} for v in (0.0, 1.0, 2.0, 50.0)], f=0, m=2)
    [1, 0]
    """
    if not 1 <= m <= len(states):
        raise ValueError(f"strategy.num_selected: must be in [1, clients], got {m} for {len(states)} clients")
    scores = krum_scores(states, f)
    order = sorted(range(len(states)), key=lambda i: (float(scores[i]), i))
    return order[:m]


def multi_krum(states: Sequence[Mapping[str, Tensor]], f: int, m: int = 1) -> StateDict:
    """Multi-Krum (Blanchard et al., NeurIPS 2017; El Mhamdi et al., ICML 2018): the unweighted
    mean of the ``m`` clients :func:`krum_select` picks; ``m = 1`` is Krum (that client's model).

    Raises:
        ValueError: as :func:`krum_select`.

    >>> import torch
    >>> multi_krum([{"w": torch.tensor([v])} for v in (0.0, 1.0, 2.0, 50.0)], f=0, m=3)["w"]
    tensor([1.])
    """
    chosen = [states[i] for i in krum_select(states, f, m)]
    return _per_key(chosen, lambda x: x.mean(dim=0))
