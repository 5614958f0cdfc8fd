"""FedCross: multi-model cross-aggregation (Hu et al., ICDE 2024; FedCross paper)."""

from __future__ import annotations

from flcore.functional import (
    SIMILARITY_MODES,
    cross_aggregate,
    dynamic_alpha,
    in_order_partners,
    select_collaborators,
    similarity_matrix,
)
from flcore.strategies.multimodel import MultiModelStrategy

__all__ = ["FedCross"]

SELECTIONS = ("in_order", "highest_similarity", "lowest_similarity")
SIMILARITIES = SIMILARITY_MODES


class FedCross(MultiModelStrategy):
    """FedCross (FedCross paper, Algorithm 1).

    K = clients_per_round middleware models, all initialised from one model. Each round the
    sampled clients are shuffled and middleware model ``i`` trains on client ``i``; then every
    uploaded model ``v_i`` is cross-aggregated with its collaborative model:
    ``w_i = alpha v_i + (1 - alpha) v_co(i)`` (Sec. III-B.2), over the whole state_dict.

    Collaborative-model selection (Sec. III-B.1): ``in_order`` (partner
    ``(i + r % (K-1) + 1) % K``), ``highest_similarity`` or ``lowest_similarity`` (default) of the
    cosine similarity between the uploaded models, computed once per round as a K x K matrix:
    ``similarity: model`` (one cosine over all trained weights; default), ``layerwise`` (sum of
    per-key cosines) or ``authors`` (the FedCross authors' code: cosines of consecutive key pairs,
    buffers included, summed; see :func:`flcore.functional.similarity_matrix`).

    Acceleration (Sec. III-D), counted from the end of the first stage:

    * propeller models: for ``propeller_rounds`` rounds each middleware model aggregates with its
      next ``num_propellers`` in-order models instead of one collaborator (see
      :func:`flcore.functional.cross_aggregate` for the weights);
    * dynamic alpha: for the following ``dynamic_alpha_rounds`` rounds alpha grows linearly from
      0.5 to ``alpha`` (:func:`flcore.functional.dynamic_alpha`).

    "FedCross w/ PM-DA" of the paper is ``propeller_rounds: 50, dynamic_alpha_rounds: 50``.

    Args:
        alpha: weight of the model itself, in [0.5, 1) (paper default 0.99).
        selection: one of ``in_order``, ``highest_similarity``, ``lowest_similarity``.
        similarity: ``model``, ``layerwise`` or ``authors``.
        first_stage_rounds: FedAvg rounds before cross-aggregation (default 0).
        propeller_rounds: rounds with propeller models (default 0).
        num_propellers: propeller models per middleware model, in [1, K-1] (default 2).
        dynamic_alpha_rounds: rounds of the dynamic-alpha schedule (default 0).
        first_stage_weighting: ``samples`` (default) or ``uniform`` first-stage averaging
            (:class:`MultiModelStrategy`).
        propeller_weighting: during the propeller rounds, ``alpha`` (default: each propeller gets
            the collaborative model's relative weight ``1 - alpha``, about 0.009 each for
            alpha 0.99 and m = 9) or ``equal`` (the model and its m propellers averaged with
            weight ``1 / (m + 1)`` each: a stronger, coarse-grained reading of Sec. III-D).

    Raises:
        ValueError: alpha outside [0.5, 1); unknown selection or similarity; negative round
            counts; ``num_propellers`` not in [1, K-1] (in :meth:`validate`).
    """

    def __init__(
        self,
        alpha: float = 0.99,
        selection: str = "lowest_similarity",
        similarity: str = "model",
        first_stage_rounds: int = 0,
        propeller_rounds: int = 0,
        num_propellers: int = 2,
        dynamic_alpha_rounds: int = 0,
        first_stage_weighting: str = "samples",
        propeller_weighting: str = "alpha",
    ):
        super().__init__(first_stage_rounds, first_stage_weighting)
        if propeller_weighting not in ("alpha", "equal"):
            raise ValueError(f"strategy.propeller_weighting: must be one of ['alpha', 'equal'], got {propeller_weighting!r}")
        self.propeller_weighting = propeller_weighting
        if not 0.5 <= alpha < 1.0:
            raise ValueError(f"strategy.alpha: must be in [0.5, 1), got {alpha}")
        if selection not in SELECTIONS:
            raise ValueError(f"strategy.selection: must be one of {list(SELECTIONS)}, got {selection!r}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"strategy.similarity: must be one of {list(SIMILARITIES)}, got {similarity!r}")
        for name, value in (("propeller_rounds", propeller_rounds), ("dynamic_alpha_rounds", dynamic_alpha_rounds)):
            if value < 0:
                raise ValueError(f"strategy.{name}: must be >= 0, got {value}")
        if num_propellers < 1:
            raise ValueError(f"strategy.num_propellers: must be >= 1, got {num_propellers}")
        self.alpha = float(alpha)
        self.selection = selection
        self.similarity = similarity
        self.propeller_rounds = int(propeller_rounds)
        self.num_propellers = int(num_propellers)
        self.dynamic_alpha_rounds = int(dynamic_alpha_rounds)

    def validate(self, num_clients: int, clients_per_round: int) -> None:
        super().validate(num_clients, clients_per_round)
        if self.propeller_rounds and self.num_propellers > clients_per_round - 1:
            raise ValueError(
                f"strategy.num_propellers: must be in [1, K-1={clients_per_round - 1}] for K = clients_per_round, "
                f"got {self.num_propellers}"
            )

    def alpha_at(self, rnd: int) -> float:
        """Alpha used in round ``rnd`` (0-based): dynamic schedule or the target."""
        if self.propeller_weighting == "equal" and 0 <= rnd - self.first_stage_rounds < self.propeller_rounds:
            return 0.5  # equal weights for the model and each propeller (cross_aggregate's normalisation)
        t = rnd - self.first_stage_rounds - self.propeller_rounds
        if 0 <= t < self.dynamic_alpha_rounds:
            return dynamic_alpha(self.alpha, t, self.dynamic_alpha_rounds)
        return self.alpha

    def partners_at(self, rnd: int, uploaded) -> list[list[int]]:
        """Collaborative (or propeller) model indices of each middleware model in round ``rnd``."""
        k = len(uploaded)
        if 0 <= rnd - self.first_stage_rounds < self.propeller_rounds:
            return in_order_partners(k, rnd, self.num_propellers)
        if self.selection == "in_order":
            return in_order_partners(k, rnd)
        sim = similarity_matrix(uploaded, self.similarity)
        return [[j] for j in select_collaborators(sim, self.selection)]

    def combine(self, rnd, uploaded, rng):
        return cross_aggregate(uploaded, self.partners_at(rnd, uploaded), self.alpha_at(rnd), inplace=True)
