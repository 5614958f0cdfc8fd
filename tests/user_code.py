"""User code as a newcomer writes it, with no flcore import, for the tests of the general path:
the README's example module (examples/own_module/my_module.py) with counters, and two modules the
global evaluation cannot use."""

import sys
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "own_module"))
from my_module import DigitsMLP  # noqa: E402


class Counting(DigitsMLP):
    """Counts its ``configure_optimizers`` calls and its fits (``on_train_start``)."""

    def __init__(self, hidden: int = 16, lr: float = 0.1):
        super().__init__(hidden, lr)
        self.optimizers_built = 0
        self.fits_started = 0

    def on_train_start(self):
        self.fits_started += 1

    def configure_optimizers(self):
        self.optimizers_built += 1
        return super().configure_optimizers()


class NoForward(DigitsMLP):
    """Trains, but has no forward: the global evaluation cannot run."""

    forward = L.LightningModule.forward


class WrongOutput(DigitsMLP):
    """Returns 5 scores for 10 classes."""

    def forward(self, x):
        return self.model(x)[:, :5]


class WithFeatures(DigitsMLP):
    """The README's module with its representation exposed for MOON: ``features(x)`` is the hidden
    layer's output, ``(B, hidden)``."""

    def features(self, x):
        return self.model[:3](x)
