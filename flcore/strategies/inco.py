"""InCo Aggregation (Chan et al., ICLR 2024, "Internal Cross-layer Gradients for Extending
Homogeneity to Heterogeneity in Federated Learning"): layer-wise heterogeneous aggregation of the
clients' updates, with each deep layer's update mixed with the update of a shallow layer of the
same stage."""

from __future__ import annotations

from typing import Any

from flcore.functional import StateDict, cross_layer_update, inco_reference_key, layerwise_average
from flcore.strategies.base import ClientResult
from flcore.strategies.hetero_fedavg import HeteroFedAvg

__all__ = ["InCo"]


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
