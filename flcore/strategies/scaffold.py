"""SCAFFOLD server (Karimireddy et al., ICML 2020, Algorithm 1), for one model or a family."""

from __future__ import annotations

from typing import Any

from flcore.functional import RunningMix, StateDict, layerwise_average, mix
from flcore.server_opt import ServerOptimizer, server_step_on
from flcore.strategies.base import ClientResult, RoundAccumulator
from flcore.strategies.hetero_fedavg import HeteroFedAvg
from lightning_modules.terms import ControlVariates, ScaffoldTask, ScaffoldUpload

__all__ = ["Scaffold", "HeteroScaffold", "ScaffoldSums"]


class Scaffold(HeteroFedAvg):
    """Server half of SCAFFOLD; pair with ``model: lightning_modules.ScaffoldModule`` (or a
    user's own LightningModule, which then gets :class:`lightning_modules.terms.ControlVariates`).

    Each round the server sends the global model x and the server control variate c (so twice
    the model's parameters go down); clients keep their own c_i (client state: kept and
    checkpointed by the trainer in this simulation, not counted as communication). Aggregation
    (Alg. 1, l. 16-17), per state_dict entry over the round's clients that have it:
    ``x <- x + eta_g * mean_i (y_i - x)`` (buffers included; with ``eta_g = 1`` the plain mean)
    and ``c <- c + (1 / N_key) * sum_i delta_c_i``, where ``N_key`` is the number of clients (of
    all N) whose architecture has the entry.

    One class for both kinds of run: a homogeneous run is a family of one architecture, where
    every client has every entry, ``N_key = N`` and this is Alg. 1 exactly; with
    ``trainer.architectures`` (FedIN paper's heterogeneous SCAFFOLD baseline) x and c cover the
    union of the architectures' keys, layer-wise (the Eq. 19 idea applied to lines 16-17), and a
    client receives the entries of both that its architecture has.

    State: ``{"global": x, "arch_keys": {arch: keys}, "c": {param: tensor}}``, plus
    ``"server_opt"`` with a server optimizer.

    Args:
        global_lr: eta_g > 0 (default 1).
        server_optimizer: a server optimizer stepping from x to the new x on the entries the
            round trained (:func:`flcore.server_opt.server_step_on`).

    Raises:
        ValueError: ``global_lr <= 0``.
    """

    client_objective = "lightning_modules.ScaffoldModule"
    runs_homogeneous = True

    def __init__(self, global_lr: float = 1.0, server_optimizer: ServerOptimizer | None = None):
        super().__init__("layerwise", weighted=False, server_optimizer=server_optimizer)
        if not global_lr > 0:
            raise ValueError(f"strategy.global_lr: must be > 0, got {global_lr}")
        self.global_lr = float(global_lr)

    def client_terms(self) -> list:
        """``[ControlVariates()]``: SCAFFOLD's client half for a user's own LightningModule."""
        return [ControlVariates()]

    def initialize(self, model_state: dict[str | None, StateDict], clients_per_round: int,
                   num_clients: int = 0) -> dict[str, Any]:
        return {**super().initialize(model_state, clients_per_round, num_clients), "c": {}}

    def configure_fit(self, rnd, clients, state, rng):
        tasks = super().configure_fit(rnd, clients, state, rng)
        per_arch: dict[str | None, ScaffoldTask] = {}
        for t in tasks:
            if t.arch not in per_arch:
                keys = state["arch_keys"][t.arch]
                per_arch[t.arch] = ScaffoldTask(state["c"] if len(state["arch_keys"]) == 1
                                                else {k: state["c"][k] for k in keys if k in state["c"]})
            t.payload = per_arch[t.arch]
        return tasks

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        if not results:
            return state
        deltas = [r.payload.delta_c for r in results if isinstance(r.payload, ScaffoldUpload)]
        totals = {key: mix(have, [1.0] * len(have))
                  for key in dict.fromkeys(k for d in deltas for k in d)
                  for have in [[d[key] for d in deltas if key in d]]}
        counts = {key: sum(1 for d in deltas if key in d) for key in totals}
        return self._update(state, layerwise_average([r.state for r in results]), totals, counts)

    def _owners(self, state: dict[str, Any], key: str) -> int:
        """How many of the N clients have entry ``key`` (N_key)."""
        archs = [a for a, keys in state["arch_keys"].items() if key in keys]
        return sum(1 for arch in self.client_arch if arch in archs)

    def _update(self, state, mean_y: StateDict, delta_totals: StateDict, counts: dict[str, int]) -> dict[str, Any]:
        """``x <- x + eta_g (mean_y - x)`` on the entries of ``mean_y`` and
        ``c <- c + (1 / N_key) sum_i delta_c_i`` (Alg. 1, lines 16-17), from the round's mean
        model and summed control-variate updates (``counts``: how many uploads each sum has)."""
        x = state["global"]
        new_x = dict(x)
        for key, y in mean_y.items():
            new_x[key] = mix([x[key], y], [1.0 - self.global_lr, self.global_lr])
        c = dict(state["c"])
        for key, total in delta_totals.items():
            n_key = max(self._owners(state, key), counts[key])
            c[key] = total / n_key if key not in c else c[key] + total / n_key
        new = {**state, "global": new_x, "c": c}
        if self.server_optimizer is None:
            return new
        stepped, opt_state = server_step_on(self.server_optimizer, x, {k: new_x[k] for k in mean_y}, state["server_opt"])
        return {**new, "global": {**new_x, **stepped}, "server_opt": opt_state}

    def accumulator(self, rnd, state, weights):
        """Alg. 1's two sums one result at a time (:class:`ScaffoldSums`) in a run of one
        architecture; ``None`` for two tasks (as :meth:`FedAvg.accumulator`), several
        architectures (per-key owners) or a subclass with an aggregation of its own."""
        if type(self).aggregate_fit is not Scaffold.aggregate_fit or len(weights) == 2 or len(state["arch_keys"]) != 1:
            return None
        return ScaffoldSums(len(weights), lambda mean_y, totals, count: self._update(
            state, mean_y, totals, dict.fromkeys(totals, count)))


#: The name of :class:`Scaffold` in heterogeneous-model configs (one class serves both runs).
HeteroScaffold = Scaffold


class ScaffoldSums(RoundAccumulator):
    """SCAFFOLD's server sums over results taken one at a time: the unweighted mean of the
    returned models and the sum of their ``delta_c`` uploads
    (:class:`~lightning_modules.terms.ScaffoldUpload`), equal bit for bit to
    :meth:`Scaffold.aggregate_fit` when every task returned (renormalised to the returned count
    otherwise). Each result's ``state`` and ``payload`` are emptied once added.

    Args:
        expected: the number of tasks.
        done: ``(mean model, {key: summed delta_c}, returned count) -> new server state``.
    """

    def __init__(self, expected: int, done):
        self.expected, self.count, self.done = expected, 0, done
        self.models: dict[str, RunningMix] = {}
        self.deltas: dict[str, RunningMix] = {}

    def add(self, result: ClientResult) -> None:
        self.count += 1
        share = 1.0 / self.expected
        for key, tensor in result.state.items():
            self.models.setdefault(key, RunningMix()).add(tensor, share)
        for key, tensor in (result.payload.delta_c if isinstance(result.payload, ScaffoldUpload) else {}).items():
            self.deltas.setdefault(key, RunningMix()).add(tensor, 1.0)
        result.state, result.payload = {}, {}

    def finish(self, rnd, results, state, rng):
        if not results:
            return state
        if self.count != self.expected:
            for m in self.models.values():
                m.scale_(self.expected / self.count)
        return self.done({k: m.result() for k, m in self.models.items()},
                         {k: m.result() for k, m in self.deltas.items()}, self.count)
