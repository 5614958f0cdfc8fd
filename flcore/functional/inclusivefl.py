"""InclusiveFL's server math (Liu et al., KDD 2022, "No One Left Behind: Inclusive Federated
Learning over Heterogeneous Devices", Sec. 4.3): the block structure of a depth-heterogeneous
ResNet family, momentum distillation of a deeper model's update into a shallower one, and the top
blocks kept local; the strategy is :class:`flcore.strategies.InclusiveFL`."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from flcore.functional.averaging import StateDict

__all__ = ["block_of", "stage_depths", "momentum_distill", "local_top_keys"]

_BLOCK = re.compile(r"^(?P<stage>.*layer\d+)\.(?P<block>\d+)\.(?P<rest>.+)$")


def block_of(key: str) -> tuple[str, int, str] | None:
    """The stage, block index and rest of a state_dict key; ``None`` for keys outside a stage's
    blocks.

    >>> block_of("intermediate.layer3.1.conv1.weight")
    ('intermediate.layer3', 1, 'conv1.weight')
    >>> block_of("classifier.weight") is None
    True
    """
    m = _BLOCK.match(key)
    return (m["stage"], int(m["block"]), m["rest"]) if m else None


def stage_depths(keys) -> dict[str, int]:
    """Blocks per stage of a model, from its state_dict keys.

    >>> stage_depths(["layer1.0.conv1.weight", "layer1.1.conv1.weight", "layer2.0.conv1.weight", "fc.weight"])
    {'layer1': 2, 'layer2': 1}
    """
    depth: dict[str, int] = {}
    for key in keys:
        parsed = block_of(key)
        if parsed:
            depth[parsed[0]] = max(depth.get(parsed[0], 0), parsed[1] + 1)
    return depth


def momentum_distill(d_small: Mapping[str, Tensor], d_deep: Mapping[str, Tensor], beta: float) -> StateDict:
    """A shallower model's update after momentum distillation from the next deeper one
    (InclusiveFL Sec. 4.3).

    In every stage the top block ``t`` of the shallow model takes
    ``D_s[t] <- (1 - beta) D_s[t] + beta * mean_{j = t .. n_d - 1} D_d[j]``: the mean update of
    the deeper model's blocks from the same position to its own top (the blocks the shallow model
    lacks), entry by entry where the shapes agree. Other entries are returned unchanged (the same
    tensors); the inputs are not mutated.

    Args:
        d_small, d_deep: the two architectures' updates (trained - received), keyed as their
            state_dicts (the block structure is read from the keys).
        beta: distillation weight in ``[0, 1]``.

    >>> d_small = {"layer1.0.conv.weight": torch.zeros(2)}
    >>> d_deep = {"layer1.0.conv.weight": torch.ones(2), "layer1.1.conv.weight": torch.full((2,), 3.0)}
    >>> momentum_distill(d_small, d_deep, beta=0.5)["layer1.0.conv.weight"]  # 0.5 * 0 + 0.5 * mean(1, 3)
    tensor([1., 1.])
    """
    out = dict(d_small)
    depth_small, depth_deep = stage_depths(d_small), stage_depths(d_deep)
    for key, value in d_small.items():
        parsed = block_of(key)
        if not parsed or parsed[1] != depth_small[parsed[0]] - 1:
            continue
        stage, top, rest = parsed
        sources = [d_deep[k] for j in range(top, depth_deep.get(stage, 0))
                   if (k := f"{stage}.{j}.{rest}") in d_deep and d_deep[k].shape == value.shape]
        if sources:
            out[key] = (1.0 - beta) * value + beta * torch.stack(sources).mean(0)
    return out


def local_top_keys(models: Mapping[str, Mapping[str, Tensor]]) -> dict[str, set[str]]:
    """Per architecture, the entries of its top blocks in the stages where the deepest model of
    the family goes further (the blocks that distillation writes into; the authors'
    ``--local_one`` keeps them local).

    >>> models = {"small": {"layer1.0.w": torch.zeros(1)}, "deep": {"layer1.0.w": torch.zeros(1), "layer1.1.w": torch.zeros(1)}}
    >>> local_top_keys(models)
    {'small': {'layer1.0.w'}, 'deep': set()}
    """
    deepest: dict[str, int] = {}
    for m in models.values():
        for stage, n in stage_depths(m).items():
            deepest[stage] = max(deepest.get(stage, 0), n)
    out: dict[str, set[str]] = {}
    for arch, m in models.items():
        depth = stage_depths(m)
        out[arch] = {k for k in m if (p := block_of(k)) and p[1] == depth[p[0]] - 1 < deepest[p[0]] - 1}
    return out
