"""Client side: one LightningModule per local objective, and the networks (``models``)."""

from lightning_modules.client import ClientModule, default_optimizer

__all__ = ["ClientModule", "default_optimizer"]
