"""Local updates through one reusable ``lightning.Trainer`` and one reusable LightningModule.

Several clients share one ``Trainer.fit`` call (:meth:`LocalRunner.fit_many`): Lightning's
per-fit setup and teardown (a few milliseconds on a CPU, more than a small client's whole local
update in cross-device settings) run once per group of clients instead of once per client. Inside
the fit, the whole group is one Lightning epoch holding one training step (:class:`_GroupEpochs`:
the clients' local epochs one after another), so Lightning's per-epoch and per-step machinery
(about half a millisecond) runs once per group. When a callback or the client module implements
an epoch or batch hook, each client gets a Lightning epoch and step of its own instead
(:class:`LocalEpochs`), so those hooks see every client. Either way the group's schedule swaps
the clients (loads the dispatched weights, hands over the payload, clears the optimizer state,
reseeds) and collects each result after its last local epoch.
Every client's update is the same, bit for bit, as if it had its own fit: its randomness comes
from (run seed, round, client) alone.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities.model_helpers import is_overridden
import numpy as np
import torch
from torch import Tensor

from datamodules.base import PoissonEpochs, ShuffledEpochs
from flcore.compat import rewind_fit_loop
from flcore.interrupts import check as check_stop
from flcore.lightning_env import cheap_cuda_probe, quiet_lightning
from flcore.weights import check_finite, free_training_buffers, live_state, load_live
from flcore.seeding import STREAM_CLIENT, derive_seed, seed_local_rng
from flcore.messages import ClientFailure, ClientResult, ClientTask
from lightning_modules.client import ClientModule, EarlierEpoch
from lightning_modules.plain import PlainClient

__all__ = ["LocalRunner", "LocalEpochs", "DEFAULT_LOCAL"]

#: Per-client Trainer defaults; ``trainer.local`` in the YAML overrides any of them.
DEFAULT_LOCAL: dict[str, Any] = {
    "max_epochs": 5,
    "accelerator": "auto",
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
}

#: ``trainer.local`` keys that the client module applies itself (manual optimization).
_MODULE_OPTIONS = ("accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")

class _ClientSchedule(L.Callback):
    """Swaps the clients of one group fit: at Lightning epoch boundaries when each client has an
    epoch of its own, else inside the group's single step (see the module docstring)."""

    def __init__(self, runner: LocalRunner, tasks: list[ClientTask], rnd: int, per_epoch: bool):
        self.runner, self.tasks, self.rnd = runner, tasks, rnd
        self.per_epoch = per_epoch  # one Lightning epoch per client (else one epoch and step per group)
        self.sources: dict[int, ShuffledEpochs] = {}
        self.seeds: dict[int, int] = {}
        self.epochs = runner.local_epochs
        self.current = -1  # index of the client in training
        self.outcomes: list[ClientResult | ClientFailure] = []
        self.live: dict[str, Tensor] | None = None  # the net's state tensors, taken once the net is on its device
        self.trainer: L.Trainer | None = None  # the fit's trainer and module, from on_train_start
        self.module: L.LightningModule | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.trainer, self.module = trainer, pl_module
        self.live = live_state(pl_module.net)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.per_epoch:
            self.start(trainer.current_epoch)

    def start(self, index: int) -> None:
        """Collect the client in training, then make client ``index`` the one in training."""
        self._finish()
        self.current = index
        task, module = self.tasks[index], self.module
        load_live(module.net, self.live, task.state)
        if self.runner.state_loaded is not None:
            self.runner.state_loaded(task)
        if module.holds_client_state:
            source = self.runner.client_state_source
            module.receive_client_state(task.client_state if task.client_state is not None or source is None
                                        else source(task.cid))
        module.current_round = task.rnd
        module.configure_client(task.payload)
        for optimizer in self.trainer.optimizers:  # a fresh optimizer for every client, as in the papers
            optimizer.state.clear()
        if module.local_dp is not None:
            data = self.source(index)
            module.local_dp.begin_client(data.num_samples, data.num_batches)
        seed_local_rng(self._seed(index))
        module.on_client_start()

    def _seed(self, index: int) -> int:
        if index not in self.seeds:
            self.seeds[index] = derive_seed(self.runner.seed, self.rnd, self.tasks[index].cid, STREAM_CLIENT)
        return self.seeds[index]

    def source(self, index: int) -> ShuffledEpochs:
        """Client ``index``'s batches, made when its first epoch asks for them (so that a client
        whose data cannot be read fails as itself)."""
        if index not in self.sources:
            task = self.tasks[index]
            source = self.runner.datamodule.client_batches(
                task.cid, generator=torch.Generator().manual_seed(self._seed(index)))
            dp = self.module.local_dp if self.module is not None else None
            self.sources[index] = PoissonEpochs.like(source) if dp is not None and dp.config.poisson else source
        return self.sources[index]

    def on_train_end(self, trainer, pl_module) -> None:
        self._finish()

    def _finish(self) -> None:
        """Collect the client in training (after its last epoch) as a result or a failure."""
        if self.current < 0 or len(self.outcomes) > self.current:
            return
        task, module = self.tasks[self.current], self.module
        upload = module.client_upload()
        metrics = dict(module.train_metrics)
        if module.local_dp is not None:
            metrics.update(module.local_dp.metrics())
        kept = module.kept_client_state() if module.holds_client_state else None
        free_training_buffers(module, self.trainer)  # before the copy: the round's peak memory is here
        live = self.live if self.live is not None else module.net.state_dict()
        state = {k: v.detach().to("cpu", copy=True) for k, v in live.items()}
        result = ClientResult(cid=task.cid, slot=task.slot, state=state, num_samples=self.sources[self.current].num_samples,
                              metrics=metrics, payload=upload, client_state=kept)
        outcome = check_finite(result)
        sink = self.runner.result_sink
        if sink is not None and isinstance(outcome, ClientResult):
            sink(outcome)  # e.g. into the trainer's client-state store and streaming aggregation now
        self.outcomes.append(outcome)


class LocalEpochs:
    """One client's local update as a single training-step item: iterating it yields ``epochs``
    local epochs of ``source``, each a list of ``(x, y)`` mini-batches (all but the last as
    :class:`~lightning_modules.client.EarlierEpoch`, whose metrics the module does not keep),
    drawn lazily (one epoch's gathered samples in memory at a time). Not a collection, so
    Lightning hands it to the training step as it is; :meth:`ClientModule.training_step` moves
    each epoch to the device."""

    def __init__(self, source: ShuffledEpochs, epochs: int):
        self.source, self.epochs = source, epochs

    def __iter__(self):
        for e in range(self.epochs):
            for batches in self.source:
                check_stop()  # a safe point: a pending SIGINT / SIGTERM stops the run here
                yield batches if e == self.epochs - 1 else EarlierEpoch(batches)


class _GroupEpochs:
    """A whole group's local updates as a single training-step item: the clients' local epochs
    one after another; before a client's first epoch it swaps the client in (after collecting the
    previous one: :meth:`_ClientSchedule.start`)."""

    def __init__(self, schedule: _ClientSchedule):
        self.schedule = schedule

    def __iter__(self):
        schedule = self.schedule
        for index in range(len(schedule.tasks)):
            schedule.start(index)
            yield from LocalEpochs(schedule.source(index), schedule.epochs)


class _SourceChain:
    """The group's training data, one item per Lightning epoch: client ``j``'s
    :class:`LocalEpochs` in epoch ``j``, or, when the group is one epoch, a :class:`_GroupEpochs`.
    Lazy, like a DataLoader: Lightning may call ``iter`` more often than it consumes."""

    def __init__(self, schedule: _ClientSchedule, trainer: L.Trainer):
        self.schedule, self.trainer = schedule, trainer

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        if self.schedule.per_epoch:
            yield LocalEpochs(self.schedule.source(self.trainer.current_epoch), self.schedule.epochs)
        else:
            yield _GroupEpochs(self.schedule)


#: Lightning hooks that run once per epoch or per batch: when a callback or the client module
#: implements one, each client gets a Lightning epoch of its own so that they run once per client.
_CLIENT_HOOKS = ("on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end")
_MODULE_BATCH_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def _hooks_per_client(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether a callback of ``trainer`` or ``module`` itself (beyond :class:`ClientModule`)
    implements an epoch or batch hook, which must then see each client."""
    if any(is_overridden(hook, cb, L.Callback) for cb in trainer.callbacks for hook in _CLIENT_HOOKS):
        return True
    base = ClientModule if isinstance(module, ClientModule) else L.LightningModule
    return any(is_overridden(hook, module, base) for hook in _CLIENT_HOOKS + _MODULE_BATCH_HOOKS)


class LocalRunner:
    """Runs clients' local updates and global evaluations.

    Args:
        module: the LightningModule of the local objective (reused for every client), or, in
            heterogeneous-model runs, a dict ``architecture -> LightningModule`` (one reusable
            module per architecture; a task runs on ``modules[task.arch]``).
        datamodule: a set-up ``FederatedDataModule``.
        trainer_kwargs: ``lightning.Trainer`` keyword arguments (``max_epochs`` = local epochs),
            merged over :data:`DEFAULT_LOCAL`.
        seed: run seed; client ``c`` in round ``r`` draws its batch order and any other local
            randomness from ``derive_seed(seed, r, c)``.
        callbacks: Lightning callbacks for the local Trainer. In a group fit, ``on_fit_start`` /
            ``on_train_start`` run once per group, the epoch and batch hooks once per client (a
            callback that implements one gives each client a Lightning epoch and step of its own,
            at about half a millisecond per client) and the step hooks (``on_before_backward``,
            ``on_before_optimizer_step``, ...) once per mini-batch.

    Attributes:
        client_state_source: ``cid -> client state`` for a task whose ``client_state`` is
            ``None``, asked just before that client trains (so a round never holds every
            participant's state at once); ``None``: the task's own. Set by the trainer for one
            round when its runner trains in this process.
        result_sink: called with each successful :class:`ClientResult` as soon as its client is
            done (before the next client trains); it may take the result's tensors (``state``,
            ``payload``, ``client_state``) and leave them empty. ``None``: results are returned
            whole. Set by the trainer for one round when its runner trains in this process.
        state_loaded: called with each task once the net holds its ``state``, before the client
            trains; it may take the state's tensors away (e.g. park them on disk) until that
            client's result is sunk or the round ends. ``None``: nothing is called. Set by the
            trainer for one round when its runner trains in this process.
    """

    client_state_source = None
    result_sink = None
    state_loaded = None

    def __init__(self, module: L.LightningModule | dict[str, L.LightningModule], datamodule,
                 trainer_kwargs: dict[str, Any] | None,
                 seed: int, callbacks: list | None = None):
        quiet_lightning()
        cheap_cuda_probe()
        self.trainer_kwargs, self.callbacks = dict(trainer_kwargs or {}), list(callbacks or [])
        kwargs = {**DEFAULT_LOCAL, **(trainer_kwargs or {})}
        self._plain_kwargs = dict(kwargs)
        # Client modules optimize manually (one Lightning step = one local epoch), so Lightning
        # refuses these two; the module applies them itself (ClientModule.set_local_options).
        local_options = {key: kwargs.pop(key) for key in _MODULE_OPTIONS if key in kwargs}
        self.local_epochs = int(kwargs["max_epochs"])
        if callbacks:
            kwargs["callbacks"] = list(callbacks) + list(kwargs.get("callbacks") or [])
        self.trainer = L.Trainer(**kwargs)
        quiet_lightning()
        self.modules: dict[str | None, L.LightningModule] = dict(module) if isinstance(module, dict) else {None: module}
        for m in self.modules.values():
            m.set_local_options(**local_options)
        self.datamodule = datamodule
        self.seed = int(seed)

    def plain_trainer_kwargs(self) -> dict[str, Any]:
        """The per-client ``lightning.Trainer`` arguments of the general path (a user's own
        LightningModule under automatic optimization): ``trainer.local`` over
        :data:`DEFAULT_LOCAL`, gradient accumulation and clipping included."""
        return dict(self._plain_kwargs)

    def fit(self, task: ClientTask, rnd: int) -> ClientResult | ClientFailure:
        """Local update of client ``task.cid``: :meth:`fit_many` of one task."""
        return self.fit_many([task], rnd)[0]

    def fit_many(self, tasks: list[ClientTask], rnd: int) -> list[ClientResult | ClientFailure]:
        """Local updates of ``tasks`` (in order), as few ``Trainer.fit`` calls as possible: one
        per architecture. Each outcome is the trained state (CPU) or a :class:`ClientFailure` if
        that client's training raised an ``Exception`` or produced a non-finite loss or weight;
        the clients after a failed one still train (interrupts such as KeyboardInterrupt
        propagate)."""
        outcomes: dict[int, ClientResult | ClientFailure] = {}
        for arch in dict.fromkeys(t.arch for t in tasks):
            todo = [i for i, t in enumerate(tasks) if t.arch == arch]
            while todo:
                done = self._fit_group([tasks[i] for i in todo], rnd)
                outcomes.update(zip(todo, done))
                todo = todo[len(done):]
        return [outcomes[i] for i in range(len(tasks))]

    def _fit_group(self, tasks: list[ClientTask], rnd: int) -> list[ClientResult | ClientFailure]:
        """One fit over ``tasks`` (one architecture). On an exception, returns the outcomes up
        to and including the failed client; the caller fits the rest again."""
        module = self.modules[tasks[0].arch]
        if isinstance(module, PlainClient):  # a user's own LightningModule: one plain fit per client
            from flcore.plain_local import fit_plain  # (it builds on this module)
            return fit_plain(self, module, tasks, rnd)
        per_epoch = _hooks_per_client(self.trainer, module)
        schedule = _ClientSchedule(self, tasks, rnd, per_epoch)
        rewind_fit_loop(self.trainer, len(tasks) if per_epoch else 1)
        self.trainer.callbacks.append(schedule)
        try:
            self.trainer.fit(module, train_dataloaders=_SourceChain(schedule, self.trainer))
        except Exception as err:  # one client's crash must not end the run (policy: trainer)
            failed = tasks[max(schedule.current, 0)]
            text = str(err).strip().splitlines()
            del schedule.outcomes[max(schedule.current, 0):]
            schedule.outcomes.append(
                ClientFailure(failed.cid, failed.slot, f"{type(err).__name__}: {text[0][:200] if text else ''}"))
        finally:
            self.trainer.callbacks.remove(schedule)
            module.zero_grad(set_to_none=True)  # gradients are dead now: free them (one model copy)
        return schedule.outcomes

    @torch.no_grad()
    def sample_correct(self, state, indices: np.ndarray, arch: str | None = None) -> Tensor:
        """``(len(indices),)`` bool: whether ``state`` (of architecture ``arch``) classifies each
        global test sample ``indices`` (:meth:`FederatedDataModule.test_samples`) correctly (eval mode, batches of
        ``eval_batch_size``; for per-client accuracies, where one pass over the union of the
        clients' test sets replaces one Lightning test loop per client)."""
        module = self.modules[arch]
        module.net.load_state_dict(state)
        was = module.training
        module.eval()
        device = module.device
        idx = torch.as_tensor(indices, dtype=torch.long)
        out = []
        for chunk in idx.split(self.datamodule.eval_batch_size):
            x, y = (t.to(device) for t in self.datamodule.test_samples(chunk))
            out.append((module(x).argmax(1) == y).cpu())
        module.train(was)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)

    def evaluate(self, state, stage: str = "test", arch: str | None = None, dataloader=None) -> dict[str, float]:
        """Accuracy and loss (``{"acc": fraction, "loss": mean cross-entropy}``) of ``state`` (of
        architecture ``arch``) on ``dataloader`` (default: the global test set), through
        ``Trainer.test`` (``stage="test"``) or ``Trainer.validate``; TorchMetrics, sample-weighted."""
        module = self.modules[arch]
        module.net.load_state_dict(state)
        run = self.trainer.test if stage == "test" else self.trainer.validate
        loader = dataloader if dataloader is not None else self.datamodule.test_dataloader()
        out = run(module, dataloaders=loader, verbose=False)
        prefix = "test_" if stage == "test" else "val_"  # the module logs f"{split}_acc" for its stage
        return {k.removeprefix(prefix): float(v) for k, v in out[0].items()}
