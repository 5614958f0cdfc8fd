"""VGG-16 with BatchNorm for 32x32 inputs (Simonyan & Zisserman, ICLR 2015, configuration D):
13 3x3 conv-BN-ReLU layers in five blocks (64, 128, 256, 512, 512 channels) with 2x2 max pooling
after each block, then the CIFAR-style classifier 512 -> 512 -> 512 -> classes (the ImageNet head of
4096 units on 7x7 maps does not fit 32x32 inputs); about 15 M parameters."""

from __future__ import annotations

from torch import Tensor, nn
from lightning_modules.models.sizes import check_sizes

__all__ = ["VGG16"]

_CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG-16-BN for small images.

    Args:
        in_channels: image channels; num_classes: output logits; dropout: before each hidden FC.

    Shapes: ``(B, C, 32, 32)`` -> ``(B, num_classes)`` (any H, W >= 32 pooled to 1x1).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        check_sizes(in_channels=in_channels, num_classes=num_classes)
        layers: list[nn.Module] = []
        c = in_channels
        for v in _CFG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(512, 512), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(512, 512), nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(512, num_classes)
        self.num_classes = num_classes
        self.feature_dim = 512

    def features(self, x: Tensor) -> Tensor:
        """Penultimate representation ``(B, 512)``."""
        return self.head(self.body(x))

    def classifier(self, h: Tensor) -> Tensor:
        """Logits from :meth:`features`."""
        return self.fc(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
