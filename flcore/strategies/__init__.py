"""Server strategies, one file each."""

from flcore.strategies.base import ClientFailure, ClientResult, ClientTask, Strategy
from flcore.strategies.fedavg import FedAvg
from flcore.strategies.fedcross import FedCross
from flcore.strategies.fedmr import FedMR
from flcore.strategies.multimodel import MultiModelStrategy

__all__ = ["Strategy", "ClientTask", "ClientResult", "ClientFailure", "FedAvg", "FedMR", "FedCross", "MultiModelStrategy"]
