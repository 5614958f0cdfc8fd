"""flcore: federated learning on PyTorch Lightning (server side: rounds, strategies, CLI)."""

from flcore.errors import ConfigError
from flcore.trainer import FederatedTrainer

__version__ = "0.1.0"
__all__ = ["FederatedTrainer", "ConfigError", "__version__"]
