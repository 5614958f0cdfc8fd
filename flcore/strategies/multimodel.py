"""Shared machinery of the multi-model strategies (FedMR, FedCross): K server-side models."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from flcore.diagnostics import middleware_stats
from flcore.functional import StateDict, weighted_average
from flcore.strategies.base import ClientResult, ClientTask, Strategy

__all__ = ["MultiModelStrategy"]


class MultiModelStrategy(Strategy):
    """K = clients_per_round models; model ``i`` trains on the ``i``-th of the shuffled clients.

    * Round ``r < first_stage_rounds``: FedAvg stage (FedMR Sec. III-C): the uploaded models are
      averaged and all K models are reset to that average; weighted by sample count
      (``first_stage_weighting: samples``, flcore's default, as FedAvg) or unweighted
      (``uniform``, as the authors' code averages the K models).
    * Later rounds: :meth:`combine` (recombination, cross-aggregation) makes the next K models.
    * A slot whose client failed (no result) keeps its previous model.
    * Global model (FedMR Eq. 5, FedCross Sec. III-B.3): the unweighted mean of the K models; it
      is produced for evaluation and checkpoints only and never trains.

    State: ``{"models": [K state_dicts]}``.

    Args:
        first_stage_rounds: rounds of FedAvg aggregation before the multi-model stage (>= 0).
        first_stage_weighting: ``samples`` or ``uniform`` (see above).

    Raises:
        ValueError: ``first_stage_rounds < 0``; an unknown weighting; K < 2 (in :meth:`validate`).
    """

    reads_dispatched_state = False  # a slot's previous model is read only when its client failed

    def __init__(self, first_stage_rounds: int = 0, first_stage_weighting: str = "samples"):
        if first_stage_rounds < 0:
            raise ValueError(f"strategy.first_stage_rounds: must be >= 0, got {first_stage_rounds}")
        if first_stage_weighting not in ("samples", "uniform"):
            raise ValueError(f"strategy.first_stage_weighting: must be one of ['samples', 'uniform'], "
                             f"got {first_stage_weighting!r}")
        self.first_stage_rounds = int(first_stage_rounds)
        self.first_stage_weighting = first_stage_weighting

    def validate(self, num_clients: int, clients_per_round: int) -> None:
        if clients_per_round < 2:
            raise ValueError(
                f"trainer.clients_per_round: {type(self).__name__} keeps K = clients_per_round models "
                f"and needs K >= 2, got {clients_per_round}"
            )

    def initialize(self, model_state: StateDict, clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        init = {k: v.clone() for k, v in model_state.items()}
        # shared: only the round's last result may take its memory, once no client needs it (ParkedModels)
        return {"models": [init] * clients_per_round}

    def configure_fit(self, rnd, clients, state, rng: np.random.Generator) -> list[ClientTask]:
        order = rng.permutation(np.asarray(clients))  # FedCross Alg. 1 line 5: Shuffle(L_c)
        return [ClientTask(cid=int(c), state=state["models"][i], slot=i) for i, c in enumerate(order)]

    def aggregate_fit(self, rnd, results: list[ClientResult], state, rng) -> dict[str, Any]:
        if not results:
            return state
        # combine() owns what it gets and may overwrite it: a failed slot's previous model (still
        # part of the last good state, e.g. for an interrupt checkpoint) is copied first
        owned = {r.slot: r.state for r in results}
        uploaded = [owned.get(i) or {k: v.clone() for k, v in m.items()} for i, m in enumerate(state["models"])]
        if rnd < self.first_stage_rounds:
            weights = [r.weight if self.first_stage_weighting == "samples" else 1.0 for r in results]
            avg = weighted_average([r.state for r in results], weights)
            return {**state, "models": [avg] * len(uploaded)}
        return {**state, "models": self.combine(rnd, uploaded, rng)}

    @abstractmethod
    def combine(self, rnd: int, uploaded: list[StateDict], rng: np.random.Generator) -> list[StateDict]:
        """The next round's K models from the K uploaded (trained) models, which this call owns:
        it may overwrite their tensors in place (no other reference to them is used again)."""

    def global_model(self, state) -> StateDict:
        models = state["models"]
        return weighted_average(models, [1.0] * len(models))

    def model_stats(self, state) -> dict[str, float]:
        """The K middleware models' pairwise cosine similarity and distance and their distances
        to their mean (:func:`flcore.diagnostics.middleware_stats`)."""
        return middleware_stats(state["models"])
