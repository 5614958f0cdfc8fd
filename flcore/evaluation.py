"""Evaluation of the global model(s): on the global test (and validation) set, and on every
client's held-out local data.

A run's models are ``{architecture: state_dict}``; a single-model run is ``{None: state}``.
Metric names: ``global/<split>_acc`` and ``global/<split>_loss``, per architecture
``global/<split>_acc/<arch>``; the unweighted mean over architectures is the plain name.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from flcore.checkpoint import load_checkpoint, resolve_ckpt_path
from flcore.checks import check_architectures, check_datamodule, check_family
from flcore.family import family_modules
from flcore.errors import ConfigError
from flcore.local import LocalRunner
from flcore.metric_names import GLOBAL, global_metric
from lightning_modules.plain import as_client

__all__ = ["evaluate_global", "evaluate_clients", "client_accuracy_stats", "classes_from_data",
           "evaluate_checkpoint"]


def evaluate_global(runner: LocalRunner, models: dict[str | None, dict[str, torch.Tensor]], stage: str = "test",
                    with_val: bool = True) -> dict[str, float]:
    """``global/test_acc`` and ``global/test_loss`` (accuracy as a fraction, mean cross-entropy),
    and ``global/val_acc`` / ``global/val_loss`` when the data has a validation set and
    ``with_val``; with several architectures, those of each (``global/test_acc/<arch>``, ...) and
    their unweighted mean."""
    splits = [("test", runner.datamodule.test_dataloader)]
    if with_val and runner.datamodule.has_val:
        splits.append(("val", runner.datamodule.val_dataloader))
    hetero = None not in models
    out: dict[str, float] = {}
    for split, loader in splits:
        for arch, arch_state in models.items():
            ev = runner.evaluate(arch_state, stage, arch=arch, dataloader=loader())
            out[global_metric(split, "acc", arch)], out[global_metric(split, "loss", arch)] = ev["acc"], ev["loss"]
        if hetero:
            for key in (f"{split}_acc", f"{split}_loss"):
                vals = [v for k, v in out.items() if k.startswith(f"{GLOBAL}{key}/")]
                out[f"{GLOBAL}{key}"] = sum(vals) / len(vals)
    return out


def evaluate_clients(runner: LocalRunner, models: dict[str | None, dict[str, torch.Tensor]],
                     client_arch: list[str | None], test_size: int,
                     local_bn: dict[int, dict[str, torch.Tensor]] | None = None) -> np.ndarray:
    """``(num_clients,)`` accuracies of the global model(s) on each client's local test data
    (:meth:`FederatedDataModule.client_test_sets` with ``test_size`` samples per client; NaN for a
    client without test data). Each client uses its architecture's model (``client_arch[c]``,
    ``None`` for every client of a homogeneous run); a client with local BatchNorm entries (``local_bn``, FedBN) is
    evaluated with them."""
    sets = runner.datamodule.client_test_sets(test_size)
    accs = np.full(len(sets), np.nan)
    local_bn = local_bn or {}
    for c, entries in local_bn.items():
        if len(sets[c]):
            own = {**models[client_arch[c]], **entries}
            accs[c] = float(runner.sample_correct(own, sets[c], arch=client_arch[c]).float().mean())
    for arch, arch_state in models.items():
        clients = [c for c in range(len(sets)) if client_arch[c] == arch and c not in local_bn]
        union, inverse = np.unique(np.concatenate([sets[c] for c in clients] or [np.zeros(0, np.int64)]),
                                   return_inverse=True)
        correct = runner.sample_correct(arch_state, union, arch=arch).numpy()[inverse]
        start = 0
        for c in clients:
            n = len(sets[c])
            if n:
                accs[c] = correct[start:start + n].mean()
            start += n
    return accs


def client_accuracy_stats(accs: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation, minimum and worst-10 % mean (the mean over the
    ``ceil(0.1 * n)`` lowest) of per-client accuracies, ignoring NaN (clients without test data)."""
    a = np.sort(np.asarray(accs, dtype=float)[~np.isnan(accs)])
    if not len(a):
        return {}
    worst = a[: max(1, math.ceil(0.1 * len(a)))]
    return {"clients/test_acc_mean": float(a.mean()), "clients/test_acc_std": float(a.std()),
            "clients/test_acc_min": float(a[0]), "clients/test_acc_worst10": float(worst.mean())}


def classes_from_data(modules: dict, datamodule) -> None:
    """Evaluate a net that declares no ``num_classes`` over the data's classes (its ``(B, C)``
    outputs are checked against them before training)."""
    for module in modules.values():
        if module.num_classes is None:
            module.set_num_classes(datamodule.num_classes)


def evaluate_checkpoint(trainer, model, datamodule, ckpt_path: str | None, stage: str) -> dict[str, float]:
    """``flcore validate|test``: the global model(s) of a checkpoint of ``trainer``'s run
    (``"last"`` or ``None``: the newest under ``log_dir/name``) on the global test set.

    Returns:
        ``{"test_acc": float, "test_loss": float, ...}`` (per architecture too in heterogeneous
        runs), also printed on one line.

    Raises:
        ConfigError: no such checkpoint, data that cannot be set up, or a checkpoint that does not
            match the config's strategy or model.
    """
    check_datamodule(datamodule)
    ckpt = load_checkpoint(resolve_ckpt_path(ckpt_path or "last", Path(trainer.log_dir) / trainer.name))
    try:
        datamodule.setup(stage)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    model = as_client(model)
    names, client_arch = [None], [None] * datamodule.num_clients  # a family of one
    if trainer.architectures is not None or trainer.client_architectures is not None:
        names, client_arch = check_architectures(trainer, model, datamodule)
    trainer._modules, trainer._client_arch = family_modules(model, names), client_arch
    check_family(trainer, trainer._modules, datamodule)
    trainer.strategy.bind(client_arch)
    classes_from_data(trainer._modules, datamodule)
    runner = LocalRunner(trainer._modules, datamodule, trainer.local, 0, trainer.callbacks)
    try:
        result = evaluate_global(runner, trainer.strategy.global_models(trainer.strategy.upgrade_state(ckpt["strategy_state"])), stage, with_val=False)
        result = {k.removeprefix(GLOBAL): v for k, v in result.items()}
    except (KeyError, RuntimeError) as err:
        raise ConfigError(
            f"ckpt_path: checkpoint does not match this config's strategy / model ({str(err).splitlines()[0][:100]})"
        ) from None
    print(f"flcore {stage}: round {ckpt['round']}  " + "  ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return result
