"""Local updates of a user's own LightningModule (:class:`lightning_modules.plain.PlainClient`).

Each client's local update is one plain ``lightning.Trainer.fit`` of the user's module, with a
fresh Trainer (the ``trainer.local`` arguments, ``max_epochs`` = local epochs) and automatic
optimization, so the module's ``configure_optimizers`` runs once per client (fresh optimizer
state, as in the papers) and its ``training_step``, ``self.log`` calls, TorchMetrics metrics and
hooks behave exactly as outside flcore. The client's data is its shuffled mini-batches, one fresh
order per local epoch, drawn from (run seed, round, client) as on the fast path.

The cost against the fast path (:mod:`flcore.local`): Lightning's per-fit setup and its per-step
loop, per client (``benchmarks/plain_path.py`` measures it).
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from datamodules.base import ShuffledEpochs
from flcore.interrupts import check as check_stop
from flcore.seeding import seed_local_rng  # the fast path's rules, shared
from flcore.weights import check_finite
from flcore.messages import ClientFailure, ClientResult, ClientTask
from flcore.seeding import STREAM_CLIENT, derive_seed

__all__ = ["fit_plain", "EpochBatches"]


class EpochBatches:
    """A client's training data as a DataLoader-like iterable: each pass is one local epoch of
    ``(x (B, ...), y (B,))`` mini-batches in a fresh order from ``source``. The order is drawn
    when a pass yields its first batch, so a pass that Lightning starts and never consumes
    draws nothing. ``len()`` is the mini-batches per epoch."""

    def __init__(self, source: ShuffledEpochs):
        self.source = source

    def __len__(self) -> int:
        return self.source.num_batches

    def __iter__(self):
        for batches in self.source:  # one item: this epoch's list of mini-batches
            for batch in batches:
                check_stop()  # a safe point: a pending SIGINT / SIGTERM stops the run here
                yield batch


class _LastEpochLoss(L.Callback):
    """``train_loss``: the sample-weighted mean of the losses ``training_step`` returned in the
    client's last local epoch (kept as tensors; read once per client)."""

    def __init__(self):
        self.losses: list[tuple[Tensor, int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            size = len(batch[0]) if isinstance(batch, (tuple, list)) and batch and hasattr(batch[0], "__len__") else 1
            self.losses.append((loss.detach(), size))

    def value(self) -> float | None:
        if not self.losses:
            return None
        n = sum(size for _, size in self.losses)
        return float(sum(loss.float() * size for loss, size in self.losses)) / n


def _scalars(metrics: dict) -> dict[str, float]:
    """The scalar entries of Lightning's ``callback_metrics`` as floats."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Tensor) and value.numel() == 1:
            out[key] = float(value)
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def fit_plain(runner, module, tasks: list[ClientTask], rnd: int) -> list[ClientResult | ClientFailure]:
    """Local updates of ``tasks`` (in order) on ``module.net``, the user's LightningModule: per
    client, load the dispatched state, seed the client's randomness from ``derive_seed(seed, rnd,
    cid)``, and run one ``lightning.Trainer(**kwargs).fit`` with the strategy's objective terms
    (``module.terms``), flcore's loss recorder and ``runner.callbacks`` as callbacks.

    Returns:
        one outcome per task: a :class:`ClientResult` (``state``: the module's ``state_dict`` on
        the CPU; ``metrics``: every scalar the module logged, plus ``train_loss`` from the
        returned losses unless the module logs that name itself) or a :class:`ClientFailure` when
        the client's fit raised an ``Exception`` or produced a non-finite value; the clients after
        a failed one still train.
    """
    user: L.LightningModule = module.net
    kwargs = runner.plain_trainer_kwargs()
    outcomes: list[ClientResult | ClientFailure] = []
    for task in tasks:
        check_stop()
        recorder = _LastEpochLoss()
        try:
            user.load_state_dict(task.state)
            if runner.state_loaded is not None:
                runner.state_loaded(task)
            if module.keeps_client_state:  # e.g. SCAFFOLD's c_i, as on the fast path
                source_of = runner.client_state_source
                module.load_client_state(task.client_state if task.client_state is not None or source_of is None
                                         else source_of(task.cid))
            module.current_round = task.rnd
            module.configure_client(task.payload)
            seed = derive_seed(runner.seed, rnd, task.cid, STREAM_CLIENT)
            source = runner.datamodule.client_batches(task.cid, generator=torch.Generator().manual_seed(seed))
            seed_local_rng(seed)
            trainer = L.Trainer(**kwargs, callbacks=[*module.terms, recorder, *runner.callbacks])
            trainer.fit(user, train_dataloaders=EpochBatches(source))
        except Exception as err:  # one client's crash must not end the run (policy: trainer)
            text = str(err).strip().splitlines()
            outcomes.append(ClientFailure(task.cid, task.slot, f"{type(err).__name__}: {text[0][:200] if text else ''}"))
            continue
        metrics = _scalars(trainer.callback_metrics)
        loss = recorder.value()
        if loss is not None:
            metrics.setdefault("train_loss", loss)
        state = {k: v.detach().to("cpu", copy=True) for k, v in user.state_dict().items()}
        user.zero_grad(set_to_none=True)
        result = ClientResult(cid=task.cid, slot=task.slot, state=state, num_samples=source.num_samples,
                              metrics=metrics, payload=module.client_upload(),
                              client_state=module.client_state() if module.keeps_client_state else None)
        outcome = check_finite(result)
        if runner.result_sink is not None and isinstance(outcome, ClientResult):
            runner.result_sink(outcome)
        outcomes.append(outcome)
    return outcomes
