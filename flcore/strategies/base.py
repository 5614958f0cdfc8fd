"""The strategy API: the server half of a federated algorithm.

A strategy sees only tensors: it turns the server state into per-client tasks
(:meth:`Strategy.configure_fit`), folds the clients' results back into the server state
(:meth:`Strategy.aggregate_fit`) and names the model to evaluate (:meth:`Strategy.global_model`).
The server state is a plain ``dict`` of tensors, lists and numbers, so one ``torch.save`` stores
it and one ``torch.load(weights_only=True)`` restores it. Randomness comes from the ``rng``
argument, seeded by the trainer from (run seed, round), never from global RNG order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from flcore.functional import StateDict
from flcore.messages import ClientFailure, ClientResult, ClientTask

__all__ = ["Strategy", "HeterogeneousStrategy", "RoundAccumulator", "ClientTask", "ClientResult", "ClientFailure"]


class RoundAccumulator(ABC):
    """A round's aggregation taken one result at a time (:meth:`Strategy.accumulator`).

    The trainer calls :meth:`add` with each successful result as soon as it is done, in task
    order, then :meth:`finish` once with every successful result: :meth:`add` may take the
    result's tensors (``state`` and ``payload``) and leave them empty, so a round never holds all
    of them; :meth:`finish` sees the results' other fields (cid, slot, weight, metrics).
    """

    @abstractmethod
    def add(self, result: ClientResult) -> None:
        """Fold in one successful result (it may empty ``result.state`` / ``result.payload``)."""

    @abstractmethod
    def finish(self, rnd: int, results: list[ClientResult], state: dict[str, Any],
               rng: np.random.Generator) -> dict[str, Any]:
        """The new server state; equal to :meth:`Strategy.aggregate_fit` on the same results
        (bit for bit when no client failed, and to rounding when the weights had to be
        renormalised)."""


class Strategy(ABC):
    """Abstract server strategy (shape of Flower's ``Strategy``).

    Contract: :attr:`client_objective` names the local objective the server half needs; the
    trainer refuses a mismatched pair (in either direction, with the module's
    ``server_strategies``) before any training.
    """

    #: The local objective (LightningModule) this server half needs, as ``"module.Class"``; an
    #: instance of it or of a subclass is required. ``None``: any objective whose own
    #: ``server_strategies`` admit this strategy. A server that reads an upload only one objective
    #: sends (SCAFFOLD's ``delta_c``, FedNova's ``a_norm``) names that objective, so that a
    #: mismatched pair never runs silently as another method.
    client_objective: ClassVar[str | None] = None

    #: Whether :meth:`aggregate_fit` reads a task's dispatched ``state`` for a slot that returned
    #: a result. ``False`` (FedCross, FedMR: a slot's old model matters only if its client
    #: failed) lets the trainer copy each result into its slot's dispatched model as soon as it
    #: is done, so a round holds K models instead of 2K (the old one is kept on disk until the
    #: round completes, for an interrupt checkpoint).
    reads_dispatched_state: ClassVar[bool] = True

    #: The server trains models itself on unlabelled server-held inputs (FedET's ensemble
    #: transfer): the trainer then calls :meth:`bind_server` before :meth:`initialize_family`,
    #: and refuses a run whose data has no public set (``data.public_size``).
    needs_public_data: ClassVar[bool] = False

    def validate(self, num_clients: int, clients_per_round: int) -> None:
        """Check hyper-parameters against the federation; raise ``ValueError`` naming the field.

        Called before any training. The base accepts everything.
        """

    def client_terms(self) -> list | None:
        """The client objective's terms as Lightning callbacks, for a user's own LightningModule
        (:class:`lightning_modules.plain.PlainClient`, whose local update is the module's own
        loss): ``[]`` when the objective is that loss alone (every strategy with no
        :attr:`client_objective`), ``None`` when it cannot be applied to an arbitrary module (a
        strategy that reads uploads or client state only its own objective produces). Subclasses
        that add a term to the loss return it (FedProx: :class:`lightning_modules.terms.ProximalTerm`).

        Raises:
            ValueError: a hyper-parameter the terms need is missing (naming the field).
        """
        return [] if self.client_objective is None else None

    def round_metrics(self, state: dict[str, Any]) -> dict[str, float]:
        """The strategy's own figures after a round's aggregation (e.g. DP-FedAvg's ``dp/epsilon``),
        logged with the round's metrics. The base reports none."""
        return {}

    def model_stats(self, state: dict[str, Any]) -> dict[str, float]:
        """Diagnostics of the server's own models after a round's aggregation (``analysis/...``
        scalars), logged in the rounds ``trainer.model_stats_every`` selects. The base reports
        none; multi-model strategies report their middleware models' geometry."""
        return {}

    def rounds_allowed(self, state: dict[str, Any]) -> int | None:
        """How many more rounds the strategy allows from ``state`` (e.g. a privacy budget), or
        ``None`` for no limit. The trainer makes the round that leaves 0 the last one (evaluated
        and checkpointed) and ends the run as finished; 0 before a round stops at once."""
        return None

    @abstractmethod
    def initialize(self, model_state: StateDict, clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        """Server state at round 0, from the freshly initialised model's state_dict.

        ``num_clients`` is N, the federation's size (for participation-rate-dependent updates).
        """

    def upgrade_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """A server state read from a checkpoint that an earlier version of this strategy wrote,
        in this version's layout (called on resume and on evaluating a checkpoint). The base
        returns it unchanged."""
        return state

    # ----- the family contract: what the trainer calls, for every run -----------------------
    def bind_server(self, nets: dict[str | None, Any], public_inputs: Any) -> None:
        """Server-side networks (one ``nn.Module`` per architecture, the strategy's own copies)
        and the unlabelled public inputs ``(P, ...)``. Only called when
        :attr:`needs_public_data`. The base ignores them."""

    def bind(self, client_arch: list[str | None]) -> None:
        """Each client's architecture (index = client id) before :meth:`initialize_family`;
        ``None`` for every client of a homogeneous run (a family of one)."""
        self.client_arch = list(client_arch)

    def initialize_family(self, models: dict[str | None, StateDict], clients_per_round: int,
                          num_clients: int = 0) -> dict[str, Any]:
        """Server state at round 0 from one initial state_dict per architecture
        (``{arch: state_dict}``; a homogeneous run passes ``{None: state_dict}``). The trainer
        calls this for every strategy; a one-model strategy's is :meth:`initialize` of the one
        model.

        Raises:
            ValueError: a one-model strategy given several architectures.
        """
        if len(models) != 1:
            raise ValueError(f"trainer.architectures: {type(self).__name__} aggregates one architecture, "
                             f"got {list(models)}")
        return self.initialize(next(iter(models.values())), clients_per_round, num_clients)

    def global_models(self, state: dict[str, Any]) -> dict[str | None, StateDict]:
        """One model per architecture, ``{arch: state_dict}``, for evaluation; a one-model
        strategy's is ``{None: global_model(state)}``."""
        return {None: self.global_model(state)}

    @abstractmethod
    def configure_fit(
        self, rnd: int, clients: list[int], state: dict[str, Any], rng: np.random.Generator
    ) -> list[ClientTask]:
        """Tasks of round ``rnd`` (0-based) for the sampled ``clients``."""

    def accumulator(self, rnd: int, state: dict[str, Any], weights: list[float]) -> RoundAccumulator | None:
        """Opt-in streaming aggregation: an accumulator for round ``rnd`` that takes the results
        one at a time (``weights``: each task's expected aggregation weight, in task order), so
        that a round holds one client's upload at a time instead of all of them; ``None`` (the
        base): :meth:`aggregate_fit` gets the whole list. The trainer also passes the whole list
        when something else needs every result (an adaptive sampler, the model statistics)."""
        return None

    @abstractmethod
    def aggregate_fit(
        self, rnd: int, results: list[ClientResult], state: dict[str, Any], rng: np.random.Generator
    ) -> dict[str, Any]:
        """New server state from the round's results (in task order; failed clients absent).

        Must not mutate ``state`` or its tensors: the trainer keeps the previous state to
        checkpoint if the run is interrupted. The results' tensors are handed over: a strategy
        may overwrite them in place (FedCross does, to need no extra model copies).
        """

    @abstractmethod
    def global_model(self, state: dict[str, Any]) -> StateDict:
        """The model to evaluate and deploy."""



class HeterogeneousStrategy(Strategy):
    """A server half for clients of different architectures (FedIN paper, Sec. 3): the protocol
    the trainer relies on when ``trainer.architectures`` is set.

    * :meth:`bind` receives each client's architecture before :meth:`initialize`;
    * :meth:`initialize` receives one initial state_dict per architecture
      (``{arch: state_dict}``) instead of one: it is :meth:`initialize_family`;
    * :meth:`global_models` returns one model per architecture for evaluation;
    * :attr:`exchanges_features`: clients exchange intermediate features (FedIN), so the
      architectures' feature shapes must agree (checked before training).
    """

    exchanges_features: ClassVar[bool] = False
    #: The strategy also runs a homogeneous run (no ``trainer.architectures``) as a family of
    #: one architecture, named ``None``: :meth:`initialize` then gets ``{None: state_dict}`` and
    #: every client's architecture is ``None`` (e.g. :class:`~flcore.strategies.Scaffold`, one
    #: class for both kinds of run). ``False``: the trainer refuses it without architectures.
    runs_homogeneous: ClassVar[bool] = False

    def initialize_family(self, models, clients_per_round, num_clients=0):
        return self.initialize(models, clients_per_round, num_clients)

    def validate_architectures(self, names: list[str]) -> None:
        """Check hyper-parameters against ``trainer.architectures`` before training; raise
        ``ValueError`` naming the field. The base accepts everything."""

    @abstractmethod
    def global_models(self, state: dict[str, Any]) -> dict[str, StateDict]:
        """One model per architecture: ``{arch: state_dict}``."""

    def global_model(self, state: dict[str, Any]) -> StateDict:
        """The first architecture's model (use :meth:`global_models` for all of them)."""
        return next(iter(self.global_models(state).values()))
