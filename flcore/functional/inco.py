"""InCo Aggregation's server math (Chan et al., ICLR 2024, "Internal Cross-layer Gradients for
Extending Homogeneity to Heterogeneity in Federated Learning"): which shallow layer a deep layer's
update borrows from, and the corrected update; the strategy is :class:`flcore.strategies.InCo`."""

from __future__ import annotations

import torch
from torch import Tensor

from flcore.functional.inclusivefl import block_of

__all__ = ["inco_reference_key", "cross_layer_update"]


def inco_reference_key(key: str, keys: set[str] | dict) -> str | None:
    """The shallow layer whose update InCo mixes into ``key``'s, or ``None``.

    As in the authors' code (``aggregate_IN_gradients``): the convolutions (``conv1``/``conv2``
    weights) of a stage's blocks 1, 2, ... take the second convolution of the stage's first block
    (``...layer3.0.conv2.weight``), the shallowest layer of that stage with the blocks' shape.
    BatchNorm, shortcut, stem and classifier entries, and block 0 itself, are not mixed.

    >>> keys = {"layer3.0.conv2.weight", "layer3.1.conv1.weight", "layer3.1.bn1.weight"}
    >>> inco_reference_key("layer3.1.conv1.weight", keys)
    'layer3.0.conv2.weight'
    >>> inco_reference_key("layer3.1.bn1.weight", keys) is None, inco_reference_key("layer3.0.conv2.weight", keys) is None
    (True, True)
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

    Returns:
        ``(C_out, C_in, kh, kw)``, entries in ``[-clip, clip]``.

    Raises:
        ValueError: ``g`` and ``g0`` differ in shape or are not 4-D.

    >>> g0 = torch.full((1, 1, 1, 2), 0.04)             # shallow update; |g0| = 0.0566
    >>> cross_layer_update(torch.zeros(1, 1, 1, 2), g0)  # sigma = 0: a zero deep update stays zero
    tensor([[[[0., 0.]]]])
    >>> cross_layer_update(g0.clone(), g0)               # same direction: sigma = 1, (u + u) * |g| = 2 g
    tensor([[[[0.0800, 0.0800]]]])
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
