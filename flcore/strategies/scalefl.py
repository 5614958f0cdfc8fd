"""ScaleFL server (Ilhan, Su & Liu, CVPR 2023): sub-models split along width and depth of one
global model with early exits, aggregated entry by entry over the clients that hold them."""

from __future__ import annotations

from flcore.strategies.heterofl import HeteroFL
from lightning_modules.models.scalefl_resnet import scalefl_level_name

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
    * The clients read the round (``ClientTask.rnd``, ``ScaleFLModule.current_round``), which
      gates their self-distillation.
    * Evaluation: every level's sub-model (its deepest exit); the global model is the full one.

    Args and errors: as :class:`HeteroFL`; :meth:`validate_architectures` refuses a level list
    without the full model (``e4w1``), which holds every other level's entries.
    """

    client_objective = "lightning_modules.ScaleFLModule"

    def validate_architectures(self, names: list[str]) -> None:
        full = scalefl_level_name(4, 1.0)
        if full not in names:
            raise ValueError(f"trainer.architectures: ScaleFL's global model is the full level {full!r} "
                             f"(4 exits, rate 1); list it, got {names}")
