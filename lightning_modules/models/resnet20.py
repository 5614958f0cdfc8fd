"""ResNet-20 for 32x32 inputs (He et al., CVPR 2016, Sec. 4.2): a 3x3 stem with 16 channels,
three stages of three BasicBlocks (16, 32, 64 channels; stride 2 at the start of stages 2 and 3),
global average pooling and a linear classifier; 0.27 M parameters. Shortcuts that change shape use
the paper's option A (strided identity, zero-padded channels), so they hold no parameters."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from lightning_modules.models.sizes import check_sizes

__all__ = ["ResNet20", "BasicBlock", "AuthorsResNet20", "PreActBottleneck"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection; shapes ``(B, C_in, H, W)`` ->
    ``(B, C_out, H / stride, W / stride)``.

    Args:
        shortcut: ``"A"`` (parameter-free, zero-padded identity; CIFAR ResNets) or ``"B"``
            (1x1 conv + BN projection; ImageNet ResNets and the FedIN family).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.pad = stride, planes - in_planes
        self.mode = shortcut
        self.shortcut = nn.Identity()
        if (stride != 1 or in_planes != planes) and shortcut == "B":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def _skip(self, x: Tensor) -> Tensor:
        if self.mode == "A" and (self.stride != 1 or self.pad):
            x = x[:, :, :: self.stride, :: self.stride]
            return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return self.shortcut(x)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._skip(x))


class ResNet20(nn.Module):
    """ResNet-20 (CIFAR variant).

    Args:
        in_channels: image channels; num_classes: output logits.

    Shapes: ``(B, C, H, W)`` (any H, W >= 4) -> ``(B, num_classes)``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        check_sizes(in_channels=in_channels, num_classes=num_classes)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for s in (stride, 1, 1):
                blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        self.num_classes = num_classes
        self.feature_dim = 64
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        """Pooled representation ``(B, 64)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def classifier(self, h: Tensor) -> Tensor:
        """Logits from :meth:`features`."""
        return self.linear(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (BN-ReLU-conv 1x1, BN-ReLU-conv 3x3 with the stride, BN-ReLU-conv
    1x1 to ``4 * planes``) plus the shortcut; ``(B, C_in, H, W)`` -> ``(B, 4 planes, H/s, W/s)``.
    The shortcut is the identity, or a 1x1 strided convolution without BN where the shape changes
    (as in the FedMR authors' code)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.bn1, self.conv1 = nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(planes), nn.Conv2d(planes, out, 1, bias=False)
        self.downsample = (nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False))
                           if stride != 1 or in_planes != out else None)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + skip


class AuthorsResNet20(nn.Module):
    """The "ResNet-20" of the FedMR / FedCross authors' code (their ``ResNet20_cifar``), which
    differs from He et al.'s ResNet-20 (:class:`ResNet20`): a 3x3 stem conv with 16 channels and
    no BN, then three stages of two pre-activation bottlenecks (:class:`PreActBottleneck`;
    planes 16, 32, 64, strides 1, 2, 2; 3 stages x 2 blocks x 3 convs + stem + classifier = 20
    layers), global average pooling of the 256-channel map, and a linear classifier; 0.20 M
    parameters on 3-channel inputs. Initialisation as theirs: conv weights N(0, 2 / (k^2 C_out)),
    BN weight 0.5 and bias 0. Their model also builds a final BatchNorm that its forward never
    uses; it is left out here (it would only add dead entries to the state_dict).

    Args:
        in_channels: image channels; num_classes: output logits.

    Shapes: ``(B, C, H, W)`` (any H, W >= 4) -> ``(B, num_classes)``; :meth:`features` ``(B, 256)``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        check_sizes(in_channels=in_channels, num_classes=num_classes)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        in_planes, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(PreActBottleneck(in_planes, planes, stride),
                                        PreActBottleneck(planes * 4, planes)))
            in_planes = planes * 4
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        self.num_classes, self.feature_dim = num_classes, in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        """Pooled representation ``(B, 256)``."""
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def classifier(self, h: Tensor) -> Tensor:
        """Logits from :meth:`features`."""
        return self.fc(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
