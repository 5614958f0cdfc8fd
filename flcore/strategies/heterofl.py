"""HeteroFL (Diao et al., ICLR 2021): width-sliced sub-models of one global model."""

from __future__ import annotations

from typing import Any

import numpy as np

from flcore.functional import StateDict, aggregate_slices, extract_submodel
from flcore.strategies.base import ClientResult, ClientTask, HeterogeneousStrategy

__all__ = ["HeteroFL"]


class HeteroFL(HeterogeneousStrategy):
    """HeteroFL: clients train width-sliced sub-models of one global model.

    * The global model is the widest level of the model family (``trainer.architectures`` lists
      the width levels, e.g. ``[w1, w0.5, w0.25, w0.125, w0.0625]`` of
      :class:`lightning_modules.models.WidthScaledResNet`: HeteroFL's "a1-b1-c1-d1-e1").
    * ``dynamic=True`` (HeteroFL's "dynamic" mode, the FedIN paper's setting): every round each
      sampled client draws its level with probabilities ``proportions`` (default equal);
      ``dynamic=False`` ("fix"): the client's level from ``trainer.architectures`` /
      ``client_architectures``.
    * A client receives the leading channels of every hidden layer (:func:`extract_submodel`);
      the server averages each global entry over the clients that trained it
      (:func:`aggregate_slices`), as HeteroFL does (unweighted). Static BatchNorm and the scaler
      live in the model.
    * Evaluation: every level's sub-model of the global model, and their mean.

    State: ``{"global": state_dict, "shapes": {level: {key: shape}}}``.

    Args:
        dynamic: re-draw every client's level each round.
        proportions: one non-negative number per level (in ``trainer.architectures`` order).

    Raises:
        ValueError: negative or all-zero proportions; their count differs from the levels'.
    """

    def __init__(self, dynamic: bool = True, proportions: list[float] | None = None):
        if proportions is not None and (any(p < 0 for p in proportions) or sum(proportions) <= 0):
            raise ValueError(f"strategy.proportions: must be non-negative with a positive sum, got {proportions}")
        self.dynamic = bool(dynamic)
        self.proportions = None if proportions is None else [float(p) for p in proportions]
        self.client_arch: list[str] = []

    def offset(self, rnd: int) -> int | None:
        """Slice offset of round ``rnd``: ``None`` (leading channels) for HeteroFL."""
        return None

    def initialize(self, model_state: dict[str, StateDict], clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        levels = list(model_state)
        if self.proportions is not None and len(self.proportions) != len(levels):
            raise ValueError(f"strategy.proportions: need one per level {levels}, got {self.proportions}")
        widest = max(levels, key=lambda a: sum(v.numel() for v in model_state[a].values()))
        return {"global": {k: v.clone() for k, v in model_state[widest].items()},
                "shapes": {a: {k: tuple(v.shape) for k, v in s.items()} for a, s in model_state.items()}}

    def configure_fit(self, rnd, clients, state, rng: np.random.Generator) -> list[ClientTask]:
        levels = list(state["shapes"])
        if self.dynamic:
            p = np.asarray(self.proportions or [1.0] * len(levels), dtype=float)
            chosen = [levels[i] for i in rng.choice(len(levels), size=len(clients), p=p / p.sum())]
        else:
            chosen = [self.client_arch[c] for c in clients]
        subs = {a: extract_submodel(state["global"], state["shapes"][a], self.offset(rnd)) for a in dict.fromkeys(chosen)}
        return [ClientTask(cid=c, state=subs[a], slot=i, arch=a) for i, (c, a) in enumerate(zip(clients, chosen))]

    def aggregate_fit(self, rnd, results: list[ClientResult], state, rng) -> dict[str, Any]:
        if not results:
            return state
        offset = self.offset(rnd)
        new = aggregate_slices(state["global"], [r.state for r in results], [offset] * len(results))
        return {**state, "global": new}

    def global_models(self, state) -> dict[str, StateDict]:
        return {a: extract_submodel(state["global"], shapes) for a, shapes in state["shapes"].items()}

    def global_model(self, state) -> StateDict:
        """The full-width global model."""
        return state["global"]
