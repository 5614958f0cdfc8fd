"""MOON server (Li, He & Song, CVPR 2021): FedAvg's aggregation for the model-contrastive objective."""

from __future__ import annotations

from flcore.server_opt import ServerOptimizer
from flcore.strategies.fedavg import FedAvg
from lightning_modules.terms import ContrastiveTerm

__all__ = ["Moon"]


class Moon(FedAvg):
    """Server half of MOON; pair with ``model: lightning_modules.MoonModule`` (checked before
    training), or with a user's own LightningModule that has a ``features(x)`` representation,
    which then gets the model-contrastive term as a gradient correction
    (:class:`lightning_modules.terms.ContrastiveTerm`) with ``mu`` and ``temperature`` set here.

    Aggregation is FedAvg's (MOON paper, Algorithm 1, server side). Each client's model after its
    local update is client state (``MoonModule.client_state``): the trainer keeps it and hands it
    back at the client's next participation as ``z_prev``'s model; it lives on the client in a
    real deployment, so it is not counted as communication.

    State: ``{"global": state_dict}``.

    Args:
        server_optimizer: as :class:`FedAvg`.
        mu: the contrastive weight mu >= 0 for a user's own module (MOON paper: 5 for CIFAR-10, 1
            for CIFAR-100); leave unset with ``MoonModule``, which holds its own.
        temperature: tau > 0 for a user's own module (paper: 0.5).

    Raises:
        ValueError: ``mu < 0`` or ``temperature <= 0``.
    """

    client_objective = "lightning_modules.MoonModule"

    def __init__(self, server_optimizer: ServerOptimizer | None = None, mu: float | None = None,
                 temperature: float = 0.5):
        super().__init__(server_optimizer=server_optimizer)
        if mu is not None:
            ContrastiveTerm(mu, temperature)  # the range checks, before any training
        elif not temperature > 0:
            raise ValueError(f"trainer.strategy.init_args.temperature: tau must be > 0, got {temperature}")
        self.mu = None if mu is None else float(mu)
        self.temperature = float(temperature)

    def client_terms(self) -> list:
        """``[ContrastiveTerm(mu, temperature)]`` for a user's own module.

        Raises:
            ValueError: ``mu`` is unset.
        """
        if self.mu is None:
            raise ValueError("trainer.strategy.init_args.mu: MOON with a user's own LightningModule needs the "
                             "contrastive weight here, e.g. 1.0")
        return [ContrastiveTerm(self.mu, self.temperature)]
