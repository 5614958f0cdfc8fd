"""One federated round, from sampling the clients to the round's metrics: the body of
:class:`~flcore.trainer.FederatedTrainer`'s loop.

Order (each step reads only what the previous ones produced): sample the clients
(:class:`~flcore.samplers.ClientSampler`), ``configure_fit``, hand each task its client-resident
state, run the local updates (the executor), take each result as soon as it is done (client state
and BN entries staged in the store, the upload folded into a streaming accumulator when the
strategy has one), drop or refuse failed clients, aggregate, refuse a non-finite global model,
measure, evaluate when due, commit the staged client states.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Any

from flcore.client_store import ClientStateStore
from flcore.diagnostics import client_drift, nonfinite_entries, payload_bytes
from flcore.dispatched import ParkedModels
from flcore.errors import ClientFailureError, DivergedError
from flcore.evaluation import evaluate_global
from flcore.executors import SequentialExecutor
from flcore.functional import state_bytes
from flcore.messages import ClientFailure, ClientResult, ClientTask
from flcore.metric_names import TEST_LOSS
from flcore.samplers import ClientSampler
from flcore.seeding import STREAM_SAMPLER, STREAM_STRATEGY, round_rng

if TYPE_CHECKING:
    from flcore.local import LocalRunner
    from flcore.trainer import FederatedTrainer

__all__ = ["run_round"]


def run_round(trainer: FederatedTrainer, rnd: int, state: dict[str, Any], store: ClientStateStore,
              runner: LocalRunner, datamodule, seed: int, force_eval: bool = False) -> tuple[dict[str, Any], dict]:
    """Round ``rnd`` (0-based) of ``trainer``'s run: returns ``(strategy state, metrics)``.

    The participants' new client states (``ClientResult.client_state``, local BN entries) are
    staged in ``store`` and committed when the round completes, so an interrupt checkpoint names
    the last completed round's. ``force_eval`` evaluates the global model even off the
    ``eval_every`` schedule (the last round of a budget).

    Raises:
        ClientFailureError: every client failed, or one did with ``on_client_failure: raise``.
        DivergedError: the aggregated global model, or its test loss, is not finite.
    """
    t0 = time.perf_counter()
    strategy, sampler = trainer.strategy, trainer.sampler
    clients = sampler.sample(rnd, datamodule.num_clients, trainer.clients_per_round,
                             round_rng(seed, rnd, STREAM_SAMPLER))
    rng = round_rng(seed, rnd, STREAM_STRATEGY)
    tasks: list[ClientTask] = strategy.configure_fit(rnd, clients, state, rng)
    for task in tasks:
        task.rnd = rnd
    store.begin(rnd + 1)
    # in this process the runner asks the store just before each client trains, and hands each
    # result over as soon as it is done (a round holds about one participant's state and upload)
    in_process = isinstance(trainer.executor, SequentialExecutor)
    if not in_process and any(m.holds_client_state for m in runner.modules.values()):
        for task in tasks:
            task.client_state = store.get("module", task.cid)
    if trainer.bn_policy != "average":
        for task in tasks:  # the client trains with its own BN entries (a new dict: the server's stays)
            own = store.get("bn", task.cid)
            if own is not None:
                task.state = {**task.state, **own}
    stats_due = bool(trainer.model_stats_every) and (rnd + 1) % trainer.model_stats_every == 0
    acc = None  # streaming aggregation, unless something needs every result's tensors
    if not stats_due and type(sampler).observe is ClientSampler.observe:
        sizes = datamodule.client_sizes
        acc = strategy.accumulator(rnd, state, [1.0 if sampler.equal_weights else float(sizes[t.cid])
                                                for t in tasks])
    taken: dict[int, float] = {}  # id(result) -> its upload bytes
    parked = trainer._parked
    # (parked is None: no fit; BN entries of the client's own are the store's tensors, never parked)
    reuse = ParkedModels.reusable(strategy, tasks, in_process and parked is not None and trainer.bn_policy == "average",
                                  stats_due)

    def take(r: ClientResult) -> None:
        """Each successful result once, as soon as it is done: its client state and BN entries
        to the store, its upload to the accumulator (which may empty it)."""
        if sampler.equal_weights:
            r.agg_weight = 1.0
        taken[id(r)] = float(state_bytes(r.state) + payload_bytes(r.payload))
        if r.client_state is not None:
            store.stage("module", r.cid, r.client_state)
            r.client_state = None
        if trainer.bn_policy != "average":  # cloned: aggregation may reuse the results' tensors
            store.stage("bn", r.cid, {k: r.state[k].clone() for k in trainer._bn_keys.get(trainer._client_arch[r.cid], [])})
        if ParkedModels.may_lend(reuse, r.slot, len(taken), len(tasks)):  # the result takes the old model's place
            parked.lend(r, reuse[r.slot])
        if acc is not None:
            acc.add(r)

    def loaded(task: ClientTask) -> None:
        """The net holds the task's model: it waits on disk for its result (one model copy
        less in memory while the client trains)."""
        if ParkedModels.may_lend(reuse, task.slot, len(taken) + 1, len(tasks)):
            parked.park(task.slot, reuse[task.slot])

    if in_process:
        runner.client_state_source, runner.result_sink = (lambda cid: store.get("module", cid)), take
        runner.state_loaded = loaded if reuse else None
    try:
        outcomes = trainer.executor.run(rnd, tasks, runner)
    finally:
        runner.client_state_source = runner.result_sink = runner.state_loaded = None
    if reuse:
        parked.restore(unlent_only=True)  # a failed client's slot keeps its previous model
    results: list[ClientResult] = [o for o in outcomes if isinstance(o, ClientResult)]
    failures = [o for o in outcomes if isinstance(o, ClientFailure)]
    if failures:
        detail = "; ".join(f"client {f.cid}: {f.reason}" for f in failures)
        if not results or trainer.on_client_failure == "raise":
            what = "every client failed" if not results else f"{len(failures)} client(s) failed"
            raise ClientFailureError(f"round {rnd + 1}: {what} ({detail})")
        warnings.warn(f"round {rnd + 1}: dropped {len(failures)} failed client(s): {detail}", stacklevel=3)
    for r in results:  # the results of executors in other processes (failed clients keep their old state)
        if id(r) not in taken:
            take(r)
    sampler.observe(tasks, results)  # before aggregation, which may reuse the results' tensors
    stats = client_drift(tasks, results) if stats_due else {}
    state = acc.finish(rnd, results, state, rng) if acc is not None else strategy.aggregate_fit(rnd, results, state, rng)
    stats.update(strategy.round_metrics(state))
    bad = nonfinite_entries(state)
    if bad:
        raise DivergedError(f"round {rnd + 1}: the global model diverged (non-finite {', '.join(bad[:3])}"
                            f"{' ...' if len(bad) > 3 else ''}); lower the learning rate or check the data")
    if stats_due:
        stats.update(strategy.model_stats(state))
    wall = time.perf_counter() - t0
    metrics: dict[str, float] = {
        "round/wall_time_s": wall,
        "round/samples_per_s": sum(r.num_samples for r in results) * runner.trainer.max_epochs / max(wall, 1e-9),
        "round/bytes_down": float(sum(state_bytes(t.state) + payload_bytes(t.payload) for t in tasks)),
        "round/bytes_up": float(sum(taken[id(r)] for r in results)),
        "round/failed_clients": float(len(failures)),
        **stats,
    }
    for key in dict.fromkeys(k for r in results for k in r.metrics):  # e.g. train_loss, train_acc, a module's own
        vals = [r.metrics[key] for r in results if key in r.metrics]
        metrics[f"clients/{key}"] = sum(vals) / len(vals)
    if any("dp_epsilon" in r.metrics for r in results):  # local DP-SGD: the most-spent participant
        metrics["clients/dp_epsilon_max"] = max(r.metrics.get("dp_epsilon", 0.0) for r in results)
    if force_eval or (rnd + 1) % trainer.eval_every == 0 or rnd + 1 == trainer.rounds:
        metrics.update(evaluate_global(runner, trainer.strategy.global_models(state)))
        if not math.isfinite(metrics[TEST_LOSS]):
            raise DivergedError(f"round {rnd + 1}: the global model diverged (test loss "
                                f"{metrics[TEST_LOSS]}); lower the learning rate or check the data")
    store.commit()
    if reuse:
        parked.release()  # the round completed: its old models are not needed any more
    return state, metrics
