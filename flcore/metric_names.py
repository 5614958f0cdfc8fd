"""The names of the metrics a run logs (TensorBoard tags, ``metrics.csv`` columns, ``results.json``
keys), defined once. Per-architecture variants append ``/<arch>`` (:func:`global_metric`)."""

from __future__ import annotations

__all__ = ["TEST_ACC", "TEST_LOSS", "VAL_ACC", "VAL_LOSS", "GLOBAL", "DP_EPSILON", "global_metric"]

GLOBAL = "global/"
TEST_ACC = "global/test_acc"
TEST_LOSS = "global/test_loss"
VAL_ACC = "global/val_acc"
VAL_LOSS = "global/val_loss"
DP_EPSILON = "dp/epsilon"  # DP-FedAvg: the epsilon spent at its delta


def global_metric(split: str, kind: str, arch: str | None = None) -> str:
    """``global/<split>_<kind>``, with ``/<arch>`` for one architecture's model
    (``global_metric("test", "acc", "resnet10") == "global/test_acc/resnet10"``)."""
    return f"{GLOBAL}{split}_{kind}" + ("" if arch is None else f"/{arch}")
