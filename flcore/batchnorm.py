"""BatchNorm policy: which BatchNorm entries stay on the client (``trainer.bn_policy``).

* ``average``: none; BN entries are aggregated like every other entry (the default).
* ``local``: FedBN (Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch
  Normalization", ICLR 2021, Algorithm 1): each client keeps its BN weight, bias and running
  statistics.
* ``local_stats``: the affine weight and bias are shared; the running statistics stay local.
"""

from __future__ import annotations

import torch

__all__ = ["BN_POLICIES", "bn_entries"]

BN_POLICIES = ("average", "local", "local_stats")


def bn_entries(net: torch.nn.Module, policy: str) -> list[str]:
    """The state_dict keys of ``net``'s BatchNorm layers that stay on the client under ``policy``:
    none for ``average``; weight, bias, running_mean, running_var, num_batches_tracked for
    ``local`` (FedBN); the three statistics for ``local_stats``."""
    if policy == "average":
        return []
    names = ("running_mean", "running_var", "num_batches_tracked") + (("weight", "bias") if policy == "local" else ())
    keys = set(net.state_dict())
    return [f"{prefix}.{n}" for prefix, m in net.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for n in names if f"{prefix}.{n}" in keys]
