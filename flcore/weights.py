"""A client's weights around its local update: loading them into the reusable net by copying
into its own tensors, checking the result is finite, freeing the finished client's training
buffers."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor

from flcore.compat import has_plain_loading
from flcore.messages import ClientFailure, ClientResult
from lightning_modules.client import ClientModule

__all__ = ["live_state", "load_live", "check_finite", "free_training_buffers"]


def free_training_buffers(module: ClientModule, trainer: L.Trainer) -> None:
    """Drop a finished client's gradients, optimizer moments (and DP-SGD's per-sample gradients):
    the next client starts without them anyway (``zero_grad(set_to_none=True)`` at its first
    step, a cleared optimizer state), so freeing them before its result is copied keeps about two
    model copies (gradient and momentum) off the round's peak memory."""
    module.zero_grad(set_to_none=True)
    for optimizer in trainer.optimizers:
        optimizer.state.clear()
    if module.local_dp is not None:
        module.local_dp.clear()


def live_state(net: torch.nn.Module) -> dict[str, Tensor] | None:
    """``net``'s state tensors themselves (``state_dict(keep_vars=True)``: the parameters and
    persistent buffers, not copies), or ``None`` when loading ``net`` is more than copying
    tensors: a module with load hooks, its own ``_load_from_state_dict`` (other than
    BatchNorm's, which only fills a missing ``num_batches_tracked``) or extra state. Valid until
    the net's tensors are replaced (``.to(device)`` replaces buffers): take it once per fit."""
    if not all(has_plain_loading(m) for m in net.modules()):
        return None
    live = net.state_dict(keep_vars=True)
    return live if all(isinstance(v, Tensor) for v in live.values()) else None


@torch.no_grad()
def load_live(net: torch.nn.Module, live: dict[str, Tensor] | None, state: dict[str, Tensor]) -> None:
    """``net.load_state_dict(state)`` (strict), by copying into the tensors of
    :func:`live_state` when ``state`` has exactly their keys and shapes: one ``copy_`` per
    tensor, without ``load_state_dict``'s module walk (which costs more than a small client's
    step). Anything else goes through ``load_state_dict`` and its errors (``RuntimeError``
    naming missing, unexpected or mis-shaped keys)."""
    if (live is None or live.keys() != state.keys()
            or any(t.shape != state[k].shape for k, t in live.items())):
        net.load_state_dict(state)
        return
    for key, tensor in live.items():
        tensor.copy_(state[key])


def check_finite(result: ClientResult) -> ClientResult | ClientFailure:
    """``result``, or a :class:`~flcore.messages.ClientFailure` naming up to three non-finite
    metrics or state entries (NaN or inf: a diverged local update)."""
    bad = [k for k, v in result.metrics.items() if not math.isfinite(v)]
    # the state is on the CPU: one sum per tensor, added up in Python (cheaper than stacking them);
    # key by key only if the total is not finite (NaN, inf, or an overflowing sum)
    if not math.isfinite(sum(v.sum().item() for v in result.state.values() if v.is_floating_point())):
        bad += [k for k, v in result.state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        return ClientFailure(result.cid, result.slot, f"non-finite {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    return result
