"""Local updates through one reusable ``lightning.Trainer`` and one reusable LightningModule."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import lightning as L
import torch

from flcore.seeding import STREAM_CLIENT, derive_seed
from flcore.strategies.base import ClientFailure, ClientResult, ClientTask

__all__ = ["LocalRunner", "DEFAULT_LOCAL", "quiet_lightning"]

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
        callbacks: Lightning callbacks for the local Trainer.
    """

    def __init__(self, module: L.LightningModule | dict[str, L.LightningModule], datamodule,
                 trainer_kwargs: dict[str, Any] | None,
                 seed: int, callbacks: list | None = None):
        quiet_lightning()
        self.trainer_kwargs, self.callbacks = dict(trainer_kwargs or {}), list(callbacks or [])
        kwargs = {**DEFAULT_LOCAL, **(trainer_kwargs or {})}
        if callbacks:
            kwargs["callbacks"] = list(callbacks) + list(kwargs.get("callbacks") or [])
        self.trainer = L.Trainer(**kwargs)
        quiet_lightning()
        self.modules: dict[str | None, L.LightningModule] = dict(module) if isinstance(module, dict) else {None: module}
        self.datamodule = datamodule
        self.seed = int(seed)

    def fit(self, task: ClientTask, rnd: int) -> ClientResult | ClientFailure:
        """Local update of client ``task.cid``: the trained state (CPU), or a
        :class:`ClientFailure` if training raised an ``Exception`` or produced a non-finite loss
        or weight (interrupts such as KeyboardInterrupt propagate)."""
        try:
            result = self._fit(task, rnd)
        except Exception as err:  # one client's crash must not end the run (policy: trainer)
            text = str(err).strip().splitlines()
            return ClientFailure(task.cid, task.slot, f"{type(err).__name__}: {text[0][:200] if text else ''}")
        bad = [k for k, v in result.metrics.items() if not math.isfinite(v)]
        bad += [k for k, v in result.state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            return ClientFailure(task.cid, task.slot, f"non-finite {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
        return result

    def _fit(self, task: ClientTask, rnd: int) -> ClientResult:
        seed = derive_seed(self.seed, rnd, task.cid, STREAM_CLIENT)
        module = self.modules[task.arch]
        module.net.load_state_dict(task.state)
        module.configure_client(task.payload)
        torch.manual_seed(seed)
        loader = self.datamodule.client_dataloader(task.cid, generator=torch.Generator().manual_seed(seed))
        _rewind(self.trainer)
        self.trainer.fit(module, train_dataloaders=loader)
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("train_")}
        state = {k: v.detach().to("cpu", copy=True) for k, v in module.net.state_dict().items()}
        module.zero_grad(set_to_none=True)  # gradients are dead now: free them (one model copy) between clients
        return ClientResult(
            cid=task.cid, slot=task.slot, state=state, num_samples=len(loader.dataset),
            metrics=metrics, payload=module.client_upload(),
        )

    def evaluate(self, state, stage: str = "test", arch: str | None = None) -> dict[str, float]:
        """Test accuracy and loss of ``state`` (of architecture ``arch``) on the global test set
        (TorchMetrics, sample-weighted)."""
        module = self.modules[arch]
        module.net.load_state_dict(state)
        run = self.trainer.test if stage == "test" else self.trainer.validate
        out = run(module, dataloaders=self.datamodule.test_dataloader(), verbose=False)
        return {k.replace("val_", "test_"): float(v) for k, v in out[0].items()}
