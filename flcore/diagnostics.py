"""Per-round diagnostics of how the models move (``trainer.model_stats_every``) and what a round
sends (``round/bytes_*``): pure functions of the round's tasks, results and middleware models."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from flcore.functional import model_geometry, trained_keys
from flcore.messages import ClientResult, ClientTask, payload_items

__all__ = ["client_drift", "middleware_stats", "payload_bytes", "nonfinite_entries"]


def client_drift(tasks: list[ClientTask], results: list[ClientResult]) -> dict[str, float]:
    """``analysis/client_drift_mean`` and ``_max``: ``||w_k - w_sent||`` (L2 over the trained
    weights) between each client's upload and the model it was sent; empty without results."""
    sent = {(t.cid, t.slot): t.state for t in tasks}
    drifts = []
    for r in results:
        base = sent[(r.cid, r.slot)]
        sq = sum(float((r.state[k].double() - base[k].double()).pow(2).sum()) for k in trained_keys(base))
        drifts.append(math.sqrt(sq))
    return {"analysis/client_drift_mean": float(np.mean(drifts)), "analysis/client_drift_max": float(np.max(drifts))} \
        if drifts else {}


def middleware_stats(models: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Pairwise cosine / distance statistics of the K middleware models and their distances to
    their mean (:func:`flcore.functional.model_geometry`); empty for K < 2."""
    geo = model_geometry(models)
    k = len(models)
    off = ~torch.eye(k, dtype=torch.bool)
    cos, dist = geo["cosine"][off], geo["distance"][off]
    return {"analysis/middleware_cos_min": float(cos.min()), "analysis/middleware_cos_mean": float(cos.mean()),
            "analysis/middleware_dist_mean": float(dist.mean()), "analysis/middleware_dist_max": float(dist.max()),
            "analysis/middleware_to_mean_mean": float(geo["to_mean"].mean()),
            "analysis/middleware_to_mean_max": float(geo["to_mean"].max())} if k > 1 else {}


def payload_bytes(payload: Any) -> int:
    """Bytes of the tensors in a payload (a method pair's dataclass or a dict), nested dicts
    included (client state is a separate field, never counted)."""
    total = 0
    for v in payload_items(payload).values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, dict):
            total += payload_bytes(v)
    return total


def nonfinite_entries(state: Any, prefix: str = "") -> list[str]:
    """The paths (``"models/0/conv1.weight"``) of the floating-point tensors inside ``state``
    (nested dicts and lists, e.g. a strategy's server state) that hold a NaN or an infinity."""
    if isinstance(state, torch.Tensor):
        return [prefix] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        return [p for k, v in state.items() for p in nonfinite_entries(v, f"{prefix}/{k}" if prefix else str(k))]
    if isinstance(state, (list, tuple)):
        return [p for i, v in enumerate(state) for p in nonfinite_entries(v, f"{prefix}/{i}" if prefix else str(i))]
    return []
