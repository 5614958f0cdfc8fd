"""Pure functions of federated aggregation, one module per method, mirroring
:mod:`flcore.strategies`.

Every function here takes model states (``dict[str, Tensor]``, all with the same keys and
shapes unless stated) or tensors and returns new ones, and touches no data, optimizers or
trainers. Inputs are never mutated, except where a function says so by an explicit argument:
``mix(..., out=t)`` writes its result into ``t``, and ``cross_aggregate(..., inplace=True)``
writes the K new models into the K input tensors (FedCross does this with the uploads it is
handed, to need no extra model copies). Strategies hold state and call these. Every public
function has an example that the test suite runs (``pytest --doctest-modules``).

=========================== ==========================================================
module                      math of
=========================== ==========================================================
:mod:`.averaging`           FedAvg's weighted mean, streaming mean, FedIN's layer-wise mean (Eq. 19); buffer policy
:mod:`.fedcross`            FedCross: partner selection, cross-aggregation, dynamic alpha
:mod:`.fedmr`               FedMR: layer-wise recombination
:mod:`.fednova`             FedNova: normalized averaging
:mod:`.heterofl`            HeteroFL / FedRolex: width-sliced sub-models
:mod:`.inclusivefl`         InclusiveFL: block structure, momentum distillation
:mod:`.inco`                InCo: cross-layer update correction
:mod:`.fedgen`              FedGen: classifier head, teacher weights, ensemble loss
:mod:`.fedet`               FedET: consensus and diversity targets
:mod:`.robust`              FedMedian, FedTrimmedAvg, Krum / Multi-Krum
:mod:`.dp`                  DP-FedAvg: clipping, adaptive-clipping noise, epsilon
:mod:`.geometry`            diagnostics: Gram matrices, cosine similarity, distances
=========================== ==========================================================

The client halves' math (FedProx's proximal term, SCAFFOLD's control-variate update, MOON's
contrastive loss, FedIN's corrected gradient) lives with the client modules in
:mod:`lightning_modules`, which flcore imports and never the other way round.
"""

from __future__ import annotations

from flcore.functional.averaging import (
    RunningMix,
    StateDict,
    layerwise_average,
    mix,
    state_bytes,
    union_state,
    weighted_average,
)
from flcore.functional.dp import clip_update, epsilon_spent, noise_multiplier_for_updates
from flcore.functional.fedcross import (SIMILARITY_MODES, cross_aggregate, dynamic_alpha, in_order_partners,
                                      select_collaborators, similarity_matrix)
from flcore.functional.fedet import ensemble_targets
from flcore.functional.fedgen import classifier_keys, ensemble_teacher_loss, teacher_weights
from flcore.functional.fedmr import module_groups, recombine
from flcore.functional.fednova import nova_mix
from flcore.functional.geometry import gram_matrices, model_geometry, trained_keys
from flcore.functional.heterofl import aggregate_slices, extract_submodel, slice_indices
from flcore.functional.inclusivefl import block_of, local_top_keys, momentum_distill, stage_depths
from flcore.functional.inco import cross_layer_update, inco_reference_key
from flcore.functional.robust import coordinate_median, krum_scores, krum_select, multi_krum, trimmed_mean

__all__ = [
    "StateDict",
    "weighted_average",
    "mix",
    "RunningMix",
    "layerwise_average",
    "state_bytes",
    "union_state",
    "cross_aggregate",
    "in_order_partners",
    "dynamic_alpha",
    "SIMILARITY_MODES",
    "similarity_matrix",
    "select_collaborators",
    "recombine",
    "module_groups",
    "nova_mix",
    "slice_indices",
    "extract_submodel",
    "aggregate_slices",
    "gram_matrices",
    "model_geometry",
    "trained_keys",
    "block_of",
    "stage_depths",
    "momentum_distill",
    "local_top_keys",
    "inco_reference_key",
    "cross_layer_update",
    "classifier_keys",
    "teacher_weights",
    "ensemble_teacher_loss",
    "ensemble_targets",
    "coordinate_median",
    "trimmed_mean",
    "krum_scores",
    "krum_select",
    "multi_krum",
    "clip_update",
    "noise_multiplier_for_updates",
    "epsilon_spent",
]
