"""ScaleFL server (Ilhan, Su & Liu, CVPR 2023): sub-models split along width and depth of one
global model with early exits, aggregated entry by entry over the clients that hold them."""

from __future__ import annotations

from typing import Any

from flcore.functional import StateDict
from flcore.strategies.base import ClientTask
from flcore.strategies.heterofl import HeteroFL

__all__ = ["ScaleFL"]


class ScaleFL(HeteroFL):
    """ScaleFL over the levels of :class:`lightning_modules.models.ScaleFLResNet`; pair with
    ``lightning_modules.ScaleFLModule``.

    * The global model is the full level (all stages and exits, full width). A client of level
      ``e<k>w<r>`` receives the stem, stages ``1..k`` and their exits, each tensor cut to its
      leading ``r`` fraction of channels (ScaleFL's vertical and horizontal split).
    * Aggregation (the authors' ``average_weights``): every global entry is the unweighted mean
      of the clients' values for it, over the clients whose sub-model holds it; entries (or
      channels) no client trained keep their value: :func:`flcore.functional.aggregate_slices`.
      There are no BatchNorm running statistics to average (static BN).
    * Levels: ``dynamic=True`` (default, the "dynamic" five-level split the FedIN paper ran)
      draws each sampled client's level every round with probabilities ``proportions`` (equal
      by default: "a1-b1-c1-d1-e1"); ``dynamic=False`` keeps each client's level from
      ``trainer.architectures`` / ``client_architectures``, as the authors' pre-assigned client
      groups.
    * Every task carries the round, which gates the clients' self-distillation.
    * Evaluation: every level's sub-model (its deepest exit); the global model is the full one.

    Args and errors: as :class:`HeteroFL`; :meth:`initialize` raises ``ValueError`` when the
    widest level does not contain every level's entries.
    """

    client_objective = "lightning_modules.ScaleFLModule"

    def initialize(self, model_state: dict[str, StateDict], clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        state = super().initialize(model_state, clients_per_round, num_clients)
        full = state["global"]
        for level, shapes in state["shapes"].items():
            missing = [k for k in shapes if k not in full]
            if missing:
                raise ValueError(f"trainer.architectures: level {level!r} has entries the full model lacks "
                                 f"({missing[0]}); list the full level (4 exits, rate 1)")
        return state

    def configure_fit(self, rnd, clients, state, rng) -> list[ClientTask]:
        tasks = super().configure_fit(rnd, clients, state, rng)
        for t in tasks:
            t.payload = {"round": rnd}
        return tasks
