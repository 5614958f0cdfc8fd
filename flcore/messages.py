"""The messages between the server and the clients: a task, a result, a failure.

They sit below the strategies, the executors and the local runner, which all import them from
here. Tensors travel as ``state_dict``-like mappings (``str -> Tensor``); ``payload`` holds the
extra data a strategy sends (``ClientTask``) or a local objective uploads (``ClientResult``), and
``client_state`` the typed client-resident state that the trainer keeps between rounds.

A method pair types its payloads: each shipped pair defines a dataclass per direction next to its
client half (e.g. SCAFFOLD's :class:`lightning_modules.terms.ScaffoldTask` /
:class:`~lightning_modules.terms.ScaffoldUpload`), which both halves import, so no string key is
shared between them. A user's own pair may still send a plain ``dict``; the executors and the
byte counts read either through :func:`payload_items`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from flcore.functional import StateDict

__all__ = ["ClientTask", "ClientResult", "ClientFailure", "payload_items", "with_payload_items"]


@dataclass
class ClientTask:
    """Work for one client in one round.

    Attributes:
        cid: client id in ``[0, num_clients)``.
        state: the model state_dict to start from (read-only; shared between tasks).
        slot: index of the server-side model this task trains (0 for single-model strategies,
            the middleware / local model index for FedCross / FedMR).
        payload: extra data for the local objective: the method pair's task dataclass (e.g.
            :class:`lightning_modules.terms.ScaffoldTask`), or a ``dict`` (empty: none).
        arch: the client's architecture in heterogeneous-model runs (``None``: the one model).
        client_state: data that lives on this client between its rounds (SCAFFOLD's control
            variate c_i, MOON's previous local model), as the client left it after its last
            participation; ``None`` before its first one, or when the local objective keeps none
            (``ClientModule.keeps_client_state``). Kept and checkpointed by the trainer, never
            counted as communication; strategies neither see nor set it.
        rnd: the 0-based round the task belongs to, set by the trainer (strategies need not);
            the local objective reads it as ``ClientModule.current_round``.
    """

    cid: int
    state: StateDict
    slot: int = 0
    payload: Any = field(default_factory=dict)
    arch: str | None = None
    client_state: dict[str, Any] | None = None
    rnd: int = 0


@dataclass
class ClientResult:
    """Outcome of one local update.

    Attributes:
        cid, slot: as in the task.
        state: the trained model's state_dict.
        num_samples: the client's training-set size n_k (FedAvg weight).
        metrics: e.g. ``{"train_loss": float, "train_acc": float}`` of the last local epoch.
        payload: extra uploads of the local objective: the method pair's upload dataclass (e.g.
            :class:`lightning_modules.terms.ScaffoldUpload`), or a ``dict`` (empty: none).
        agg_weight: aggregation weight if not the sample count (set by the trainer when the
            sampler asks for equal weights, e.g. clustered sampling).
        client_state: the client's state after this update, for its next participation (see
            :class:`ClientTask`); ``None`` when the local objective keeps none.
    """

    cid: int
    slot: int
    state: StateDict
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    payload: Any = field(default_factory=dict)
    agg_weight: float | None = None
    client_state: dict[str, Any] | None = None

    @property
    def weight(self) -> float:
        """The aggregation weight: ``agg_weight`` if set, else ``num_samples`` (FedAvg's n_k)."""
        return float(self.num_samples if self.agg_weight is None else self.agg_weight)


@dataclass
class ClientFailure:
    """A local update that raised or returned non-finite weights / loss.

    Attributes:
        cid, slot: as in the task.
        reason: one line: the exception (type and message) or what was non-finite.
    """

    cid: int
    slot: int
    reason: str


def payload_items(payload: Any) -> dict[str, Any]:
    """A payload's named entries: a dataclass's fields, a mapping's items, ``{}`` for ``None``.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Up:
    ...     a_norm: float
    >>> payload_items(Up(2.0)), payload_items({"x": 1}), payload_items(None)
    ({'a_norm': 2.0}, {'x': 1}, {})

    Raises:
        TypeError: ``payload`` is neither a dataclass instance, a mapping nor ``None``.
    """
    if payload is None:
        return {}
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        values = vars(payload)
        return {f.name: values[f.name] for f in dataclasses.fields(payload)}
    if isinstance(payload, dict):
        return dict(payload)
    raise TypeError(f"payload: must be a dataclass instance or a dict, got {type(payload).__name__}")


def with_payload_items(payload: Any, items: dict[str, Any]) -> Any:
    """``payload`` of the same kind with its entries replaced by ``items`` (the executors swap a
    shared tensor for a reference and back this way).

    >>> with_payload_items({"c": 1}, {"c": 2})
    {'c': 2}
    """
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        return dataclasses.replace(payload, **items)
    return dict(items)
