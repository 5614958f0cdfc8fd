"""Process-wide settings for running thousands of ``Trainer.fit`` calls: Lightning's per-fit
warnings and log lines silenced, and a cheap CUDA probe on machines without a device."""

from __future__ import annotations

import logging
import os
import warnings

import torch

__all__ = ["quiet_lightning", "cheap_cuda_probe"]

_NOISE = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*`max_epochs` was not set.*",
    r".*LeafSpec.*",
    r".*Checkpoint directory.*",
    r".*defined a `validation_step` but have no `val_dataloader`.*",
    r".*module\(s\) in eval mode at the start of training.*",  # frozen teachers (MOON, FedGen)
    r".*Full backward hook is firing when gradients are computed with respect to module outputs.*",  # Opacus, 1st layer
)


def quiet_lightning() -> None:
    """Silence per-fit chatter (one local update = one ``fit``; thousands per run)."""
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def cheap_cuda_probe() -> None:
    """On a machine without a CUDA device, make ``torch.cuda.is_available()`` cheap again.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (so that asking does not initialise CUDA
    before a fork); with a CUDA build of PyTorch and no NVIDIA driver, every call then fails to
    ``dlopen`` NVML, about 2 ms, and every ``Trainer.fit`` asks (``isolate_rng``). Without a
    device there is nothing to initialise and no fork to protect, so the variable is set back to
    ``0`` and CUDA's own (cached) answer is used. Machines with a device are left alone."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and not torch.cuda.is_available():
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
