"""The FedIN ResNet family: ResNet10/14/18/22/26 split into extractor, intermediate layers and
classifier (FedIN paper, Sec. 4 and Sec. 5.1).

Every member has the same extractor (stem) and classifier shapes, so the features at the two
cut points are exchangeable across the family: ``s_in = extractor(x)`` is
``(B, width, H', W')`` and ``s_out = intermediate(s_in)`` is ``(B, 8 * width)`` for all members
(FedIN Eq. 4-6). State-dict keys name stages and blocks (``intermediate.layer3.1.conv1.weight``),
so a key exists in exactly the members that have that block, with the same shape in all of them:
the property layer-wise heterogeneous aggregation (FedIN Eq. 19) relies on.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from lightning_modules.models.resnet20 import BasicBlock
from lightning_modules.models.sizes import check_sizes

__all__ = ["HeteroResNet", "WidthScaledResNet", "FAMILY_STAGES", "level_name"]

#: BasicBlocks per stage (FedIN paper, Sec. 5.1); stage widths are width x (1, 2, 4, 8).
FAMILY_STAGES: dict[str, tuple[int, int, int, int]] = {
    "resnet10": (1, 1, 1, 1),
    "resnet14": (1, 1, 2, 2),
    "resnet18": (2, 2, 2, 2),
    "resnet22": (2, 2, 3, 3),
    "resnet26": (3, 3, 3, 3),
}
STEMS = ("imagenet", "cifar")


class HeteroResNet(nn.Module):
    """One member of the family, as three sub-modules.

    * ``extractor``: the stem. ``"imagenet"``: 7x7 conv stride 2 + BN + ReLU + 3x3 max-pool
      stride 2 (PyTorch's ResNet; 32x32 -> 8x8), which matches the paper's 0.07 M feature floats
      per batch of 16 on CIFAR-10; ``"cifar"``: 3x3 conv stride 1 + BN + ReLU (small images).
    * ``intermediate``: four stages of BasicBlocks (projection shortcuts), then global average
      pooling and flattening: ``(B, width, H', W') -> (B, 8 * width)``.
    * ``classifier``: one linear layer ``(B, 8 * width) -> (B, num_classes)``.

    Args:
        arch: one of :data:`FAMILY_STAGES` (``resnet10`` ... ``resnet26``).
        in_channels: image channels; num_classes: output logits.
        width: channels of the stem and the first stage (64 in PyTorch's ResNets; smaller for CPU).
        stem: ``"imagenet"`` or ``"cifar"``.

    Raises:
        ValueError: unknown ``arch`` or ``stem``; ``width < 1``.
    """

    ARCHITECTURES = tuple(FAMILY_STAGES)

    def __init__(self, arch: str = "resnet18", in_channels: int = 3, num_classes: int = 10, width: int = 64,
                 stem: str = "imagenet"):
        super().__init__()
        if arch not in FAMILY_STAGES:
            raise ValueError(f"model.net.arch: must be one of {list(FAMILY_STAGES)}, got {arch!r}")
        if stem not in STEMS:
            raise ValueError(f"model.net.stem: must be one of {list(STEMS)}, got {stem!r}")
        check_sizes(in_channels=in_channels, num_classes=num_classes, width=width)
        self.arch, self.num_classes, self.feature_dim = arch, num_classes, 8 * width
        self._config = {"in_channels": in_channels, "num_classes": num_classes, "width": width, "stem": stem}
        if stem == "imagenet":
            self.extractor = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                           nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            self.extractor = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                           nn.ReLU(inplace=True))
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        in_planes = width
        for i, blocks in enumerate(FAMILY_STAGES[arch]):
            planes = width * 2**i
            layer = []
            for b in range(blocks):
                layer.append(BasicBlock(in_planes, planes, 2 if (i > 0 and b == 0) else 1, shortcut="B"))
                in_planes = planes
            stages[f"layer{i + 1}"] = nn.Sequential(*layer)
        stages["pool"] = nn.AdaptiveAvgPool2d(1)
        stages["flatten"] = nn.Flatten(1)
        self.intermediate = nn.Sequential(stages)
        self.classifier = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def with_architecture(self, arch: str) -> HeteroResNet:
        """A new (freshly initialised) family member with this one's width, stem and classes."""
        return HeteroResNet(arch, **self._config)

    def features(self, x: Tensor) -> Tensor:
        """``s_out``: ``(B, C, H, W) -> (B, 8 * width)`` (extractor then intermediate layers)."""
        return self.intermediate(self.extractor(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def level_name(rate: float) -> str:
    """Architecture name of a width level: ``1 -> "w1"``, ``0.0625 -> "w0.0625"``."""
    return f"w{rate:g}"


class WidthScaledResNet(HeteroResNet):
    """The width-sliced family of HeteroFL (Diao et al., ICLR 2021) and FedRolex (Alam et al.,
    NeurIPS 2022): one depth (``arch``), every hidden width scaled by a rate.

    Level ``w<r>`` has ``round(r * width)`` stem channels (stages ``x2, x4, x8`` of it), so each of
    its tensors has the global (rate-1) tensor's shape with hidden dimensions shrunk: a
    sub-model is a slice of the global model (leading channels for HeteroFL, a rolling window
    for FedRolex). Input channels and classes are never sliced. As in HeteroFL:

    * static BatchNorm: BN normalises with batch statistics in training and evaluation and keeps
      no running statistics (none are aggregated);
    * scaler: in training, the pooled features are divided by the rate before the classifier,
      so sub-models of every width produce logits on one scale.

    Args:
        arch, in_channels, num_classes, width, stem: as :class:`HeteroResNet` (``width`` is the
            global model's).
        rates: the width levels, each in ``(0, 1]`` (HeteroFL's "a1-b1-c1-d1-e1": 1, 1/2, 1/4,
            1/8, 1/16).
        level: this member's level name (default: the first rate's).

    Raises:
        ValueError: a rate outside ``(0, 1]``, an unknown level, or as :class:`HeteroResNet`.
    """

    def __init__(self, arch: str = "resnet18", in_channels: int = 3, num_classes: int = 10, width: int = 64,
                 stem: str = "imagenet", rates: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125, 0.0625),
                 level: str | None = None):
        rates = tuple(float(r) for r in rates)
        bad = [r for r in rates if not 0.0 < r <= 1.0]
        if not rates or bad:
            raise ValueError(f"model.net.rates: width ratios must be in (0, 1], got {list(rates)}")
        self.ARCHITECTURES = tuple(level_name(r) for r in rates)
        level = level or self.ARCHITECTURES[0]
        if level not in self.ARCHITECTURES:
            raise ValueError(f"model.net.level: must be one of {list(self.ARCHITECTURES)}, got {level!r}")
        self.rate = rates[self.ARCHITECTURES.index(level)]
        super().__init__(arch, in_channels, num_classes, width=max(1, round(width * self.rate)), stem=stem)
        self._family = {"arch": arch, "in_channels": in_channels, "num_classes": num_classes, "width": width,
                        "stem": stem, "rates": rates}
        self.level = level
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # static BN: no running statistics
                m.track_running_stats = False
                m.running_mean = m.running_var = m.num_batches_tracked = None

    def with_architecture(self, arch: str) -> WidthScaledResNet:
        """The family member of width level ``arch`` (e.g. ``"w0.25"``)."""
        return WidthScaledResNet(**self._family, level=arch)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        if self.training:
            h = h / self.rate  # HeteroFL's scaler
        return self.classifier(h)
