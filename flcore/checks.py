"""Checks that run before any training: each raises :class:`~flcore.errors.ConfigError` with one
line that names the field and what is allowed.

:func:`check_run` is the whole set for ``FederatedTrainer.fit``: the trainer's own fields, the
data (set up here, so a missing file or an empty client is reported before a run folder exists),
the strategy's hyper-parameters against the federation, the pairing of the strategy with the local
objective (:func:`check_pairing`), the per-client Trainer settings, the network against the data's
inputs and classes, and the heterogeneous-model setup; :func:`check_family` checks the
per-architecture modules once the trainer has built them. Checks build nothing.
"""

from __future__ import annotations

import importlib
import inspect
import os
import tempfile
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from flcore.batchnorm import BN_POLICIES, bn_entries
from flcore.compat import precision_choices
from flcore.config_record import dotted_name
from flcore.errors import ConfigError, first_line
from flcore.lightning_env import quiet_lightning
from flcore.local import DEFAULT_LOCAL
from flcore.net_checks import check_feature_shapes, check_net
from flcore.strategies.base import HeterogeneousStrategy, Strategy
from flcore.strategies.fedprox import FedProx
from flcore.strategies.moon import Moon
from lightning_modules.client import ClientModule
from lightning_modules.dp import local_dp_refusal
from lightning_modules.models.protocols import ModelFamily
from lightning_modules.plain import PlainClient

if TYPE_CHECKING:
    from flcore.trainer import FederatedTrainer

__all__ = ["check_datamodule", "check_run", "check_local", "check_log_dir", "check_optimizer", "check_pairing", "check_architectures", "check_family", "dotted_name"]


def _resolve(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_pairing(strategy: Strategy, model: L.LightningModule) -> None:
    """Refuse a strategy and a local objective that do not make one method.

    ``strategy.client_objective`` (e.g. SCAFFOLD's server needs ``ScaffoldModule``) and
    ``model.server_strategies`` (e.g. ``ScaffoldModule`` needs ``Scaffold``) are both checked, by ``isinstance``, so subclasses count.

    A user's own LightningModule (:class:`PlainClient`) pairs with every strategy whose
    :meth:`Strategy.client_terms` are defined; they are set on the module here.

    Raises:
        ConfigError: ``trainer.strategy: ... needs model.class_path ...`` or
            ``model.class_path: ... needs trainer.strategy.class_path ...``, or a strategy whose
            objective cannot wrap a user's module.
    """
    if isinstance(model, PlainClient):
        try:
            terms = strategy.client_terms()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if terms is None:
            raise ConfigError(f"trainer.strategy: {dotted_name(strategy)} needs its own client objective "
                              f"(model.class_path {strategy.client_objective}); a user's own LightningModule runs with "
                              f"strategies whose client objective is the module's loss or a term on it (FedAvg, FedProx, MOON, "
                              f"SCAFFOLD, FedCross, FedMR, CluSamp, the robust rules, ...)")
        for term in terms:
            try:
                term.check_module(model.net)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        model.terms = terms
        return
    need = strategy.client_objective
    if isinstance(strategy, (FedProx, Moon)) and strategy.mu is not None:
        what = "proximal" if isinstance(strategy, FedProx) else "contrastive"
        raise ConfigError(f"trainer.strategy.init_args.mu: set the {what} weight once, in model.init_args.mu of "
                          f"{dotted_name(model)}; the strategy's mu is for a user's own LightningModule")
    if need is not None and not isinstance(model, _resolve(need)):
        raise ConfigError(f"trainer.strategy: {dotted_name(strategy)} needs model.class_path {need} (or a subclass), "
                          f"got model.class_path {dotted_name(model)}")
    allowed = model.server_strategies if isinstance(model, ClientModule) else ()
    if allowed and not any(isinstance(strategy, _resolve(s)) for s in allowed):
        raise ConfigError(f"model.class_path: {dotted_name(model)} needs trainer.strategy.class_path "
                          f"{' or '.join(allowed)}, got {dotted_name(strategy)}")


#: ``trainer.local`` keys flcore sets itself: one Lightning epoch and step per client, no
#: validation loop, flcore's own logging and checkpoints.
_CONTROLLED = {
    "logger": "flcore logs to TensorBoard itself (trainer.log_dir)",
    "enable_checkpointing": "flcore checkpoints the federated state itself (trainer.checkpoint_every)",
    "callbacks": "set trainer.callbacks instead",
    **{key: "one Lightning epoch and step carry a client's local update; set the local epochs with trainer.local.max_epochs"
       for key in ("min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches", "overfit_batches",
                   "fast_dev_run", "reload_dataloaders_every_n_epochs", "use_distributed_sampler", "barebones")},
    **{key: "local updates run no validation loop (the global model is evaluated by trainer.eval_every)"
       for key in ("limit_val_batches", "val_check_interval", "check_val_every_n_epoch", "num_sanity_val_steps")},
}


def _available_accelerators() -> list[str]:
    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found += ["gpu", "cuda"]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found += ["mps"]
    return found


def check_local(local: dict[str, Any]) -> None:
    """``trainer.local`` (the per-client ``lightning.Trainer`` arguments), checked against
    ``lightning.Trainer``'s signature and this machine before any training: known keys only, none
    that flcore sets itself, one process on one device (parallel clients come from
    ``trainer.executor``), an accelerator and a precision this machine has, accumulation >= 1,
    clipping >= 0; then Lightning itself builds a Trainer from them.

    Raises:
        ConfigError: ``trainer.local.<key>: ...``, naming the allowed values.
    """
    known = [k for k in inspect.signature(L.Trainer.__init__).parameters if k != "self"]
    for key in local:
        if key not in known:
            allowed = ", ".join(k for k in known if k not in _CONTROLLED)
            raise ConfigError(f"trainer.local.{key}: not a lightning.Trainer argument; allowed: {allowed}")
        if key in _CONTROLLED and local[key] is not None and local[key] != DEFAULT_LOCAL.get(key, None):
            raise ConfigError(f"trainer.local.{key}: set by flcore ({_CONTROLLED[key]}), got {local[key]!r}")
    devices = local.get("devices", 1)
    one = devices in (1, "1") or (isinstance(devices, (list, tuple)) and len(devices) == 1)
    if not one:
        raise ConfigError(f"trainer.local.devices: each local update runs in one process on one device: 1 or a "
                          f"one-element list like [0] (parallel clients: trainer.executor), got {devices!r}")
    if local.get("num_nodes", 1) != 1:
        raise ConfigError(f"trainer.local.num_nodes: must be 1 (parallel clients and machines: trainer.executor, "
                          f"e.g. flcore.executors.RayExecutor), got {local['num_nodes']!r}")
    strategy = local.get("strategy", "auto")
    if strategy not in ("auto", "single_device"):
        raise ConfigError(f"trainer.local.strategy: must be one of ['auto', 'single_device'] (one process per local "
                          f"update; parallel clients: trainer.executor), got {strategy!r}")
    accelerator = local.get("accelerator", "auto")
    available = _available_accelerators()
    if isinstance(accelerator, str) and accelerator not in available:
        raise ConfigError(f"trainer.local.accelerator: {accelerator!r} is not available on this machine; "
                          f"allowed here: {available}")
    precision = local.get("precision", "32-true")
    allowed_precision = precision_choices()
    allowed_precision = [p for p in allowed_precision if not p.startswith("transformer-engine")]
    gpu = torch.cuda.is_available() and accelerator != "cpu"
    if not gpu:
        allowed_precision = [p for p in allowed_precision if not p.startswith("16")]
    aliases = {"32": "32-true", 32: "32-true", "64": "64-true", 64: "64-true", "bf16": "bf16-mixed",
               "16": "16-mixed", 16: "16-mixed"}
    if aliases.get(precision, precision) not in allowed_precision:
        why = "" if gpu else " (fp16 needs a GPU: Lightning would switch to bf16 on a CPU)"
        raise ConfigError(f"trainer.local.precision: must be one of {allowed_precision} on this machine{why}, got {precision!r}")
    accumulate = local.get("accumulate_grad_batches", 1)
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise ConfigError(f"trainer.local.accumulate_grad_batches: must be an integer >= 1, got {accumulate!r}")
    clip = local.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or isinstance(clip, bool) or clip < 0):
        raise ConfigError(f"trainer.local.gradient_clip_val: must be a number >= 0 or null, got {clip!r}")
    algorithm = local.get("gradient_clip_algorithm", "norm")
    if algorithm not in ("norm", "value"):
        raise ConfigError(f"trainer.local.gradient_clip_algorithm: must be one of ['norm', 'value'], got {algorithm!r}")
    kwargs = {k: v for k, v in {**DEFAULT_LOCAL, **local}.items()
              if k not in ("accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")}
    quiet_lightning()
    try:  # whatever else Lightning refuses (profiler names, plugins, ...), before training
        L.Trainer(**kwargs)
    except Exception as err:  # Lightning raises several types; each is one bad setting
        raise ConfigError(f"trainer.local: lightning.Trainer refuses these settings: {first_line(err)}") from None


def check_optimizer(model: L.LightningModule) -> None:
    """Build the local optimizer once (as every client will), so that a bad hyper-parameter
    (negative learning rate or momentum, ...) stops the run before training.

    Raises:
        ConfigError: ``model.optimizer: <the optimizer's message>``.
    """
    try:
        model.configure_optimizers()
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model.optimizer: {first_line(err)}") from None


def _check_fields(trainer: FederatedTrainer) -> None:
    for field, value, low in (("rounds", trainer.rounds, 1), ("eval_every", trainer.eval_every, 1),
                              ("clients_per_round", trainer.clients_per_round, 1),
                              ("checkpoint_every", trainer.checkpoint_every, 0),
                              ("client_eval_every", trainer.client_eval_every, 0),
                              ("client_test_size", trainer.client_test_size, 1),
                              ("model_stats_every", trainer.model_stats_every, 0),
                              ("keep_checkpoints", trainer.keep_checkpoints, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"trainer.{field}: must be an integer >= {low}, got {value!r}")
    if trainer.bn_policy not in BN_POLICIES:
        raise ConfigError(f"trainer.bn_policy: must be one of {list(BN_POLICIES)}, got {trainer.bn_policy!r}")
    if trainer.on_client_failure not in ("drop", "raise"):
        raise ConfigError(f"trainer.on_client_failure: must be one of ['drop', 'raise'], got {trainer.on_client_failure!r}")
    if trainer.checkpoint_interval_s is not None and not trainer.checkpoint_interval_s > 0:
        raise ConfigError(f"trainer.checkpoint_interval_s: must be > 0 seconds or null, got {trainer.checkpoint_interval_s!r}")
    mb = trainer.client_state_mb
    if mb is not None and (isinstance(mb, bool) or not isinstance(mb, (int, float)) or not mb >= 0):
        raise ConfigError(f"trainer.client_state_mb: must be a number of MiB >= 0 or null (no budget), got {mb!r}")
    if trainer.max_time_s is not None and not trainer.max_time_s > 0:
        raise ConfigError(f"trainer.max_time_s: must be > 0 seconds or null, got {trainer.max_time_s!r}")
    epochs = trainer.local.get("max_epochs", 5)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(f"trainer.local.max_epochs: local epochs must be an integer >= 1, got {epochs!r}")
    check_local(trainer.local)


def check_datamodule(datamodule) -> None:
    """``datamodule`` is a federated datamodule (it has a partition into clients).

    Raises:
        ConfigError: ``data`` missing, or a plain ``LightningDataModule`` / other object (the
            message says how to wrap it: :class:`datamodules.FromDataModule`).
    """
    from datamodules.base import FederatedDataModule

    if isinstance(datamodule, FederatedDataModule):
        return
    if datamodule is None:
        raise ConfigError("data: a federated datamodule is required (e.g. datamodules.FashionMNIST, or your own "
                          "data through datamodules.FromDatasets / FromDataModule)")
    name = type(datamodule).__name__
    if isinstance(datamodule, L.LightningDataModule):
        raise ConfigError(f"data: {name} is a plain LightningDataModule with no partition into clients; wrap it: "
                          f"datamodules.FromDataModule(datamodule=..., num_clients=N, partition=...) (YAML: "
                          f"data.class_path: datamodules.FromDataModule, data.init_args.datamodule: your class)")
    raise ConfigError(f"data: {name} is not a datamodule; use datamodules.FromDatasets(train=..., test=..., "
                      f"num_clients=N, partition=...) for torch Datasets")


def check_log_dir(log_dir: str) -> None:
    """``log_dir`` exists (it is created) and takes files; no run folder is made here.

    Raises:
        ConfigError: ``trainer.log_dir: ... is not a writable folder (reason)``.
    """
    try:
        os.makedirs(log_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=log_dir):
            pass
    except OSError as err:
        raise ConfigError(f"trainer.log_dir: {log_dir} is not a writable folder ({err.strerror or err})") from None


def check_run(trainer: FederatedTrainer, model: L.LightningModule, datamodule
              ) -> tuple[list[str | None], list[str | None]]:
    """Every check that can fail before training, but those of the per-architecture modules
    (:func:`check_family`, once they are built). Sets up ``datamodule``.

    Returns:
        ``(architectures, client_arch)``: the run's architecture names and each client's
        architecture; ``([None], [None] * num_clients)`` in a homogeneous run (a family of one).

    Raises:
        ConfigError: naming the field, before any run folder or checkpoint is written.
    """
    _check_fields(trainer)
    check_log_dir(trainer.log_dir)
    try:
        datamodule.setup("fit")
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    n = datamodule.num_clients
    if trainer.clients_per_round > n:
        raise ConfigError(f"trainer.clients_per_round: must be in [1, data.num_clients={n}], got {trainer.clients_per_round}")
    try:
        trainer.strategy.validate(n, trainer.clients_per_round)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_pairing(trainer.strategy, model)
    check_optimizer(model)
    try:
        model.check_local_config({**DEFAULT_LOCAL, **trainer.local})
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_net(model, datamodule)
    if trainer.bn_policy != "average" and not bn_entries(model.net, trainer.bn_policy):
        raise ConfigError(f"trainer.bn_policy: {trainer.bn_policy!r} keeps BatchNorm entries on the clients, but model.net "
                          f"({type(model.net).__name__}) has no BatchNorm layers; use 'average'")
    try:
        trainer.executor.check()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if trainer.local_dp is not None:
        reason = local_dp_refusal(model, trainer.local_dp, {**DEFAULT_LOCAL, **trainer.local},
                                  datamodule.client_batches(0))
        if reason is not None:
            raise ConfigError(reason)
    if trainer.architectures is not None or trainer.client_architectures is not None:
        return check_architectures(trainer, model, datamodule)
    if isinstance(trainer.strategy, HeterogeneousStrategy) and not trainer.strategy.runs_homogeneous:
        raise ConfigError(f"trainer.architectures: {type(trainer.strategy).__name__} is a heterogeneous-model strategy; "
                          f"list the clients' architectures, e.g. [resnet10, resnet14, resnet18, resnet22, resnet26]")
    return [None], [None] * n


def check_architectures(trainer: FederatedTrainer, model, datamodule) -> tuple[list[str], list[str]]:
    """The run's architecture names and each client's architecture (FedIN paper, Sec. 3).

    Raises:
        ConfigError: a net that is no model family, unknown or missing names, a per-client list
            of the wrong length, a strategy that is not a :class:`HeterogeneousStrategy`, or a
            strategy that distils on public data without any (``data.public_size``).
    """
    names = list(trainer.architectures if trainer.architectures is not None
                 else dict.fromkeys(trainer.client_architectures or []))
    if not (isinstance(model.net, ModelFamily) and isinstance(model, ClientModule)):
        raise ConfigError(f"model.net: {type(model.net).__name__} is not a model family; trainer.architectures needs "
                          f"one such as lightning_modules.models.HeteroResNet")
    if not names:
        raise ConfigError("trainer.architectures: must list at least one architecture")
    for name in names:
        if name not in model.net.ARCHITECTURES:
            raise ConfigError(f"trainer.architectures: must be names from {list(model.net.ARCHITECTURES)}, "
                              f"got {name!r}")
    n = datamodule.num_clients
    if trainer.client_architectures is not None:
        if len(trainer.client_architectures) != n:
            raise ConfigError(f"trainer.client_architectures: must give one architecture per client "
                              f"(data.num_clients={n}), got {len(trainer.client_architectures)}")
        for name in trainer.client_architectures:
            if name not in names:
                raise ConfigError(f"trainer.client_architectures: must be names from {names}, got {name!r}")
        client_arch = list(trainer.client_architectures)
    else:
        client_arch = [names[c % len(names)] for c in range(n)]
    if not isinstance(trainer.strategy, HeterogeneousStrategy):
        raise ConfigError(f"trainer.strategy: {type(trainer.strategy).__name__} aggregates one architecture; with "
                          f"trainer.architectures use flcore.strategies.HeteroFedAvg or flcore.strategies.FedIN")
    try:
        trainer.strategy.validate_architectures(names)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if trainer.strategy.needs_public_data and datamodule.x_public is None:
        raise ConfigError(f"data.public_size: {type(trainer.strategy).__name__} distils on unlabelled server-held data; "
                          f"set a fraction in (0, 1) or a count >= 1, e.g. 0.05")
    return names, client_arch


def check_family(trainer: FederatedTrainer, modules: dict[str | None, L.LightningModule], datamodule) -> None:
    """The per-architecture modules of a heterogeneous run (:func:`flcore.family.family_modules`)
    take the data, and (feature-exchanging strategies) their features agree. A homogeneous
    run's one module was checked by :func:`check_run`.

    Raises:
        ConfigError: as :func:`check_net` and :func:`check_feature_shapes`.
    """
    if list(modules) == [None]:
        return
    for module in modules.values():
        check_net(module, datamodule)
    if trainer.strategy.exchanges_features:
        check_feature_shapes(modules, datamodule)
