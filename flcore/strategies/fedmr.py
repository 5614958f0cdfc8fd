"""FedMR: federated learning via layer-wise model recombination (Hu et al.; FedMR paper)."""

from __future__ import annotations

import torch

from flcore.functional import recombine as recombine_layers
from flcore.strategies.multimodel import MultiModelStrategy

__all__ = ["FedMR"]


class FedMR(MultiModelStrategy):
    """FedMR (FedMR paper, Algorithm 1).

    K local models; each round they are trained on K random clients, then recombined layer by
    layer (Sec. III-B.2): for every layer, a random permutation of the K trained copies, so every
    uploaded layer is used by exactly one recombined model. Two-stage training (Sec. III-C):
    ``first_stage_rounds`` of FedAvg first (the paper uses 100 for ResNet-20 and VGG-16, 0 for
    the CNN). Global model: unweighted mean of the K models (Eq. 5).

    Args:
        first_stage_rounds: FedAvg rounds before recombination starts.
        unit: ``"key"`` (default, as the authors' code: an independent permutation per
            state_dict entry) or ``"module"`` (weight, bias and BatchNorm buffers of a module move
            together).
        recombine: ``False`` gives the ablation "FedMR w/o MR" (Fig. 4): trained models go to
            random clients with neither aggregation nor recombination.
        first_stage_weighting: ``samples`` (default: sample-weighted, as FedAvg) or ``uniform``
            (the authors' code: the unweighted mean of the K models) first-stage averaging.

    Raises:
        ValueError: unknown ``unit`` or ``first_stage_weighting``; negative ``first_stage_rounds``.
    """

    def __init__(self, first_stage_rounds: int = 0, unit: str = "key", recombine: bool = True,
                 first_stage_weighting: str = "samples"):
        super().__init__(first_stage_rounds, first_stage_weighting)
        if unit not in ("key", "module"):
            raise ValueError(f"strategy.unit: must be one of ['key', 'module'], got {unit!r}")
        self.unit = unit
        self.recombine = bool(recombine)

    def combine(self, rnd, uploaded, rng):
        if not self.recombine:
            return uploaded
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return recombine_layers(uploaded, generator, self.unit)[0]
