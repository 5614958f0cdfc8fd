"""Checks of a client module's network against the data, before training: it takes the data's
inputs and returns one score per class, and (FedIN) the architectures' exchanged features agree.
Each raises :class:`~flcore.errors.ConfigError` with one line naming the field."""

from __future__ import annotations

import lightning as L
import torch

from flcore.errors import ConfigError, first_line
from lightning_modules.models.protocols import IntermediateNet
from lightning_modules.plain import PlainClient

__all__ = ["check_net", "check_feature_shapes"]


def check_feature_shapes(modules: dict[str, L.LightningModule], datamodule) -> None:
    """FedIN exchanges (s_in, s_out) between architectures: their shapes must agree.

    Raises:
        ConfigError: a net without ``extractor`` / ``intermediate``, or differing shapes.
    """
    shapes = {}
    for name, module in modules.items():
        net = module.net
        if not isinstance(net, IntermediateNet):
            raise ConfigError(f"model.net: FedIN needs extractor / intermediate / classifier sub-modules "
                              f"(e.g. lightning_modules.models.HeteroResNet); {type(net).__name__} has none")
        was = net.training
        net.eval()
        with torch.no_grad():
            s_in = net.extractor(datamodule.test_samples([0, 1])[0])
            shapes[name] = (tuple(s_in.shape[1:]), tuple(net.intermediate(s_in).shape[1:]))
        net.train(was)
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{a} s_in {i} s_out {o}" for a, (i, o) in shapes.items())
        raise ConfigError(f"model.net: FedIN exchanges features, but their shapes differ between architectures: {detail}")


def check_net(model: L.LightningModule, datamodule) -> None:
    """The net takes the data's inputs (``(B, *input_shape)``) and returns ``(B, num_classes)``;
    a net with BatchNorm needs mini-batches of at least 2.

    Raises:
        ConfigError: ``model.net`` (input shape, a zero-size parameter), ``model.net.num_classes``
            or ``data.batch_size`` (``model`` for a user's own LightningModule).
    """
    if datamodule.batch_size == 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(f"data.batch_size: 1 cannot train the BatchNorm layers of model.net ({type(model.net).__name__}); "
                          f"use a batch size >= 2")
    field = "model" if isinstance(model, PlainClient) else "model.net"
    empty = next((name for name, p in model.net.named_parameters() if p.numel() == 0), None)
    if empty is not None:
        raise ConfigError(f"{field}: parameter {empty} has zero size (a width, channel or class count of 0); "
                          f"every layer needs a size >= 1")
    x = datamodule.test_samples([0, 1])[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, NotImplementedError) as err:
        hint = ("forward must map the data's input batch to (B, classes) scores" if field == "model"
                else "set in_channels / image_size to match data")
        raise ConfigError(
            f"{field}: cannot take the data's inputs of shape {tuple(x.shape[1:])} "
            f"({hint}): {first_line(err)[:100]}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != datamodule.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if field == "model":
            raise ConfigError(f"model: forward must return (B, {datamodule.num_classes}) class scores for the data's "
                              f"{datamodule.num_classes} classes, got {shape}")
        raise ConfigError(
            f"model.net.num_classes: must equal the data's {datamodule.num_classes} classes, "
            f"net outputs shape {shape}"
        )
