"""Server strategies, one file each."""

from flcore.strategies.base import ClientFailure, ClientResult, ClientTask, HeterogeneousStrategy, Strategy
from flcore.strategies.dpfedavg import DPFedAvg
from flcore.strategies.fedavg import FedAvg
from flcore.strategies.fedcross import FedCross
from flcore.strategies.fedet import FedET
from flcore.strategies.fedgen import FedGen
from flcore.strategies.fedin import FedIN
from flcore.strategies.fedmedian import FedMedian
from flcore.strategies.fedmr import FedMR
from flcore.strategies.fednova import FedNova, HeteroFedNova
from flcore.strategies.fedrolex import FedRolex
from flcore.strategies.fedtrimmedavg import FedTrimmedAvg
from flcore.strategies.hetero_fedavg import HeteroFedAvg
from flcore.strategies.hetero_fedgen import HeteroFedGen
from flcore.strategies.heterofl import HeteroFL
from flcore.strategies.inclusivefl import InclusiveFL
from flcore.strategies.inco import InCo
from flcore.strategies.krum import Krum
from flcore.strategies.fedprox import FedProx
from flcore.strategies.moon import Moon
from flcore.strategies.scaffold import HeteroScaffold, Scaffold
from flcore.strategies.scalefl import ScaleFL
from flcore.strategies.multimodel import MultiModelStrategy

__all__ = ["DPFedAvg", "FedMedian", "FedTrimmedAvg", "Krum", "FedET", "ScaleFL", "HeteroFedGen", "InCo", "HeteroFedNova", "HeteroScaffold", "HeteroFL", "FedRolex", "HeteroFedAvg", "InclusiveFL", "FedIN", "Strategy", "HeterogeneousStrategy", "ClientTask", "ClientResult", "ClientFailure", "FedAvg", "FedMR", "FedCross", "MultiModelStrategy",
           "FedProx", "Scaffold", "FedNova", "Moon", "FedGen"]
