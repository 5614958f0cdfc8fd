"""FedAvg (McMahan et al., AISTATS 2017, Algorithm 1): one global model, sample-weighted mean."""

from __future__ import annotations

from typing import Any

from flcore.functional import RunningMix, StateDict, weighted_average
from flcore.server_opt import ServerOptimizer, apply_server_step
from flcore.strategies.base import ClientResult, ClientTask, RoundAccumulator, Strategy

__all__ = ["FedAvg"]


class FedAvg(Strategy):
    """Federated averaging.

    Each round every sampled client trains the global model ``w``; the server sets
    ``w <- sum_k (n_k / n) w_k`` over the returned models (all state_dict entries, BatchNorm
    buffers included; integer buffers rounded, see :mod:`flcore.functional`).

    With ``server_optimizer`` (:mod:`flcore.server_opt`: FedAvgM, FedAdam, FedAdagrad, FedYogi;
    Reddi et al., ICLR 2021, Algorithm 2) the aggregate is not the new global model: the round's
    update ``aggregate - w`` is a step of that optimizer. The strategies built on FedAvg (FedProx,
    SCAFFOLD, FedNova, MOON, FedGen) take the same argument.

    State: ``{"global": state_dict}``, plus ``"server_opt"`` (the optimizer's ``m`` / ``v``) with
    a server optimizer.

    Args:
        server_optimizer: a :class:`flcore.server_opt.ServerOptimizer`, or ``None`` (default:
            the aggregate is the new global model).
    """

    server_optimizer: ServerOptimizer | None = None

    def __init__(self, server_optimizer: ServerOptimizer | None = None):
        self.server_optimizer = server_optimizer

    def initialize(self, model_state: StateDict, clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        state = {"global": {k: v.clone() for k, v in model_state.items()}}
        if self.server_optimizer is not None:
            state["server_opt"] = self.server_optimizer.init_state(state["global"])
        return state

    def configure_fit(self, rnd, clients, state, rng) -> list[ClientTask]:
        return [ClientTask(cid=c, state=state["global"], slot=i) for i, c in enumerate(clients)]

    def aggregate_fit(self, rnd, results: list[ClientResult], state, rng) -> dict[str, Any]:
        if not results:
            return state
        return self.server_step(state, {**state, "global": weighted_average([r.state for r in results],
                                                                            [r.weight for r in results])})

    def accumulator(self, rnd, state, weights):
        """The weighted mean one result at a time (:class:`WeightedMean`): for FedAvg itself and
        the subclasses that keep its aggregation (FedProx, MOON). Two tasks: ``None``
        (:func:`~flcore.functional.mix` takes a two-model shortcut that only a whole list can)."""
        if type(self).aggregate_fit is not FedAvg.aggregate_fit or len(weights) == 2:
            return None
        return WeightedMean(weights, lambda new: self.server_step(state, {**state, "global": new}))

    def server_step(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """``new`` (this round's aggregate state) with the server optimizer's step applied to its
        global model, from ``old["global"]`` (:func:`flcore.server_opt.apply_server_step`)."""
        return apply_server_step(self.server_optimizer, old, new)

    def global_model(self, state) -> StateDict:
        return state["global"]


class WeightedMean(RoundAccumulator):
    """``sum_k (n_k / n) w_k`` over results taken one at a time (FedAvg, McMahan et al. 2017,
    Alg. 1), equal bit for bit to :func:`~flcore.functional.weighted_average` over the same list.

    The normalisation uses the expected weights (``weights``, one per task); if some clients
    failed, the sums are renormalised by ``expected / actual`` total weight at the end (equal to
    the direct mean up to rounding). Each result's ``state`` is emptied once added.

    Args:
        weights: the tasks' expected aggregation weights (sample counts, or 1 each), in task order.
        done: ``new global state_dict -> new server state``.
    """

    def __init__(self, weights: list[float], done):
        self.expected = float(sum(weights))
        self.seen = 0.0
        self.mixes: dict[str, RunningMix] = {}
        self.done = done

    def add(self, result: ClientResult) -> None:
        self.seen += result.weight
        share = result.weight / self.expected
        for key, tensor in result.state.items():
            self.mixes.setdefault(key, RunningMix()).add(tensor, share)
        result.state = {}

    def finish(self, rnd, results, state, rng):
        if not results:
            return state
        if self.seen != self.expected:  # failed clients: renormalise over the ones that returned
            for m in self.mixes.values():
                m.scale_(self.expected / self.seen)
        return self.done({key: m.result() for key, m in self.mixes.items()})
