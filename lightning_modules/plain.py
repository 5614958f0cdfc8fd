"""``PlainClient``: an ordinary LightningModule, unchanged, as a federated client (the general path).

The user's module keeps its own ``training_step``, ``configure_optimizers``, ``self.log`` calls,
metrics and hooks: each client's local update is one plain ``lightning.Trainer.fit`` of that
module under automatic optimization (:func:`flcore.plain_local.fit_plain`), so everything behaves
as it does outside flcore. The wrapper only gives the federated side what it reads from every
client module: the network whose ``state_dict`` is exchanged (here the user's whole module, so
every parameter and persistent buffer it registers is federated) and the global evaluation
(``forward`` must return ``(B, C)`` class scores; accuracy and cross-entropy on the global test
set, as for the shipped modules).

A method whose client objective adds a term to the module's own loss (FedProx's proximal term,
SCAFFOLD's control variates, MOON's model-contrastive term) applies it as a Lightning callback that corrects the gradients
before each optimizer step
(:mod:`lightning_modules.terms`; the strategy supplies it, ``Strategy.client_terms``), so the
term cannot be forgotten. :class:`lightning_modules.ClientModule` and its subclasses stay the fast
path of the shipped modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L

from lightning_modules.client import ClientModule
from lightning_modules.terms import ClientTerm

__all__ = ["PlainClient", "as_client"]


class PlainClient(ClientModule):
    """A user's LightningModule as a federated client.

    Args:
        module: any ``LightningModule``; its ``forward`` maps a ``(B, ...)`` input batch to
            ``(B, C)`` class scores (used for the global evaluation only; training runs the
            module's own ``training_step``).
        terms: Lightning callbacks that add the strategy's client-objective terms to every local
            update (e.g. :class:`lightning_modules.terms.ProximalTerm`); set by the federated
            trainer from ``Strategy.client_terms`` before training.

    The exchanged state is ``module.state_dict()``; ``net`` is ``module`` itself.
    """

    def __init__(self, module: L.LightningModule, terms: Sequence[ClientTerm] = ()):
        if not isinstance(module, L.LightningModule):
            raise TypeError(f"model: must be a LightningModule, got {type(module).__name__}")
        super().__init__(module)
        self.terms = list(terms)

    @property
    def terms(self) -> list[ClientTerm]:
        """The strategy's client-objective terms (callbacks of every local update)."""
        return self._terms

    @terms.setter
    def terms(self, terms: Sequence[ClientTerm]) -> None:
        self._terms = list(terms)
        self.keeps_client_state = any(t.keeps_client_state for t in self._terms)

    def load_client_state(self, state: dict[str, Any] | None) -> None:
        for term in self._terms:
            term.load_client_state(state)

    def configure_client(self, payload: Any) -> None:
        for term in self._terms:
            term.configure_client(payload)

    def client_upload(self) -> Any:
        """A term's upload (SCAFFOLD's :class:`~lightning_modules.terms.ScaffoldUpload`), ``None``
        without one."""
        uploads = [u for u in (term.client_upload() for term in self._terms) if u is not None]
        return uploads[0] if uploads else None

    def client_state(self) -> dict[str, Any] | None:
        merged = {k: v for term in self._terms for k, v in (term.client_state() or {}).items()}
        return merged or None

    def configure_optimizers(self):
        """The user's own optimizers (``module.configure_optimizers``), as Lightning calls it
        once per client fit."""
        return self.net.configure_optimizers()

    def set_local_options(self, accumulate_grad_batches: int = 1, gradient_clip_val: float | None = None,
                          gradient_clip_algorithm: str = "norm") -> None:
        """Nothing to set: the general path hands gradient accumulation and clipping to the
        per-client ``lightning.Trainer`` itself (automatic optimization honours them)."""


def as_client(model) -> ClientModule:
    """``model`` as the federated trainer's client module: a :class:`ClientModule` as it is, any
    other ``LightningModule`` wrapped in :class:`PlainClient`.

    Raises:
        TypeError: ``model`` is not a LightningModule (``model: must be a LightningModule, ...``).
    """
    if isinstance(model, ClientModule):
        return model
    return PlainClient(model)
