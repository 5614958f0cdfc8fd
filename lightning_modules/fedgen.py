"""FedGen client objective (Zhu, Hong & Zhou, ICML 2021, Eq. 5 and the reference's latent term)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lightning_modules.client import ClientModule, default_optimizer
from lightning_modules.models.generator import FeatureGenerator
from lightning_modules.models.protocols import SplitNet

__all__ = ["FedGenModule", "check_feature_split", "GeneratorTask", "LabelCounts"]


@dataclass
class GeneratorTask:
    """What a FedGen client receives besides its model once the server has trained the
    generator (FedGen, Zhu et al., ICML 2021, Alg. 1): the generator's state_dict."""

    generator: dict[str, Tensor]


@dataclass
class LabelCounts:
    """What a FedGen client uploads besides its model: how many of its training samples carry
    each label, ``counts`` ``(C,)`` int64 on the CPU (the server's teacher weights, Eq. 4)."""

    counts: Tensor


def check_feature_split(net: nn.Module) -> None:
    """Raise ``ValueError`` unless ``net`` has ``features``, ``feature_dim`` and a single-Linear
    ``classifier`` ending the state_dict (what FedGen's generator and server need)."""
    if not isinstance(net, SplitNet):
        raise ValueError("model.net: FedGen needs a network with a feature/classifier split "
                         "(features(), classifier(), feature_dim, num_classes), e.g. lightning_modules.models.CNN")
    last = [v for v in net.state_dict().values() if v.dim() == 2][-1]
    if tuple(last.shape) != (net.num_classes, net.feature_dim):
        raise ValueError("model.net: FedGen needs the classifier to be one Linear(feature_dim, num_classes) "
                         "registered last in the network")


class FedGenModule(ClientModule):
    """``CE(x, y) + alpha_t * CE(h(G(eps, y_hat)), y_hat) + beta_t * KL(p(x) || softmax(h(G(eps, y))))``.

    ``h`` is the client's classifier head, ``G`` the server's generator (frozen here), ``y_hat``
    drawn uniformly from the labels this client has seen, and ``alpha_t = alpha * decay^t``,
    ``beta_t = beta * decay^t`` in round t (FedGen reference: alpha = beta = 10, decay 0.98).
    The first term is the paper's Eq. 5 regulariser on generated features; the KL term is the
    reference code's latent matching. Without a generator (round 0) it is plain cross-entropy.
    Uploads the client's label counts, which the server uses to weight the teachers.

    Raises:
        ValueError: a net without a feature/classifier split; negative alpha, beta; decay not in (0, 1].
    """

    #: Not under local DP-SGD: the generator's samples pass through the classifier beside the batch.
    supports_local_dp = False

    server_strategies = ("flcore.strategies.FedGen", "flcore.strategies.HeteroFedGen")  # the generator comes from its server

    def __init__(self, net: nn.Module, optimizer: OptimizerCallable = default_optimizer, channels_last: bool = False,
                 generative_alpha: float = 10.0, generative_beta: float = 10.0, decay: float = 0.98,
                 noise_dim: int = 32, hidden: int = 256):
        check_feature_split(net)
        if generative_alpha < 0 or generative_beta < 0:
            raise ValueError("model.generative_alpha / generative_beta: must be >= 0")
        if not 0 < decay <= 1:
            raise ValueError(f"model.decay: must be in (0, 1], got {decay}")
        super().__init__(net, optimizer, channels_last)
        self.generative_alpha, self.generative_beta, self.decay = float(generative_alpha), float(generative_beta), float(decay)
        self.generator = FeatureGenerator(net.num_classes, net.feature_dim, noise_dim, hidden).requires_grad_(False)
        self._active = False
        self._alpha = self._beta = 0.0
        self.register_buffer("label_counts", torch.zeros(net.num_classes, dtype=torch.long), persistent=False)

    def configure_client(self, payload: Any) -> None:
        self._active = isinstance(payload, GeneratorTask)
        if self._active:
            self.generator.load_state_dict(payload.generator)
            t = self.current_round
            self._alpha = self.generative_alpha * self.decay**t
            self._beta = self.generative_beta * self.decay**t
        self.label_counts.zero_()
        self._seen = torch.zeros(self.net.num_classes, dtype=torch.bool)

    def train(self, mode: bool = True):
        super().train(mode)
        self.generator.eval()
        return self

    def on_local_epoch_start(self) -> None:
        super().on_local_epoch_start()
        self.label_counts.zero_()

    def batch_loss(self, batch):
        """Cross-entropy plus FedGen's generated-feature teacher and latent KL terms (one mini-batch)."""
        x, y = batch
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self.label_counts += torch.bincount(y, minlength=self.net.num_classes)
        self._seen = self._seen.to(y.device) | (self.label_counts > 0)
        logits = self.net.classifier(self.net.features(x))
        loss = F.cross_entropy(logits, y)
        if self._active:
            with torch.no_grad():
                z_y, _ = self.generator.sample(y)
                target = F.softmax(self.net.classifier(z_y), dim=1)
            latent = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
            labels = torch.nonzero(self._seen).flatten()
            y_hat = labels[torch.randint(len(labels), (len(y),), device=labels.device)]
            with torch.no_grad():
                z_hat, _ = self.generator.sample(y_hat)
            teacher = F.cross_entropy(self.net.classifier(z_hat), y_hat)
            loss = loss + self._alpha * teacher + self._beta * latent
        self._record(loss, logits, y)
        return loss

    def client_upload(self) -> LabelCounts:
        return LabelCounts(self.label_counts.detach().cpu().clone())
