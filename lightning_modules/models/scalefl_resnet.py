"""ScaleFL's split of one ResNet along width and depth, with early exits (Ilhan, Su & Liu,
"ScaleFL: Resource-Adaptive Federated Learning with Heterogeneous Clients", CVPR 2023)."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_modules.models.resnet_family import WidthScaledResNet

__all__ = ["ScaleFLResNet", "ExitHead", "scalefl_level_name"]


def _unscale(z: Tensor, scale: float) -> Tensor:
    """Pooled features divided by the width rate before a linear layer (HeteroFL's scaler)."""
    return z / scale if scale != 1.0 else z


def scalefl_level_name(exits: int, rate: float) -> str:
    """Name of a ScaleFL level: ``(4, 1.0) -> "e4w1"``, ``(2, 0.7) -> "e2w0.7"``."""
    return f"e{exits}w{rate:g}"


class ExitHead(nn.Module):
    """An early-exit classifier after a stage, as in the authors' ``Classifier``: ``convs`` times
    (3x3 conv ``C -> C``, static BatchNorm, ReLU), global average pooling, one Linear
    ``C -> num_classes``. ``(B, C, H, W) -> (B, num_classes)``."""

    def __init__(self, channels: int, num_classes: int, convs: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(convs):
            layers += [nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(channels, track_running_stats=False), nn.ReLU(inplace=True)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, h: Tensor, scale: float = 1.0) -> Tensor:
        return self.fc(_unscale(self.layers(h), scale))


class ScaleFLResNet(WidthScaledResNet):
    """One level of ScaleFL's two-dimensional split of a family ResNet (FedIN setting: the
    ``HeteroResNet`` stages, here with early exits).

    * **Depth** (ScaleFL's horizontal split): a level with ``e`` exits keeps the stem and stages
      ``1 .. e``; an exit head (:class:`ExitHead`) follows each of stages 1-3 it has, and the
      full depth (``e = 4``) ends in the usual pooled ``classifier``. So level ``e`` produces
      ``e`` predictions, shallow to deep, and ``forward`` returns the deepest.
    * **Width** (ScaleFL's vertical split): every hidden width is ``rate`` times the global one;
      a sub-model's tensors are the leading channels of the global ones (the authors' downscale
      index keeps the first ``int(rate * C)`` channels), so the server can slice and aggregate
      them as HeteroFL does.
    * BatchNorm is static (batch statistics, no running statistics), the authors' default
      (``track_running_stats`` off), and, as in HeteroFL, pooled features are divided by ``rate``
      in training before every linear layer (the authors' ``Scaler``).

    Levels: ``rates[i]`` and ``exits[i]`` define level ``scalefl_level_name(exits[i], rates[i])``.
    The default five levels are this project's reading of the five-level split
    ("a1-b1-c1-d1-e1", one fifth of the clients each) that the FedIN paper ran ScaleFL with:
    exits ``(4, 4, 3, 2, 1)`` and widths ``(1, 0.9, 0.8, 0.7, 0.6)``, i.e. ScaleFL's default
    four-level plan (one to four exits, widths 0.7-1) stretched to five levels. One level must
    be the full model (4 exits, rate 1): it is the global model.

    Args:
        arch, in_channels, num_classes, width, stem: as :class:`HeteroResNet` (``width`` is the
            global model's).
        rates: width ratio of each level, in ``(0, 1]``.
        exits: exits (stages kept) of each level, in ``1 .. 4``.
        exit_convs: 3x3 convolutions per exit head (authors: 3).
        level: this member's name (default: the first level's).

    Raises:
        ValueError: ``rates`` and ``exits`` of different lengths, values out of range, no full
            level, duplicate levels, an unknown ``level``, or as :class:`HeteroResNet`.
    """

    def __init__(self, arch: str = "resnet18", in_channels: int = 3, num_classes: int = 10, width: int = 64,
                 stem: str = "imagenet", rates: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6),
                 exits: tuple[int, ...] = (4, 4, 3, 2, 1), exit_convs: int = 3, level: str | None = None):
        rates, exits = tuple(float(r) for r in rates), tuple(int(e) for e in exits)
        if len(rates) != len(exits) or not rates:
            raise ValueError(f"model.net.exits: need one per width ratio (rates {list(rates)}), got {list(exits)}")
        if any(not 1 <= e <= 4 for e in exits):
            raise ValueError(f"model.net.exits: each must be in 1..4, got {list(exits)}")
        if (4, 1.0) not in zip(exits, rates):
            raise ValueError("model.net.exits: one level must be the full model (4 exits at rate 1), "
                             f"got exits {list(exits)} and rates {list(rates)}")
        if exit_convs < 0:
            raise ValueError(f"model.net.exit_convs: must be >= 0, got {exit_convs}")
        names = tuple(scalefl_level_name(e, r) for e, r in zip(exits, rates))
        if len(set(names)) != len(names):
            raise ValueError(f"model.net.exits: levels must differ, got {list(names)}")
        level = level or names[0]
        if level not in names:
            raise ValueError(f"model.net.level: must be one of {list(names)}, got {level!r}")
        i = names.index(level)
        super().__init__(arch, in_channels, num_classes, width, stem, rates=(rates[i],))
        self.ARCHITECTURES = names
        self.level, self.num_exits = level, exits[i]
        self._family = {"arch": arch, "in_channels": in_channels, "num_classes": num_classes, "width": width,
                        "stem": stem, "rates": rates, "exits": exits, "exit_convs": exit_convs}
        stem_width = max(1, round(width * self.rate))
        for k in range(self.num_exits + 1, 5):  # depth split: drop the stages past the last exit
            delattr(self.intermediate, f"layer{k}")
        if self.num_exits < 4:
            del self.classifier
        self.exits = nn.ModuleList(ExitHead(stem_width * 2**k, num_classes, exit_convs)
                                   for k in range(min(self.num_exits, 3)))
        for m in self.exits.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def with_architecture(self, arch: str) -> ScaleFLResNet:
        """The level named ``arch`` (e.g. ``"e2w0.7"``), freshly initialised."""
        return ScaleFLResNet(**self._family, level=arch)

    def exit_logits(self, x: Tensor) -> list[Tensor]:
        """Every exit's logits, shallow to deep: ``num_exits`` tensors ``(B, num_classes)``."""
        scale = self.rate if self.training else 1.0
        h = self.extractor(x)
        outs = []
        for k in range(1, self.num_exits + 1):
            h = getattr(self.intermediate, f"layer{k}")(h)
            if k <= 3:
                outs.append(self.exits[k - 1](h, scale))
        if self.num_exits == 4:
            outs.append(self.classifier(_unscale(self.intermediate.flatten(self.intermediate.pool(h)), scale)))
        return outs

    def forward(self, x: Tensor) -> Tensor:
        """The deepest exit's logits ``(B, num_classes)``."""
        return self.exit_logits(x)[-1]
