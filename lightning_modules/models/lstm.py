"""Recurrent networks of the LEAF text tasks."""

from __future__ import annotations

from torch import Tensor, nn
from lightning_modules.models.sizes import check_sizes

__all__ = ["CharLSTM", "Sent140LSTM"]


class _LSTMClassifier(nn.Module):
    """Embedding -> stacked LSTM -> last time step's hidden state -> Linear."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, layers: int, num_classes: int, padding_idx=None):
        super().__init__()
        check_sizes(vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden, layers=layers, num_classes=num_classes)
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)
        self.num_classes, self.feature_dim = num_classes, hidden

    def features(self, x: Tensor) -> Tensor:
        """Hidden state after the last token, ``(B, hidden)`` from ids ``(B, T)``."""
        out, _ = self.lstm(self.embedding(x))
        return out[:, -1]

    def classifier(self, h: Tensor) -> Tensor:
        return self.fc(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class CharLSTM(_LSTMClassifier):
    """Next-character model of LEAF / FedMR for Shakespeare: embedding 8, two LSTM layers of 256,
    linear to the 80 symbols. Shapes: ``(B, 80)`` int64 -> ``(B, 80)`` logits."""

    def __init__(self, vocab_size: int = 80, embed_dim: int = 8, hidden: int = 256, layers: int = 2,
                 num_classes: int = 80):
        super().__init__(vocab_size, embed_dim, hidden, layers, num_classes)


class Sent140LSTM(_LSTMClassifier):
    """Sentiment classifier for Sent140: embedding (id 0 = padding), two LSTM layers, linear to 2
    classes. ``vocab_size`` must be the datamodule's ``max_vocab + 2``; ``embed_dim`` must match a
    GloVe file when one is given (LEAF uses 300-d GloVe). Shapes: ``(B, T)`` -> ``(B, 2)``."""

    def __init__(self, vocab_size: int = 10002, embed_dim: int = 50, hidden: int = 100, layers: int = 2,
                 num_classes: int = 2):
        super().__init__(vocab_size, embed_dim, hidden, layers, num_classes, padding_idx=0)
