"""FedMR's math (Hu et al., TMLR 2024, "FedMR: Federated Learning via Model Recombination"):
layer-wise recombination of the uploaded models; the strategy is :class:`flcore.strategies.FedMR`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from flcore.functional.averaging import StateDict, _check_same_keys

__all__ = ["module_groups", "recombine"]


def module_groups(keys: Sequence[str]) -> list[list[str]]:
    """Group state_dict keys by owning module: ``"a.b.weight"`` and ``"a.b.bias"`` -> ``"a.b"``.

    Returns:
        Lists of keys in first-seen order; every key in exactly one group.

    >>> module_groups(["conv.weight", "conv.bias", "bn.weight", "bn.running_mean", "fc.weight"])
    [['conv.weight', 'conv.bias'], ['bn.weight', 'bn.running_mean'], ['fc.weight']]
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

    >>> states = [{"w": torch.tensor([float(i)]), "b": torch.tensor([10.0 + i])} for i in range(3)]
    >>> new, sources = recombine(states, torch.Generator().manual_seed(0))
    >>> sorted(sources["w"]) == sorted(sources["b"]) == [0, 1, 2]  # each key: a permutation of the models
    True
    >>> [float(m["w"]) for m in new] == [float(states[j]["w"]) for j in sources["w"]]
    True
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
