"""Server strategies, one file each."""

from flcore.strategies.base import ClientResult, ClientTask, Strategy
from flcore.strategies.fedavg import FedAvg

__all__ = ["Strategy", "ClientTask", "ClientResult", "FedAvg"]
