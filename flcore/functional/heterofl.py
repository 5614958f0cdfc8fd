"""Width-sliced sub-models of one global model: HeteroFL's leading channels (Diao et al., ICLR
2021) and FedRolex's rolling window (Alam et al., NeurIPS 2022); the strategies are
:class:`flcore.strategies.HeteroFL` and :class:`flcore.strategies.FedRolex`."""

from __future__ import annotations


import torch
from torch import Tensor

from flcore.functional.averaging import StateDict

__all__ = ["slice_indices", "extract_submodel", "aggregate_slices"]


def slice_indices(full: int, size: int, offset: int | None = None) -> Tensor:
    """Indices of a sub-model's ``size`` channels among the global ``full``: the leading ones
    (HeteroFL, Diao et al. ICLR 2021, ``offset=None``) or the rolling window
    ``(offset + arange(size)) % full`` (FedRolex, Alam et al. NeurIPS 2022, ``offset`` = round).

    Raises:
        ValueError: ``size`` not in ``[1, full]``.

    >>> slice_indices(4, 2), slice_indices(4, 2, offset=3)  # HeteroFL's leading half; FedRolex's window
    (tensor([0, 1]), tensor([3, 0]))
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

    >>> full = {"w": torch.arange(12.0).view(4, 3)}
    >>> extract_submodel(full, {"w": (2, 3)})["w"]
    tensor([[0., 1., 2.],
            [3., 4., 5.]])
    >>> extract_submodel(full, {"w": (2, 3)}, offset=3)["w"]  # rows 3 and 0
    tensor([[ 9., 10., 11.],
            [ 0.,  1.,  2.]])
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

    >>> full = {"w": torch.zeros(4)}
    >>> aggregate_slices(full, [{"w": torch.ones(2)}, {"w": torch.full((3,), 4.0)}], offsets=[None, None])
    {'w': tensor([2.5000, 2.5000, 4.0000, 0.0000])}
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
