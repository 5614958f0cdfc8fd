"""``FederatedTrainer``: the round loop (the ``trainer:`` section of a config)."""

from __future__ import annotations

import copy
import math
import os
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from flcore.batchnorm import bn_entries
from flcore.checks import check_architectures, check_datamodule, check_run
from flcore.config_record import python_run_config
from flcore.client_store import ClientStateStore, checkpoint_manifest, open_store
from flcore.checkpoint import load_checkpoint, load_resume_checkpoint, resolve_ckpt_path, save_checkpoint
from flcore.errors import ClientFailureError, ConfigError, DivergedError, RunInterrupted
from flcore.executors import Executor, SequentialExecutor
from flcore.dispatched import ParkedModels
from flcore.diagnostics import client_drift, middleware_stats, nonfinite_entries, payload_bytes
from flcore.evaluation import client_accuracy_stats, evaluate_clients, evaluate_global, global_models
from flcore.functional import state_bytes
from flcore.interrupts import check as check_stop, stop_on_signals
from flcore.local import LocalRunner
from flcore.progress import RoundProgress
from flcore.lifecycle import (check_resume, client_states, draw_partition, experiment_fields, hparams, summarize_run,
                              write_config)
from flcore.results import write_metrics_csv, write_results_json
from flcore.samplers import ClientSampler, UniformSampler
from flcore.seeding import STREAM_SAMPLER, STREAM_STRATEGY, round_rng
from flcore.messages import ClientFailure, ClientResult, ClientTask
from flcore.strategies.base import Strategy
from flcore.strategies.fedavg import FedAvg
from flcore.strategies.multimodel import MultiModelStrategy
from flcore.metric_names import GLOBAL, TEST_ACC, TEST_LOSS
from lightning_modules.client import ClientModule
from lightning_modules.plain import as_client

__all__ = ["FederatedTrainer"]

# moved; importable from here as before
client_accuracy_stats, _client_states = client_accuracy_stats, client_states




class FederatedTrainer:
    """Simulated federated training: sample clients, train locally, aggregate, evaluate, log.

    Args:
        strategy: server strategy (``class_path`` in YAML); default FedAvg.
        rounds: communication rounds R (>= 1).
        clients_per_round: clients K sampled each round (participation rate K / num_clients).
        eval_every: evaluate the global model every this many rounds (and after the last).
        local: keyword arguments of the per-client ``lightning.Trainer``: ``max_epochs`` is the
            number of local epochs E (default 5); ``accelerator``, ``precision``, ... as in Lightning.
        log_dir: TensorBoard root; a run writes to ``log_dir/name/version_N``.
        name: experiment name (sub-folder of ``log_dir``).
        checkpoint_every: write a checkpoint every this many rounds (0: only at the end, and by
            ``checkpoint_interval_s``).
        checkpoint_interval_s: also write one after the first round that ends this many seconds
            (wall clock) after the previous checkpoint (default 300: an interrupted run loses at
            most about five minutes plus a round); ``null``: rounds only.
        keep_checkpoints: keep this many ``round_*.ckpt`` files (0: all).
        executor: how local updates run (default sequential).
        sampler: client sampler (default uniform without replacement).
        callbacks: Lightning callbacks for the local Trainer.
        max_time_s: wall-clock budget in seconds: the first round that starts after the budget is
            spent is the last one (evaluated and checkpointed). ``None``: no limit.
        on_client_failure: ``drop`` (default): a client whose local update raises or returns
            non-finite weights/loss is left out of that round's aggregation with a warning
            (``round/failed_clients``); ``raise``: the run stops. Either way, if every client of a
            round fails the run stops with :class:`~flcore.errors.ClientFailureError` after
            checkpointing the last good state.
        architectures: heterogeneous-model runs (FedIN paper, Sec. 3): names of members of the
            model's family (``model.net`` must provide them, e.g. ``HeteroResNet``: ``resnet10`` ...
            ``resnet26``), spread evenly over the clients (client ``c`` gets
            ``architectures[c % len(architectures)]``). Needs a heterogeneous strategy. Each
            architecture gets its own reusable LightningModule; evaluation reports every
            architecture's aggregated model (``global/test_acc/<arch>``) and their mean
            (``global/test_acc``).
        client_architectures: an explicit architecture name per client (length
            ``data.num_clients``), instead of the even spread.
        client_eval_every: every this many rounds (and after the last; 0: never), evaluate the
            global model on every client's held-out local test data
            (:meth:`FederatedDataModule.client_test_sets`: LEAF's own per-user test splits, else
            ``client_test_size`` test samples following the client's label distribution); logs
            ``clients/test_acc_mean``, ``_std``, ``_worst10`` (mean over the worst 10 % of
            clients), ``_min`` and a TensorBoard histogram ``clients/test_acc``. In
            heterogeneous runs each client uses its architecture's global model.
        client_test_size: test samples per client for vision datasets (>= 1).
        bn_policy: what happens to BatchNorm entries. ``average`` (default): they are aggregated
            like every other entry. ``local`` (FedBN, Li et al., ICLR 2021): each client keeps its
            BN weight, bias and running statistics between its rounds (client state, kept and
            checkpointed by the trainer) and trains with them instead of the server's.
            ``local_stats``: the affine weight and bias are shared, the running statistics stay on
            the client. Under both, the strategy still averages the clients' BN entries into the
            global model, which is what ``global/test_acc`` evaluates; per-client evaluation
            (``client_eval_every``) uses each client's own BN entries once it has them. Needs a
            net with BatchNorm layers.
        model_stats_every: every this many rounds (0: never), log how the models move
            (``analysis/...`` scalars): the clients' drift ``||w_k - w_sent||`` from the model each
            was sent (``||w_k - w_global||`` for single-model strategies; mean and max), and for
            FedCross / FedMR the middleware models' pairwise cosine similarity (min, mean) and
            distance (mean, max) and their distances to their mean (mean, max), after aggregation
            (:func:`flcore.functional.model_geometry`). Trained weights only.
        client_state_mb: memory budget in MiB for client-resident state (SCAFFOLD's c_i, MOON's
            previous models, local BN entries; :mod:`flcore.client_store`): beyond it, the least
            recently used clients' states go to ``client_state/`` in the run folder and are read
            back when those clients are selected again; checkpoints name those files instead of
            copying them. ``null``: no budget (states stay in memory; checkpoints still name
            files). Results are the same under any budget.
        report_best_test: also report the highest test accuracy over the evaluated rounds, the
            papers' "best test accuracy" (selected on the test set, so optimistic), labelled as
            such in ``results.json`` and the summary. Model selection otherwise uses the
            validation set (``data.val_size``): "test at best val".

    A run folder (``log_dir/name/version_N``) holds TensorBoard events (with the HPARAMS tab's
    final metrics), ``config.yaml``, ``checkpoints/``, ``metrics.csv`` (one row per round,
    rewritten every round) and ``results.json`` (:mod:`flcore.results`), plus
    ``partition.png`` (the clients' label distribution) when matplotlib is installed.

    SIGINT / SIGTERM during ``fit`` request a stop (:mod:`flcore.interrupts`): at the next safe
    point (before a round, after a round's records and checkpoint, before a client's local epoch,
    while an executor waits) the run checkpoints the last completed round and raises
    :class:`~flcore.errors.RunInterrupted`; resume with ``ckpt_path="last"``.

    TensorBoard scalars (step = round, 1-based): ``global/test_acc``, ``global/test_loss``,
    ``global/val_acc``, ``global/val_loss`` (with a validation set),
    ``clients/train_loss``, ``clients/train_acc``, ``round/wall_time_s``,
    ``round/samples_per_s``, ``round/bytes_up``, ``round/bytes_down``.
    """

    def __init__(
        self,
        strategy: Strategy | None = None,
        rounds: int = 10,
        clients_per_round: int = 10,
        eval_every: int = 1,
        local: dict[str, Any] | None = None,
        log_dir: str = "runs",
        name: str = "default",
        checkpoint_every: int = 0,
        checkpoint_interval_s: float | None = 300.0,
        keep_checkpoints: int = 3,
        executor: Executor | None = None,
        sampler: ClientSampler | None = None,
        callbacks: list[L.Callback] | None = None,
        max_time_s: float | None = None,
        on_client_failure: str = "drop",
        architectures: list[str] | None = None,
        client_architectures: list[str] | None = None,
        client_eval_every: int = 0,
        client_test_size: int = 100,
        report_best_test: bool = False,
        model_stats_every: int = 0,
        bn_policy: str = "average",
        client_state_mb: float | None = 512.0,
    ):
        self.strategy = strategy if strategy is not None else FedAvg()
        self.rounds = rounds
        self.clients_per_round = clients_per_round
        self.eval_every = eval_every
        self.local = dict(local or {})
        self.log_dir = log_dir
        self.name = name
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.keep_checkpoints = keep_checkpoints
        self.executor = executor if executor is not None else SequentialExecutor()
        self.sampler = sampler if sampler is not None else UniformSampler()
        self.callbacks = list(callbacks or [])
        self.max_time_s = max_time_s
        self.on_client_failure = on_client_failure
        self.architectures = list(architectures) if architectures is not None else None
        self.client_architectures = list(client_architectures) if client_architectures is not None else None
        self._modules: dict[str, L.LightningModule] | None = None  # per architecture (heterogeneous runs)
        self._client_arch: list[str] = []
        self.report_best_test = bool(report_best_test)
        self.model_stats_every = model_stats_every
        self.bn_policy = bn_policy
        self.client_state_mb = client_state_mb
        self._wall_before, self._t0 = 0.0, None  # wall seconds of earlier sessions; this session's start
        self.client_store: ClientStateStore | None = None  # set by fit
        self._parked: ParkedModels | None = None  # set by fit: this round's dispatched models lent to results
        self._bn_keys: dict[str | None, list[str]] = {}  # per architecture, for bn_policy != average
        self.client_eval_every, self.client_test_size = client_eval_every, client_test_size
        self.run_config: dict[str, Any] | None = None  # the resolved config (CLI), or read from the objects (fit)
        self.history: list[dict[str, float]] = []
        self.run_dir: Path | None = None
        self.run_id: str | None = None  # set by fit: new per run, kept across resumes

    # ------------------------------------------------------------------ checks
    def _check(self, model: L.LightningModule, datamodule) -> ClientModule:
        """Every check that can fail before training (:func:`flcore.checks.check_run`); returns
        the client module (a user's own LightningModule wrapped: :func:`as_client`)."""
        model = as_client(model)
        self._modules, self._client_arch = check_run(self, model, datamodule)
        _classes_from_data(self._modules or {None: model}, datamodule)
        return model

    # ------------------------------------------------------------------ fit
    def fit(self, model: L.LightningModule, datamodule=None, ckpt_path: str | None = None) -> dict[str, Any]:
        """Run the federated rounds.

        Args:
            model: the local objective (LightningModule with ``net``).
            datamodule: a ``FederatedDataModule`` (a user's own data: ``datamodules.FromDatasets`` /
                ``FromDataModule``).
            ckpt_path: resume from this checkpoint (``"last"`` = newest under ``log_dir/name``).

        Returns:
            ``{"final": last evaluation, "best_test_acc": float, "best_round": int,
            "wall_time_s": float, "run_dir": str}``.

        Raises:
            ConfigError: invalid configuration or missing data, before any training.
        """
        check_datamodule(datamodule)
        model = self._check(model, datamodule)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        if self.run_config is None or self.run_config.get("source") == "python":  # started from Python
            self.run_config = python_run_config(self, model, datamodule, seed)
        start, state, version, ckpt = 0, None, None, None
        self.run_id = uuid.uuid4().hex[:12]
        self._wall_before, self._t0 = 0.0, None
        if ckpt_path:
            path = resolve_ckpt_path(ckpt_path, Path(self.log_dir) / self.name)
            ckpt = load_resume_checkpoint(path)
            check_resume(ckpt, self.rounds, self.run_config, datamodule, path)
            start, state, version = ckpt["round"], ckpt["strategy_state"], ckpt.get("version")
            self.run_id = ckpt.get("run_id") or self.run_id
            self.history = list(ckpt.get("history", []))
            self._wall_before = float(ckpt.get("wall_time_s", 0.0))
        hetero = self._modules is not None
        self._bn_keys = {arch: bn_entries(m.net, self.bn_policy) for arch, m in (self._modules or {None: model}).items()}
        runner = LocalRunner(self._modules if hetero else model, datamodule, self.local, seed, self.callbacks)
        if hetero:
            self.strategy.bind(self._client_arch)
            if self.strategy.needs_public_data:
                self.strategy.bind_server({a: copy.deepcopy(m.net).cpu() for a, m in runner.modules.items()},
                                          datamodule.public_inputs())
        self.sampler.setup(datamodule.client_sizes)
        if ckpt_path:
            self.sampler.load_state_dict(ckpt.get("sampler", {}))
        if state is None:
            try:  # data-dependent initialisation, e.g. Sent140's GloVe embeddings
                for module in runner.modules.values():
                    datamodule.prepare_net(module.net)
            except (ValueError, OSError) as err:
                raise ConfigError(str(err)) from None
            if hetero:  # one initial model per architecture
                init = {a: {k: v.detach().to("cpu", copy=True) for k, v in m.net.state_dict().items()}
                        for a, m in runner.modules.items()}
            else:
                init = {k: v.detach().to("cpu", copy=True) for k, v in model.net.state_dict().items()}
            state = self.strategy.initialize(init, self.clients_per_round, num_clients=datamodule.num_clients)
            del init  # the strategy holds its own copy; one model copy less for the whole run
        # a resumed run drops the TensorBoard events of rounds after its checkpoint (redone now)
        tb_kwargs = {"purge_step": start + 1} if start else {}
        logger = TensorBoardLogger(self.log_dir, name=self.name, version=version, default_hp_metric=False, **tb_kwargs)
        self.run_dir = Path(logger.log_dir)
        store = self.client_store = open_store(self.run_dir, self.client_state_mb, ckpt, start)
        self._parked = ParkedModels(self.run_dir / ".dispatched")
        if start == 0:
            logger.log_hyperparams(hparams(self.strategy, self.rounds, self.clients_per_round, self.local, seed, datamodule, self.run_config))
        write_config(self.run_dir, self.run_config)
        datamodule.save_artifacts(self.run_dir)  # e.g. Sent140's vocabulary
        if start == 0:
            draw_partition(self.run_dir, datamodule, logger)
        t0 = time.perf_counter()
        self._t0 = t0
        completed = start
        last_save = t0
        with stop_on_signals(), RoundProgress(self.rounds, start) as progress, _closing(self.executor):
            try:
                for rnd in range(start, self.rounds):
                    check_stop()  # a signal during the previous round's records or checkpoint stops here
                    allowed = self.strategy.rounds_allowed(state)
                    if allowed is not None and allowed < 1:
                        print(f"flcore: the strategy allows no more rounds after round {completed}")
                        break
                    budget_last = allowed == 1
                    out_of_time = budget_last or (self.max_time_s is not None
                                                  and time.perf_counter() - t0 >= self.max_time_s)
                    state, metrics, completed = *self._round(rnd, state, store, runner, datamodule, seed,
                                                             out_of_time), rnd + 1
                    if self.client_eval_every and (completed % self.client_eval_every == 0 or completed == self.rounds
                                                   or out_of_time):
                        accs = evaluate_clients(runner, self._global_models(state), self._client_arch, self.client_test_size,
                                                dict(store.items("bn")))
                        metrics.update(client_accuracy_stats(accs))
                        logger.experiment.add_histogram("clients/test_acc", accs, global_step=completed)
                    self.history.append({"round": completed, **metrics})
                    logger.log_metrics(metrics, step=completed)
                    write_metrics_csv(self.run_dir / "metrics.csv", self.history)
                    progress.update(completed, metrics, time.perf_counter() - t0)
                    last = completed == self.rounds or out_of_time
                    due = self.checkpoint_interval_s is not None and time.perf_counter() - last_save >= self.checkpoint_interval_s
                    if last or due or (self.checkpoint_every and completed % self.checkpoint_every == 0):
                        self._save(completed, state, datamodule, logger.version)
                        last_save = time.perf_counter()
                    if out_of_time:
                        print(f"flcore: the strategy's budget ends the run after round {completed}" if budget_last
                              else f"flcore: trainer.max_time_s={self.max_time_s} reached after round {completed}")
                        break
                    if completed < self.rounds:
                        check_stop()
            except (RunInterrupted, ClientFailureError) as err:
                logger.finalize("interrupted")
                store.discard()  # the interrupted round's states: the checkpoint is the last completed round's
                self._parked.restore()
                path = self._save(completed, state, datamodule, logger.version)
                self._write_results(seed, "interrupted" if isinstance(err, RunInterrupted) else "failed")
                msg = f"{err}; last good state (round {completed}) saved to {path}"
                if isinstance(err, RunInterrupted):
                    raise RunInterrupted(err.signum, msg) from None
                raise type(err)(msg) from None
        allowed = self.strategy.rounds_allowed(state)
        status = "finished" if completed == self.rounds or (allowed is not None and allowed < 1) else "out_of_time"
        record = self._write_results(seed, status)
        logger.log_hyperparams(hparams(self.strategy, self.rounds, self.clients_per_round, self.local, seed, datamodule, self.run_config), metrics={
            "hp/final_test_acc": (record["final"] or {}).get(TEST_ACC, math.nan),
            "hp/test_acc_at_best_val": record["test_acc_at_best_val"] if record["test_acc_at_best_val"] is not None
            else math.nan})
        logger.finalize("success")
        return summarize_run(self.history, time.perf_counter() - t0, self.run_dir, type(self.strategy).__name__,
                             self.report_best_test)

    def _round(self, rnd, state, store: ClientStateStore, runner, datamodule, seed, force_eval=False):
        """One round: returns ``(strategy state, metrics)``. The participants' new client states
        (``ClientResult.client_state``, local BN entries) are staged in ``store`` and committed
        when the round completes, so an interrupt checkpoint names the last completed round's."""
        t0 = time.perf_counter()
        clients = self.sampler.sample(rnd, datamodule.num_clients, self.clients_per_round,
                                      round_rng(seed, rnd, STREAM_SAMPLER))
        rng = round_rng(seed, rnd, STREAM_STRATEGY)
        tasks: list[ClientTask] = self.strategy.configure_fit(rnd, clients, state, rng)
        store.begin(rnd + 1)
        # in this process the runner asks the store just before each client trains, and hands each
        # result over as soon as it is done (a round holds about one participant's state and upload)
        in_process = isinstance(self.executor, SequentialExecutor)
        if not in_process and any(m.keeps_client_state for m in runner.modules.values()):
            for task in tasks:
                task.client_state = store.get("module", task.cid)
        if self.bn_policy != "average":
            for task in tasks:  # the client trains with its own BN entries (a new dict: the server's stays)
                own = store.get("bn", task.cid)
                if own is not None:
                    task.state = {**task.state, **own}
        stats_due = bool(self.model_stats_every) and (rnd + 1) % self.model_stats_every == 0
        acc = None  # streaming aggregation, unless something needs every result's tensors
        if not stats_due and type(self.sampler).observe is ClientSampler.observe:
            sizes = datamodule.client_sizes
            acc = self.strategy.accumulator(rnd, state, [1.0 if self.sampler.equal_weights else float(sizes[t.cid])
                                                         for t in tasks])
        taken: dict[int, float] = {}  # id(result) -> its upload bytes
        reuse = ParkedModels.reusable(self.strategy, tasks, in_process and self._parked is not None,  # (None: no fit)
                                      stats_due)

        def take(r: ClientResult) -> None:
            """Each successful result once, as soon as it is done: its client state and BN entries
            to the store, its upload to the accumulator (which may empty it)."""
            if self.sampler.equal_weights:
                r.agg_weight = 1.0
            taken[id(r)] = float(state_bytes(r.state) + payload_bytes(r.payload))
            if r.client_state is not None:
                store.stage("module", r.cid, r.client_state)
                r.client_state = None
            if self.bn_policy != "average":  # cloned: aggregation may reuse the results' tensors
                store.stage("bn", r.cid, {k: r.state[k].clone() for k in self._bn_keys.get(self._arch_of(r.cid), [])})
            if r.slot in reuse:  # the slot's old model to disk, the result into its memory
                self._parked.lend(r, reuse[r.slot])
            if acc is not None:
                acc.add(r)

        if in_process:
            runner.client_state_source, runner.result_sink = (lambda cid: store.get("module", cid)), take
        try:
            outcomes = self.executor.run(rnd, tasks, runner)
        finally:
            runner.client_state_source = runner.result_sink = None
        results: list[ClientResult] = [o for o in outcomes if isinstance(o, ClientResult)]
        failures = [o for o in outcomes if isinstance(o, ClientFailure)]
        if failures:
            detail = "; ".join(f"client {f.cid}: {f.reason}" for f in failures)
            if not results or self.on_client_failure == "raise":
                what = "every client failed" if not results else f"{len(failures)} client(s) failed"
                raise ClientFailureError(f"round {rnd + 1}: {what} ({detail})")
            warnings.warn(f"round {rnd + 1}: dropped {len(failures)} failed client(s): {detail}", stacklevel=2)
        for r in results:  # the results of executors in other processes (failed clients keep their old state)
            if id(r) not in taken:
                take(r)
        self.sampler.observe(tasks, results)  # before aggregation, which may reuse the results' tensors
        stats = client_drift(tasks, results) if stats_due else {}
        state = (acc.finish(rnd, results, state, rng) if acc is not None
                 else self.strategy.aggregate_fit(rnd, results, state, rng))
        stats.update(self.strategy.round_metrics(state))
        bad = nonfinite_entries(state)
        if bad:
            raise DivergedError(f"round {rnd + 1}: the global model diverged (non-finite {', '.join(bad[:3])}"
                                f"{' ...' if len(bad) > 3 else ''}); lower the learning rate or check the data")
        if stats_due and isinstance(self.strategy, MultiModelStrategy):
            stats.update(middleware_stats(state["models"]))
        wall = time.perf_counter() - t0
        epochs = runner.trainer.max_epochs
        metrics: dict[str, float] = {
            "round/wall_time_s": wall,
            "round/samples_per_s": sum(r.num_samples for r in results) * epochs / max(wall, 1e-9),
            "round/bytes_down": float(sum(state_bytes(t.state) + payload_bytes(t.payload) for t in tasks)),
            "round/bytes_up": float(sum(taken[id(r)] for r in results)),
            "round/failed_clients": float(len(failures)),
            **stats,
        }
        for key in dict.fromkeys(k for r in results for k in r.metrics):  # e.g. train_loss, train_acc, a module's own
            vals = [r.metrics[key] for r in results if key in r.metrics]
            metrics[f"clients/{key}"] = sum(vals) / len(vals)
        if force_eval or (rnd + 1) % self.eval_every == 0 or rnd + 1 == self.rounds:
            metrics.update(evaluate_global(runner, self._global_models(state)))
            if not math.isfinite(metrics[TEST_LOSS]):
                raise DivergedError(f"round {rnd + 1}: the global model diverged (test loss "
                                    f"{metrics['global/test_loss']}); lower the learning rate or check the data")
        store.commit()
        if reuse:
            self._parked.release()  # the round completed: its old models are not needed any more
        return state, metrics

    def _arch_of(self, cid: int) -> str | None:
        return self._client_arch[cid] if self._modules is not None else None

    def _global_models(self, state) -> dict:
        return global_models(self.strategy, state, self._modules is not None)

    # ------------------------------------------------------------------ evaluate a checkpoint
    def validate(self, model: L.LightningModule, datamodule=None, ckpt_path: str | None = "last") -> dict[str, float]:
        """Evaluate the global model stored in a checkpoint on the global test set."""
        return self._evaluate_ckpt(model, datamodule, ckpt_path, "validate")

    def test(self, model: L.LightningModule, datamodule=None, ckpt_path: str | None = "last") -> dict[str, float]:
        """Test the global model stored in a checkpoint on the global test set."""
        return self._evaluate_ckpt(model, datamodule, ckpt_path, "test")

    def _evaluate_ckpt(self, model, datamodule, ckpt_path, stage):
        check_datamodule(datamodule)
        ckpt = load_checkpoint(resolve_ckpt_path(ckpt_path or "last", Path(self.log_dir) / self.name))
        try:
            datamodule.setup(stage)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(str(err)) from None
        self._modules = None
        model = as_client(model)
        if self.architectures is not None or self.client_architectures is not None:
            self._modules, self._client_arch = check_architectures(self, model, datamodule)
            self.strategy.bind(self._client_arch)
        _classes_from_data(self._modules or {None: model}, datamodule)
        runner = LocalRunner(self._modules if self._modules is not None else model, datamodule, self.local, 0,
                             self.callbacks)
        try:
            result = evaluate_global(runner, self._global_models(ckpt["strategy_state"]), stage, with_val=False)
            result = {k.removeprefix(GLOBAL): v for k, v in result.items()}
        except (KeyError, RuntimeError) as err:
            raise ConfigError(
                f"ckpt_path: checkpoint does not match this config's strategy / model ({str(err).splitlines()[0][:100]})"
            ) from None
        print(f"flcore {stage}: round {ckpt['round']}  " + "  ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result

    # ------------------------------------------------------------------ helpers
    def _save(self, completed_rounds, state, datamodule, version) -> Path:
        assert self.run_dir is not None and self.client_store is not None
        payload = {
            "round": completed_rounds,
            "run_id": self.run_id,
            "strategy_state": state,
            "client_store": self.client_store.snapshot(),
            "sampler": self.sampler.state_dict(),
            "history": self.history,
            "partition_checksum": datamodule.partition_checksum(),
            "version": version,
            "experiment": experiment_fields(self.run_config) if self.run_config is not None else None,
            "wall_time_s": self._wall_total(),
        }
        path = save_checkpoint(payload, self.run_dir / "checkpoints" / f"round_{completed_rounds:05d}.ckpt",
                               keep_last=self.keep_checkpoints)
        self.client_store.collect_garbage([checkpoint_manifest(p) for p in path.parent.glob("round_*.ckpt")])
        return path

    def _write_results(self, seed: int, status: str) -> dict[str, Any]:
        return write_results_json(self.run_dir / "results.json", history=self.history, config=self.run_config,
                                  seed=seed, status=status, wall_time_s=self._wall_total(),
                                  report_best_test=self.report_best_test, rounds_planned=self.rounds,
                                  run_id=self.run_id)

    def _wall_total(self) -> float:
        return self._wall_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)


def _classes_from_data(modules: dict, datamodule) -> None:
    """Evaluate a net with no ``num_classes`` attribute over the data's classes (its ``(B, C)``
    outputs are checked against them before training)."""
    for module in modules.values():
        if module.num_classes is None:
            module.set_num_classes(datamodule.num_classes)


@contextmanager
def _closing(executor: Executor):
    """Release the executor's workers however the run ends."""
    try:
        yield executor
    finally:
        executor.close()


