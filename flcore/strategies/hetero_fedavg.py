"""Heterogeneous-model FedAvg: clients train different architectures of one model family
(FedIN paper, Sec. 3 and 4.4, Appendix B)."""

from __future__ import annotations

from typing import Any

import torch

from flcore.functional import StateDict, layerwise_average, union_state, weighted_average
from flcore.server_opt import ServerOptimizer, server_step_on
from flcore.strategies.base import ClientResult, ClientTask, HeterogeneousStrategy

__all__ = ["HeteroFedAvg", "AGGREGATIONS"]

AGGREGATIONS = ("layerwise", "same_shape")


class HeteroFedAvg(HeterogeneousStrategy):
    """FedAvg over clients whose models differ (ResNet10 ... ResNet26), two ways.

    * ``aggregation="layerwise"`` (layer-wise heterogeneous aggregation, FedIN Eq. 19, Appendix
      B.1; InclusiveFL, InCo): the server keeps one model holding the union of all
      architectures' state_dict keys; each key is averaged over the round's clients whose model
      has it, and every client then receives the keys its architecture owns. Keys no client of
      the round has keep their value. Eq. 19 is an unweighted mean over clients
      (``weighted=False``, the default here); ``weighted=True`` weights by sample count.
    * ``aggregation="same_shape"`` (FedAvg aggregation, FedIN Eq. 20/21, Appendix B.2): one model
      per architecture, averaged only over that architecture's clients, weighted by sample count
      (Eq. 21, the default here; ``weighted=False`` is Eq. 20). An architecture with no client in
      the round keeps its model.

    Works with any local objective whose server side is plain averaging (FedAvg's
    ``ClientModule``, ``FedProxModule``) and with ``MoonModule`` (whose previous model is client
    state, kept by the trainer). The trainer calls :meth:`bind` with each client's
    architecture (``trainer.architectures``) and passes :meth:`initialize` one initial state per
    architecture. Evaluation uses :meth:`global_models` (one model per architecture).

    With ``server_optimizer`` (FedAvgM, FedAdam, FedAdagrad, FedYogi: :mod:`flcore.server_opt`)
    the round's aggregate is a pseudo-gradient step of the server's optimizer instead of the new
    model, where the pseudo-gradient is defined: in layerwise mode on the keys some client of the
    round has (:func:`flcore.server_opt.server_step_on`; the others and their moments stay), in
    same_shape mode on each architecture's model that had clients (one optimizer state per
    architecture).

    State: ``{"global": union state_dict, "arch_keys": ...}`` (layerwise) or
    ``{"models": {arch: state_dict}}`` (same_shape), plus ``"server_opt"`` with an optimizer.

    Args:
        aggregation: ``"layerwise"`` or ``"same_shape"``.
        weighted: weight clients by sample count; default ``False`` for layerwise (Eq. 19),
            ``True`` for same_shape (Eq. 21).
        server_optimizer: a :class:`flcore.server_opt.ServerOptimizer`, or ``None``.

    Raises:
        ValueError: unknown ``aggregation``.
    """

    def __init__(self, aggregation: str = "layerwise", weighted: bool | None = None,
                 server_optimizer: ServerOptimizer | None = None):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"strategy.aggregation: must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
        self.aggregation = aggregation
        self.server_optimizer = server_optimizer
        self.weighted = (aggregation == "same_shape") if weighted is None else bool(weighted)
        self.client_arch: list[str] = []

    def initialize(self, model_state: dict[str, StateDict], clients_per_round: int, num_clients: int = 0) -> dict[str, Any]:
        """``model_state``: one initial state_dict per architecture (``{arch: state_dict}``), or
        one state_dict, taken as a family of one (``{None: state_dict}``) as in a homogeneous run.
        In layerwise mode a key shared by several architectures starts from the first
        architecture's value (in config order), so every client starts from one global model.
        Used without :meth:`bind` (from Python, a family of one), each of the ``num_clients``
        clients has the one architecture."""
        if all(isinstance(v, torch.Tensor) for v in model_state.values()):
            model_state = {None: model_state}
        if not self.client_arch and list(model_state) == [None]:
            self.client_arch = [None] * num_clients
        opt = self.server_optimizer
        if self.aggregation == "same_shape":
            models = {a: {k: v.clone() for k, v in s.items()} for a, s in model_state.items()}
            return {"models": models, **({"server_opt": {a: opt.init_state(m) for a, m in models.items()}} if opt else {})}
        union = {k: v.clone() for k, v in union_state(model_state).items()}
        return {"global": union, "arch_keys": {a: list(s) for a, s in model_state.items()},
                **({"server_opt": opt.init_state(union)} if opt else {})}

    def upgrade_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """A layer-wise state without ``arch_keys`` is a one-model state written before one class
        served both kinds of run (SCAFFOLD's and FedNova's ``{"global", "c", "num_clients"}``):
        it becomes a family of one (``{None: keys}``)."""
        if self.aggregation != "layerwise" or "arch_keys" in state:
            return state
        return {**{k: v for k, v in state.items() if k != "num_clients"}, "arch_keys": {None: list(state["global"])}}

    def arch_state(self, state: dict[str, Any], arch: str) -> StateDict:
        """The model an ``arch`` client receives (references, no copies)."""
        if self.aggregation == "same_shape":
            return state["models"][arch]
        return {k: state["global"][k] for k in state["arch_keys"][arch]}

    def configure_fit(self, rnd, clients, state, rng) -> list[ClientTask]:
        per_arch = {a: self.arch_state(state, a) for a in dict.fromkeys(self.client_arch[c] for c in clients)}
        return [ClientTask(cid=c, state=per_arch[self.client_arch[c]], slot=i, arch=self.client_arch[c])
                for i, c in enumerate(clients)]

    def aggregate_fit(self, rnd, results: list[ClientResult], state, rng) -> dict[str, Any]:
        if not results:
            return state
        weights = [r.weight if self.weighted else 1.0 for r in results]
        opt = self.server_optimizer
        if self.aggregation == "layerwise":
            union = dict(state["global"])
            averaged = layerwise_average([r.state for r in results], weights)  # FedIN Eq. 19
            if opt is None:
                union.update(averaged)
                return {**state, "global": union}
            stepped, opt_state = server_step_on(opt, state["global"], averaged, state["server_opt"])
            union.update(stepped)
            return {**state, "global": union, "server_opt": opt_state}
        models = dict(state["models"])
        opt_states = dict(state.get("server_opt", {}))
        for arch in dict.fromkeys(self.client_arch[r.cid] for r in results):
            idx = [i for i, r in enumerate(results) if self.client_arch[r.cid] == arch]
            models[arch] = weighted_average([results[i].state for i in idx], [weights[i] for i in idx])  # Eq. 20/21
            if opt is not None:
                models[arch], opt_states[arch] = opt.step(state["models"][arch], models[arch], opt_states[arch])
        return {**state, "models": models, **({"server_opt": opt_states} if opt is not None else {})}

    def global_models(self, state: dict[str, Any]) -> dict[str, StateDict]:
        """One model per architecture (in the order the state knows them)."""
        archs = state["models"] if self.aggregation == "same_shape" else state["arch_keys"]
        return {a: self.arch_state(state, a) for a in archs}

