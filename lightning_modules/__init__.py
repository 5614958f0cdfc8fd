"""Client side: one LightningModule per local objective, and the networks (``models``)."""

from lightning_modules.client import ClientModule, default_optimizer
from lightning_modules.fedgen import FedGenModule
from lightning_modules.fedin import FedINModule
from lightning_modules.fednova import FedNovaModule
from lightning_modules.fedprox import FedProxModule
from lightning_modules.moon import MoonModule
from lightning_modules.plain import PlainClient
from lightning_modules.scaffold import ScaffoldModule
from lightning_modules.scalefl import ScaleFLModule
from lightning_modules.terms import ProximalTerm

__all__ = ["FedINModule", "ClientModule", "default_optimizer", "FedProxModule", "ScaffoldModule", "FedNovaModule", "MoonModule", "FedGenModule", "ScaleFLModule", "PlainClient", "ProximalTerm"]
