"""``FederatedTrainer``: the round loop (the ``trainer:`` section of a config)."""

from __future__ import annotations

import copy
import os
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import lightning as L

from flcore.batchnorm import bn_entries
from flcore.checks import check_datamodule, check_family, check_run
from flcore.client_store import ClientStateStore
from flcore.config_record import python_run_config
from flcore.dispatched import ParkedModels
from flcore.errors import ClientFailureError, RunInterrupted
from flcore.evaluation import classes_from_data, evaluate_checkpoint
from flcore.executors import Executor, SequentialExecutor
from flcore.family import family_modules
from flcore.interrupts import check as check_stop, stop_on_signals
from flcore.lifecycle import (finish_run, initial_state, open_run_folder, record_round, resume_point, save_run,
                              summarize_run, write_run_results)
from flcore.local import LocalRunner
from flcore.progress import RoundProgress
from flcore.round import run_round
from flcore.samplers import ClientSampler, UniformSampler
from flcore.strategies.base import Strategy
from flcore.strategies.fedavg import FedAvg
from lightning_modules.client import ClientModule
from lightning_modules.dp import LocalDP
from lightning_modules.plain import as_client

__all__ = ["FederatedTrainer"]


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
        local_dp: local DP-SGD on every client (:class:`lightning_modules.dp.LocalDP`: per-sample
            clipping to ``max_grad_norm``, Gaussian noise ``noise_multiplier * max_grad_norm``,
            Poisson-sampled mini-batches; Abadi et al., CCS 2016, through Opacus), composing with
            the client objectives. Each client's epsilon at ``delta`` counts every local step of
            every round it took part in (client metrics ``dp_epsilon``, ``dp_steps``;
            ``clients/dp_epsilon_max`` is the largest of a round's participants). ``null``: off.
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
        local_dp: LocalDP | None = None,
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
        self._modules: dict[str | None, L.LightningModule] = {}  # per architecture ({None: model}: one)
        self._client_arch: list[str | None] = []  # each client's architecture
        self.report_best_test = bool(report_best_test)
        self.model_stats_every = model_stats_every
        self.bn_policy = bn_policy
        self.client_state_mb = client_state_mb
        self.local_dp = local_dp
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
        names, self._client_arch = check_run(self, model, datamodule)
        self._modules = family_modules(model, names)  # {None: model}: a family of one
        check_family(self, self._modules, datamodule)
        for module in self._modules.values():
            module.set_local_dp(self.local_dp)
        classes_from_data(self._modules, datamodule)
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
        start, state, version, ckpt = resume_point(self, ckpt_path, datamodule)
        self._bn_keys = {arch: bn_entries(m.net, self.bn_policy) for arch, m in self._modules.items()}
        runner = LocalRunner(self._modules, datamodule, self.local, seed, self.callbacks)
        self.strategy.bind(self._client_arch)
        if self.strategy.needs_public_data:
            self.strategy.bind_server({a: copy.deepcopy(m.net).cpu() for a, m in runner.modules.items()},
                                      datamodule.public_inputs())
        self.sampler.setup(datamodule.client_sizes)
        if ckpt_path:
            self.sampler.load_state_dict(ckpt.get("sampler", {}))
        if state is None:
            state = initial_state(self, runner, datamodule)
        logger = open_run_folder(self, start, version, ckpt, seed, datamodule)
        store = self.client_store
        t0 = time.perf_counter()
        self._t0 = t0
        completed = start
        last_save = t0
        with stop_on_signals(), RoundProgress(self.rounds, start) as progress, closing(self.executor):
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
                    state, metrics, completed = *run_round(self, rnd, state, store, runner, datamodule, seed,
                                                           out_of_time), rnd + 1
                    record_round(self, runner, logger, completed, state, metrics, out_of_time)
                    progress.update(completed, metrics, time.perf_counter() - t0)
                    last = completed == self.rounds or out_of_time
                    due = self.checkpoint_interval_s is not None and time.perf_counter() - last_save >= self.checkpoint_interval_s
                    if last or due or (self.checkpoint_every and completed % self.checkpoint_every == 0):
                        save_run(self, completed, state, datamodule, logger.version)
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
                path = save_run(self, completed, state, datamodule, logger.version)
                write_run_results(self, seed, "interrupted" if isinstance(err, RunInterrupted) else "failed")
                msg = f"{err}; last good state (round {completed}) saved to {path}"
                if isinstance(err, RunInterrupted):
                    raise RunInterrupted(err.signum, msg) from None
                raise type(err)(msg) from None
        allowed = self.strategy.rounds_allowed(state)
        status = "finished" if completed == self.rounds or (allowed is not None and allowed < 1) else "out_of_time"
        finish_run(self, logger, seed, status, datamodule)
        return summarize_run(self.history, time.perf_counter() - t0, self.run_dir, type(self.strategy).__name__,
                             self.report_best_test)

    # ------------------------------------------------------------------ evaluate a checkpoint
    def validate(self, model: L.LightningModule, datamodule=None, ckpt_path: str | None = "last") -> dict[str, float]:
        """Evaluate the global model stored in a checkpoint on the global test set."""
        return evaluate_checkpoint(self, model, datamodule, ckpt_path, "validate")

    def test(self, model: L.LightningModule, datamodule=None, ckpt_path: str | None = "last") -> dict[str, float]:
        """Test the global model stored in a checkpoint on the global test set."""
        return evaluate_checkpoint(self, model, datamodule, ckpt_path, "test")

    # ------------------------------------------------------------------ helpers
    def _wall_total(self) -> float:
        return self._wall_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)
