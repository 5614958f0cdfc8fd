"""InclusiveFL (Liu et al., KDD 2022, "No One Left Behind: Inclusive Federated Learning over
Heterogeneous Devices"): layer-wise aggregation across model depths with momentum distillation
of the deeper models' updates into the top layers of the shallower ones."""

from __future__ import annotations

from typing import Any

from flcore.functional import StateDict, layerwise_average, local_top_keys, momentum_distill, union_state, weighted_average
from flcore.strategies.base import ClientResult
from flcore.strategies.hetero_fedavg import HeteroFedAvg

__all__ = ["InclusiveFL"]


class InclusiveFL(HeteroFedAvg):
    """InclusiveFL over a depth-heterogeneous model family (ResNet10 ... ResNet26).

    Each round, for every architecture ``a`` that had clients:

    1. Its update ``D_a`` = sample-weighted mean over its clients of (trained - received).
    2. Momentum distillation (InclusiveFL Sec. 4.3): architectures are ordered by depth; for a
       shallower ``a`` and the next deeper ``b``, in every stage the top block ``t`` of ``a``
       takes ``D_a[t] <- (1 - beta) D_a[t] + beta * mean_{j = t .. n_b - 1} D_b[j]``: the mean
       update of the deeper model's blocks from the same position to its own top (the blocks
       ``a`` lacks), entry by entry where the shapes agree (a stage's first block has a
       different input width and a projection shortcut). ``beta = 0.2`` as in the authors' run
       script. Architectures without clients in the round neither give nor take.
    3. ``w_a <- w_a + D_a``, then layer-wise aggregation across architectures: every entry is
       averaged over the round's architectures that have it, weighted by their clients' sample
       counts, and written into every architecture that has it. With ``local_top`` (the
       authors' ``--local_one``), the top blocks of the shallower architectures (the blocks
       that distillation writes into) stay local to each architecture and are not shared.

    Integer buffers (``num_batches_tracked``) are averaged over the clients, not distilled.
    State: ``{"models": {arch: state_dict}}`` (one model per architecture).

    Args:
        beta: distillation weight in ``[0, 1]``.
        local_top: keep each shallower architecture's top blocks local.

    Raises:
        ValueError: ``beta`` outside ``[0, 1]``.
    """

    def __init__(self, beta: float = 0.2, local_top: bool = True):
        super().__init__("same_shape", weighted=True)  # per-architecture models; aggregation below
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"strategy.beta: must be in [0, 1], got {beta}")
        self.beta, self.local_top = float(beta), bool(local_top)

    def initialize(self, model_state: dict[str, StateDict], clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        """One model per architecture; an entry shared by several starts from one value (the
        first architecture's, in config order), as one global model would."""
        union = union_state(model_state)
        return {"models": {a: {k: union[k].clone() for k in s} for a, s in model_state.items()}}

    def aggregate_fit(self, rnd, results: list[ClientResult], state, rng) -> dict[str, Any]:
        if not results:
            return state
        models: dict[str, StateDict] = state["models"]
        by_arch: dict[str, list[ClientResult]] = {}
        for r in results:
            by_arch.setdefault(self.client_arch[r.cid], []).append(r)
        updates: dict[str, StateDict] = {}
        trained: dict[str, StateDict] = {}
        for arch, rs in by_arch.items():
            avg = weighted_average([r.state for r in rs], [r.weight for r in rs])
            trained[arch] = avg
            updates[arch] = {k: avg[k] - models[arch][k] for k in avg if avg[k].is_floating_point()}
        order = sorted(models, key=lambda a: (len(models[a]), list(models).index(a)))
        for shallow, deep in zip(order, order[1:]):
            if shallow in updates and deep in updates:
                updates[shallow] = momentum_distill(updates[shallow], updates[deep], self.beta)
        for arch in updates:  # w_a + D_a (floating entries); integer buffers: the clients' mean
            trained[arch] = {k: (models[arch][k] + updates[arch][k]) if k in updates[arch] else v
                             for k, v in trained[arch].items()}
        local = local_top_keys(models) if self.local_top else {a: set() for a in models}
        sizes = {a: float(sum(r.weight for r in rs)) for a, rs in by_arch.items()}
        shared = layerwise_average([{k: v for k, v in trained[a].items() if k not in local[a]} for a in trained],
                                   [sizes[a] for a in trained])
        new_models = {}
        for arch, m in models.items():
            own = trained.get(arch, m)
            new_models[arch] = {k: shared[k] if (k in shared and k not in local[arch]) else own[k] for k in m}
        return {**state, "models": new_models}
