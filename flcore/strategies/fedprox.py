"""FedProx server (Li et al., MLSys 2020): the server half is FedAvg's; the proximal term lives
in the client objective :class:`lightning_modules.fedprox.FedProxModule`."""

from __future__ import annotations

from flcore.strategies.fedavg import FedAvg

__all__ = ["FedProx"]


class FedProx(FedAvg):
    """FedProx aggregation: sample-weighted averaging of the returned models (FedProx Alg. 2).

    Pair with ``model: lightning_modules.FedProxModule`` (``mu`` is set there; checked before
    training: with the plain ``ClientModule`` this would silently be FedAvg).
    """

    client_objective = "lightning_modules.FedProxModule"
