"""What a network offers beyond ``forward``, declared once: the capabilities the objectives and
strategies rely on, as ``typing.Protocol`` classes checked with ``isinstance``.

A net satisfies a protocol by having its members; it need not inherit from it, so a user's own
network qualifies as it is. The shipped nets (``lightning_modules.models``) satisfy the ones
their docstrings name. Each check happens once, when a run is configured, with a one-line error
naming what is missing.

>>> import torch
>>> from lightning_modules.models import CNN
>>> net = CNN(1, 10, 8)
>>> isinstance(net, FeatureNet), isinstance(net, ModelFamily)
(True, False)
>>> net.features(torch.zeros(2, 1, 8, 8)).shape == (2, net.feature_dim)
True
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = ["Classifier", "Representation", "FeatureNet", "SplitNet", "ModelFamily", "IntermediateNet", "EarlyExitNet", "num_classes_of"]


@runtime_checkable
class Classifier(Protocol):
    """A net that says how many classes its ``(B, C)`` logits cover (``C = num_classes``)."""

    num_classes: int


@runtime_checkable
class Representation(Protocol):
    """A module whose representation can be read: ``features(x)`` maps a ``(B, ...)`` input to
    ``(B, D)`` (MOON's contrastive term on a user's own LightningModule)."""

    def features(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class FeatureNet(Protocol):
    """A net whose penultimate representation can be read: ``features(x)`` maps a ``(B, ...)``
    input to ``(B, feature_dim)`` (MOON's projection head is built on it)."""

    num_classes: int
    feature_dim: int

    def features(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class SplitNet(FeatureNet, Protocol):
    """A :class:`FeatureNet` whose head is separate: ``forward(x) == classifier(features(x))``,
    ``classifier`` one ``Linear(feature_dim, num_classes)`` (FedGen trains it on generated
    features)."""

    def classifier(self, h: Tensor) -> Tensor: ...


@runtime_checkable
class ModelFamily(Protocol):
    """A net that is one member of a family of architectures (heterogeneous-model runs):
    ``ARCHITECTURES`` names the members, ``with_architecture(name)`` builds one."""

    ARCHITECTURES: tuple[str, ...]

    def with_architecture(self, arch: str) -> nn.Module: ...


@runtime_checkable
class IntermediateNet(Protocol):
    """A net cut in three, ``forward = classifier(intermediate(extractor(x)))``, whose
    intermediate block's input ``s_in`` and output ``s_out`` FedIN exchanges (FedIN paper,
    Sec. III-A)."""

    extractor: nn.Module
    intermediate: nn.Module
    classifier: nn.Module


@runtime_checkable
class EarlyExitNet(Protocol):
    """A net with early exits: ``exit_logits(x)`` gives one ``(B, C)`` logit tensor per exit,
    the last one the full depth (ScaleFL)."""

    def exit_logits(self, x: Tensor) -> list[Tensor]: ...


def num_classes_of(net: nn.Module) -> int | None:
    """The net's declared class count (:class:`Classifier`), or ``None`` when it declares none
    (the class count is then taken from the data).

    >>> num_classes_of(nn.Linear(3, 4)) is None
    True
    """
    return int(net.num_classes) or None if isinstance(net, Classifier) else None
