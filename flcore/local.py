"""Local updates through one reusable ``lightning.Trainer`` and one reusable LightningModule.

Several clients share one ``Trainer.fit`` call (:meth:`LocalRunner.fit_many`): Lightning's
per-fit setup and teardown (several milliseconds on a CPU, more than a small client's whole local
update in cross-device settings) run once per group of clients instead of once per client. Inside
the fit, Lightning epoch ``j`` is client ``j`` of the group and holds one training step that
carries the client's E local epochs (:class:`LocalEpochs`), so Lightning's per-epoch and per-step
machinery (about half a millisecond) runs once per client; a callback swaps the clients at their
epoch's start (loads the dispatched weights, hands over the payload, clears the optimizer state,
reseeds) and collects each result after it.
Every client's update is the same, bit for bit, as if it had its own fit: its randomness comes
from (run seed, round, client) alone.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from datamodules.base import ShuffledEpochs
from flcore.seeding import STREAM_CLIENT, derive_seed
from flcore.messages import ClientFailure, ClientResult, ClientTask

__all__ = ["LocalRunner", "LocalEpochs", "DEFAULT_LOCAL", "quiet_lightning"]

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

_NOISE = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*`max_epochs` was not set.*",
    r".*LeafSpec.*",
    r".*Checkpoint directory.*",
    r".*defined a `validation_step` but have no `val_dataloader`.*",
    r".*module\(s\) in eval mode at the start of training.*",  # frozen teachers (MOON, FedGen)
)


def quiet_lightning() -> None:
    """Silence per-fit chatter (one local update = one ``fit``; thousands per run)."""
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _rewind(trainer: L.Trainer) -> None:
    """Reset the fit loop's progress so the next ``fit`` runs ``max_epochs`` fresh epochs."""
    loop = trainer.fit_loop
    loop.epoch_progress.reset()
    loop.epoch_loop.batch_progress.reset()
    loop.epoch_loop.automatic_optimization.optim_progress.reset()
    loop.epoch_loop.manual_optimization.optim_step_progress.reset()
    loop.epoch_loop._batches_that_stepped = 0
    trainer.should_stop = False


class _ClientSchedule(L.Callback):
    """Swaps the clients of one group fit at epoch boundaries (see the module docstring)."""

    def __init__(self, runner: LocalRunner, tasks: list[ClientTask], rnd: int):
        self.runner, self.tasks, self.rnd = runner, tasks, rnd
        self.sources: dict[int, ShuffledEpochs] = {}
        self.seeds: dict[int, int] = {}
        self.epochs = runner.local_epochs
        self.current = -1  # index of the client in training
        self.outcomes: list[ClientResult | ClientFailure] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        index = trainer.current_epoch
        self._finish(pl_module)
        self.current = index
        task = self.tasks[index]
        pl_module.net.load_state_dict(task.state)
        if pl_module.keeps_client_state:
            pl_module.load_client_state(task.client_state)
        pl_module.configure_client(task.payload)
        for optimizer in trainer.optimizers:  # a fresh optimizer for every client, as in the papers
            optimizer.state.clear()
        _seed_local_rng(self._seed(index))
        pl_module.on_client_start()

    def _seed(self, index: int) -> int:
        if index not in self.seeds:
            self.seeds[index] = derive_seed(self.runner.seed, self.rnd, self.tasks[index].cid, STREAM_CLIENT)
        return self.seeds[index]

    def source(self, index: int) -> ShuffledEpochs:
        """Client ``index``'s batches, made when its first epoch asks for them (so that a client
        whose data cannot be read fails as itself)."""
        if index not in self.sources:
            task = self.tasks[index]
            self.sources[index] = self.runner.datamodule.client_batches(
                task.cid, generator=torch.Generator().manual_seed(self._seed(index)))
        return self.sources[index]

    def on_train_end(self, trainer, pl_module) -> None:
        self._finish(pl_module)

    def _finish(self, module) -> None:
        """Collect the client in training (after its last epoch) as a result or a failure."""
        if self.current < 0 or len(self.outcomes) > self.current:
            return
        task = self.tasks[self.current]
        state = {k: v.detach().to("cpu", copy=True) for k, v in module.net.state_dict().items()}
        upload = module.client_upload()
        result = ClientResult(cid=task.cid, slot=task.slot, state=state, num_samples=self.sources[self.current].num_samples,
                              metrics=dict(module.train_metrics), payload=upload,
                              client_state=module.client_state() if module.keeps_client_state else None)
        self.outcomes.append(_check_finite(result))


def _check_finite(result: ClientResult) -> ClientResult | ClientFailure:
    bad = [k for k, v in result.metrics.items() if not math.isfinite(v)]
    floats = [v for v in result.state.values() if v.is_floating_point()]
    # one fused test in the common case; key by key only if a sum is not finite (NaN, inf, or overflow)
    if floats and not torch.isfinite(torch.stack([v.sum(dtype=torch.float64) for v in floats])).all():
        bad += [k for k, v in result.state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        return ClientFailure(result.cid, result.slot, f"non-finite {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    return result


def _seed_local_rng(seed: int) -> None:
    """Seed the generators a local update draws from (dropout, augmentation): the CPU generator,
    and CUDA's once it is in use (``torch.manual_seed`` would also queue lazy seeding calls for
    every accelerator backend, which costs more than a small client's step)."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():  # (is_available() would probe the driver on every call)
        torch.cuda.manual_seed_all(seed)


class LocalEpochs:
    """One client's local update as a single training-step item: iterating it yields ``epochs``
    local epochs of ``source``, each a list of ``(x, y)`` mini-batches, drawn lazily (one epoch's
    gathered samples in memory at a time). Not a collection, so Lightning hands it to the training
    step as it is; :meth:`ClientModule.training_step` moves each epoch to the device."""

    def __init__(self, source: ShuffledEpochs, epochs: int):
        self.source, self.epochs = source, epochs

    def __iter__(self):
        for _ in range(self.epochs):
            yield from self.source


class _SourceChain:
    """The group's training data: Lightning epoch ``j`` has one item, client ``j``'s
    :class:`LocalEpochs`. Lazy, like a DataLoader: Lightning may call ``iter`` more often than it
    consumes."""

    def __init__(self, schedule: _ClientSchedule, trainer: L.Trainer):
        self.schedule, self.trainer = schedule, trainer

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield LocalEpochs(self.schedule.source(self.trainer.current_epoch), self.schedule.epochs)


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
            ``on_train_start`` run once per group, the epoch and batch hooks once per client (one
            Lightning epoch and step carry a client's local epochs) and the step hooks
            (``on_before_backward``, ``on_before_optimizer_step``, ...) once per mini-batch.
    """

    def __init__(self, module: L.LightningModule | dict[str, L.LightningModule], datamodule,
                 trainer_kwargs: dict[str, Any] | None,
                 seed: int, callbacks: list | None = None):
        quiet_lightning()
        self.trainer_kwargs, self.callbacks = dict(trainer_kwargs or {}), list(callbacks or [])
        kwargs = {**DEFAULT_LOCAL, **(trainer_kwargs or {})}
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
        schedule = _ClientSchedule(self, tasks, rnd)
        _rewind(self.trainer)
        self.trainer.fit_loop.max_epochs = len(tasks)
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
        global test sample ``x_test[indices]`` correctly (eval mode, batches of
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
            x, y = self.datamodule.x_test[chunk].to(device), self.datamodule.y_test[chunk].to(device)
            out.append((module(x).argmax(1) == y).cpu())
        module.train(was)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)

    def evaluate(self, state, stage: str = "test", arch: str | None = None, dataloader=None) -> dict[str, float]:
        """Accuracy and loss (``test_acc``, ``test_loss``) of ``state`` (of architecture ``arch``)
        on ``dataloader`` (default: the global test set); TorchMetrics, sample-weighted."""
        module = self.modules[arch]
        module.net.load_state_dict(state)
        run = self.trainer.test if stage == "test" else self.trainer.validate
        loader = dataloader if dataloader is not None else self.datamodule.test_dataloader()
        out = run(module, dataloaders=loader, verbose=False)
        return {k.replace("val_", "test_"): float(v) for k, v in out[0].items()}
