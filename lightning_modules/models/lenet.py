"""The small CNN of the FedMR and FedCross authors' code (their ``CNNCifar``): a LeNet-5-style
network, not the FedAvg paper's CNN.

Facts read from the authors' public code (models/Nets.py of the FedMR repository, used by FedCross
too): conv 5x5 to 6 channels, ReLU, 2x2 max pooling; conv 5x5 to 16 channels, ReLU, 2x2 max
pooling; fully connected 120 and 84 with ReLU; a linear classifier. No padding, no BatchNorm, no
dropout; PyTorch's default initialisation. About 62 k parameters on 32x32x3 inputs (44 k on
28x28x1), against 1.6 M for :class:`~lightning_modules.models.CNN`.
"""

from __future__ import annotations

from torch import Tensor, nn
from lightning_modules.models.sizes import check_sizes

__all__ = ["LeNetCNN"]


class LeNetCNN(nn.Module):
    """LeNet-style CNN of the FedMR / FedCross authors' code (FedMR paper Sec. IV-A "CNN";
    FedCross paper Sec. IV-A).

    Args:
        in_channels: image channels C (1 for Fashion-MNIST / FEMNIST, 3 for CIFAR / SVHN).
        num_classes: output logits.
        image_size: side H = W of the square input; after the two valid 5x5 convolutions and
            poolings the feature map is ``((H - 4) // 2 - 4) // 2`` wide (5 for 32 px, 4 for 28 px).
        channels: channels of the two convolutions (6, 16 in the authors' code).
        hidden: widths of the two hidden fully connected layers (120, 84).

    Shapes: input ``(B, C, H, W)`` -> logits ``(B, num_classes)``; :meth:`features` gives
    ``(B, hidden[-1])`` (the authors' "representation").

    Raises:
        ValueError: image_size below 16 (the convolutions would leave nothing); a size below 1
            (:func:`check_sizes`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        channels: tuple[int, int] = (6, 16),
        hidden: tuple[int, int] = (120, 84),
    ):
        super().__init__()
        check_sizes(in_channels=in_channels, num_classes=num_classes, channels=channels, hidden=hidden)
        side = ((image_size - 4) // 2 - 4) // 2
        if image_size < 16 or side < 1:
            raise ValueError(f"model.net.image_size: must be >= 16 for two valid 5x5 convolutions, got {image_size}")
        c1, c2 = channels
        h1, h2 = hidden
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(c2 * side * side, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)
        self.num_classes = num_classes
        self.feature_dim = h2

    def features(self, x: Tensor) -> Tensor:
        """Penultimate representation ``(B, hidden[-1])`` (used by MOON and FedGen)."""
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = self.act(self.fc1(x.flatten(1)))
        return self.act(self.fc2(x))

    def classifier(self, h: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` from :meth:`features`."""
        return self.fc3(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
