"""FedProx server (Li et al., MLSys 2020): the server half is FedAvg's; the proximal term lives
in the client objective :class:`lightning_modules.fedprox.FedProxModule`."""

from __future__ import annotations

from flcore.server_opt import ServerOptimizer
from flcore.strategies.fedavg import FedAvg
from lightning_modules.terms import ProximalTerm

__all__ = ["FedProx"]


class FedProx(FedAvg):
    """FedProx aggregation: sample-weighted averaging of the returned models (FedProx Alg. 2).

    Pair with ``model: lightning_modules.FedProxModule`` (``mu`` is set there; checked before
    training: with the plain ``ClientModule`` this would silently be FedAvg), or with a user's
    own LightningModule, whose loss then gets the proximal term as a gradient correction
    (:class:`lightning_modules.terms.ProximalTerm`) with ``mu`` set here.

    Args:
        server_optimizer: as :class:`FedAvg`.
        mu: the proximal weight mu >= 0 for a user's own module (as Flower's ``proximal_mu``);
            leave unset with ``FedProxModule``, which holds its own.

    Raises:
        ValueError: ``mu < 0``.
    """

    client_objective = "lightning_modules.FedProxModule"

    def __init__(self, server_optimizer: ServerOptimizer | None = None, mu: float | None = None):
        super().__init__(server_optimizer=server_optimizer)
        if mu is not None and mu < 0:
            raise ValueError(f"trainer.strategy.init_args.mu: the proximal weight must be >= 0, got {mu}")
        self.mu = None if mu is None else float(mu)

    def client_terms(self) -> list:
        """``[ProximalTerm(mu)]`` for a user's own module.

        Raises:
            ValueError: ``mu`` is unset.
        """
        if self.mu is None:
            raise ValueError("trainer.strategy.init_args.mu: FedProx with a user's own LightningModule needs the "
                             "proximal weight here, e.g. 0.01")
        return [ProximalTerm(self.mu)]
