"""InCo Aggregation (Chan et al., ICLR 2024, "Internal Cross-layer Gradients for Extending
Homogeneity to Heterogeneity in Federated Learning"): layer-wise heterogeneous aggregation of the
clients' updates, with each deep layer's update mixed with the update of a shallow layer of the
same stage."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flcore.functional import StateDict, layerwise_average
from flcore.strategies.base import ClientResult
from flcore.strategies.hetero_fedavg import HeteroFedAvg
from flcore.strategies.inclusivefl import block_of

__all__ = ["InCo", "cross_layer_update", "inco_reference_key"]


def inco_reference_key(key: str, keys: set[str] | dict) -> str | None:
    """The shallow layer whose update InCo mixes into ``key``'s, or ``None``.

    As in the authors' code (``aggregate_IN_gradients``): the convolutions (``conv1``/``conv2``
    weights) of a stage's blocks 1, 2, ... take the second convolution of the stage's first block
    (``...layer3.0.conv2.weight``), the shallowest layer of that stage with the blocks' shape.
    BatchNorm, shortcut, stem and classifier entries, and block 0 itself, are not mixed.
    """
    parsed = block_of(key)
    if parsed is None or parsed[1] == 0 or parsed[2] not in ("conv1.weight", "conv2.weight"):
        return None
    ref = f"{parsed[0]}.0.conv2.weight"
    return ref if ref in keys else None


def cross_layer_update(g: Tensor, g0: Tensor, clamp_max: float = 5.0, clip: float = 0.1, eps: float = 1e-7) -> Tensor:
    """InCo's corrected update of a deep convolution, kernel by kernel.

    ``g``, ``g0``: the averaged updates of the deep layer and of its shallow reference, both
    ``(C_out, C_in, kh, kw)``. For every kernel ``(o, i)`` (norms over its ``kh x kw`` entries)::

        sigma = clamp(|<g0, g>| / (<g0, g0> + eps), 0, clamp_max)
        g'    = (g / (|g| + eps) + sigma * g0 / (|g0| + eps)) * (|g| + |g0|) / 2
        g'    = clamp(g', -clip, clip)                        (element-wise)

    ``sigma`` is the closed-form solution of the paper's convex sub-problem (the least-squares
    projection coefficient of ``g`` on ``g0``, made non-negative so that the shallow direction is
    never subtracted; the closed form the authors' ``aggregate_IN_gradients`` computes);
    the normalised sum keeps the mean of the two magnitudes, and the element-wise clip is the
    authors' guard against unstable training (``clip = 0.1``, ``clamp_max = 5``).

    Raises:
        ValueError: ``g`` and ``g0`` differ in shape or are not 4-D.
    """
    if g.shape != g0.shape or g.dim() != 4:
        raise ValueError(f"cross_layer_update: need two 4-D updates of one shape, got {tuple(g.shape)} and {tuple(g0.shape)}")
    norm = torch.linalg.vector_norm(g, dim=(-2, -1), keepdim=True)
    norm0 = torch.linalg.vector_norm(g0, dim=(-2, -1), keepdim=True)
    alpha = (g0 * g0).sum(dim=(-2, -1), keepdim=True)
    beta = (g0 * g).sum(dim=(-2, -1), keepdim=True).abs()
    sigma = (beta / (alpha + eps)).clamp(0.0, clamp_max)
    mixed = (g / (norm + eps) + sigma * g0 / (norm0 + eps)) * ((norm + norm0) / 2)
    return mixed.clamp(-clip, clip)


class InCo(HeteroFedAvg):
    """InCo Aggregation over a depth-heterogeneous family (ResNet10 ... ResNet26); "InCoAvg" of
    the FedIN paper's Table 1.

    Each round:

    1. Every client uploads its trained model; its update is ``trained - received``.
    2. Layer-wise aggregation of the updates (FedIN Eq. 19; InCo's heterogeneous averaging): each
       entry's update is the unweighted mean over the round's clients whose model has it (the
       authors' code counts clients, it does not weight by samples; ``weighted=True`` weights by
       sample count).
    3. Cross-layer correction: the update of every convolution in a stage's blocks 1, 2, ...
       is replaced by :func:`cross_layer_update` of itself and the stage's block-0 ``conv2``
       update (:func:`inco_reference_key`), so that deep layers that few (large) clients train
       borrow the direction of a shallow layer that every client trains.
    4. The global model (union of all architectures' entries) adds the corrected updates;
       integer buffers (``num_batches_tracked``) take the clients' mean.

    Pair with any plain-averaging objective (``lightning_modules.ClientModule``; Adam as in the
    paper). State: ``{"global": union state_dict, "arch_keys": ...}`` as layer-wise HeteroFedAvg.

    Args:
        clamp_max: upper bound of the mixing coefficient sigma (authors' default 5).
        clip: element-wise bound of a corrected update (authors' 0.1).
        weighted: weight clients by sample count (default ``False``, as the authors' code).

    Raises:
        ValueError: ``clamp_max`` < 0 or ``clip`` <= 0.
    """

    def __init__(self, clamp_max: float = 5.0, clip: float = 0.1, weighted: bool = False):
        super().__init__("layerwise", weighted=weighted)
        if clamp_max < 0:
            raise ValueError(f"strategy.clamp_max: must be >= 0, got {clamp_max}")
        if not clip > 0:
            raise ValueError(f"strategy.clip: must be > 0, got {clip}")
        self.clamp_max, self.clip = float(clamp_max), float(clip)

    def aggregate_fit(self, rnd, results: list[ClientResult], state, rng) -> dict[str, Any]:
        if not results:
            return state
        glob: StateDict = state["global"]
        weights = [r.weight if self.weighted else 1.0 for r in results]
        averaged = layerwise_average([r.state for r in results], weights)  # FedIN Eq. 19
        # every client started from the global model, so the mean update is mean(trained) - global
        updates = {k: v - glob[k] for k, v in averaged.items() if v.is_floating_point()}
        new = dict(glob)
        new.update(averaged)
        for key, g in updates.items():
            ref = inco_reference_key(key, updates)
            if ref is not None and updates[ref].shape == g.shape:
                new[key] = glob[key] + cross_layer_update(g, updates[ref], self.clamp_max, self.clip)
        return {**state, "global": new}
