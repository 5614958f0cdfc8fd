"""Federated datamodules: datasets with a partition into clients (shipped ones in memory, or a
user's own Dataset / LightningDataModule through :mod:`datamodules.wrap`, a Hugging Face dataset
through Flower's FederatedDataset in :mod:`datamodules.flower`). Independent of flcore."""

from datamodules.base import DatasetNotFoundError, FederatedDataModule, IndexedTensors, PoissonEpochs
from datamodules.flower import FromFederatedDataset
from datamodules.leaf import FEMNIST, LeafDataModule, Natural, Sent140, Shakespeare
from datamodules.partition import (
    IID,
    ClassesPerClient,
    Dirichlet,
    FlwrPartitioner,
    Partitioner,
    QuantitySkew,
    Shards,
    label_distribution,
)
from datamodules.wrap import DatasetEpochs, FromDataModule, FromDatasets, Pairs
from datamodules.vision import CIFAR10, CIFAR100, MNIST, SVHN, Digits, FashionMNIST

__all__ = [
    "SVHN",
    "FederatedDataModule", "IndexedTensors", "DatasetNotFoundError", "PoissonEpochs",
    "Partitioner", "IID", "Dirichlet", "Shards", "ClassesPerClient", "QuantitySkew", "FlwrPartitioner",
    "label_distribution",
    "Digits", "MNIST", "FashionMNIST", "CIFAR10", "CIFAR100",
    "FromDatasets", "FromDataModule", "FromFederatedDataset", "Pairs", "DatasetEpochs",
    "LeafDataModule", "Natural", "FEMNIST", "Shakespeare", "Sent140",
]
