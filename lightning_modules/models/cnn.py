"""The CNN of the FedAvg paper (McMahan et al., AISTATS 2017, Sec. 3): two 5x5 convolutions
(32 and 64 channels, 'same' padding, each followed by ReLU and 2x2 max pooling) and two fully
connected layers (512 hidden units, then the classes). FedMR Sec. IV-A and FedCross Sec. IV-A
use it for CIFAR-10/100."""

from __future__ import annotations

from torch import Tensor, nn
from lightning_modules.models.sizes import check_sizes

__all__ = ["CNN"]


class CNN(nn.Module):
    """FedAvg CNN.

    Args:
        in_channels: image channels C (1 grey, 3 colour).
        num_classes: output logits.
        image_size: side H = W of the square input (8, 28, 32, ...); must be divisible by 4.
        channels: channels of the two convolutions.
        hidden: width of the first fully connected layer.

    Shapes: input ``(B, C, H, W)`` -> logits ``(B, num_classes)``.

    Raises:
        ValueError: image_size not a positive multiple of 4; a size below 1 (:func:`check_sizes`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 512,
    ):
        super().__init__()
        check_sizes(in_channels=in_channels, num_classes=num_classes, channels=channels, hidden=hidden)
        if image_size < 4 or image_size % 4:
            raise ValueError(f"model.net.image_size: must be a positive multiple of 4, got {image_size}")
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(c2 * (image_size // 4) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.num_classes = num_classes
        self.feature_dim = hidden

    def features(self, x: Tensor) -> Tensor:
        """Penultimate representation ``(B, hidden)`` (used by MOON and FedGen)."""
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return self.act(self.fc1(x.flatten(1)))

    def classifier(self, h: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` from :meth:`features`."""
        return self.fc2(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
