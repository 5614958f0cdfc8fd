"""FedRolex (Alam et al., NeurIPS 2022): HeteroFL with rolling sub-model extraction."""

from __future__ import annotations

from flcore.strategies.heterofl import HeteroFL

__all__ = ["FedRolex"]


class FedRolex(HeteroFL):
    """Rolling sub-model extraction on top of :class:`HeteroFL`.

    In round ``r`` a sub-model of ``k`` of a layer's ``K`` channels takes channels
    ``r, r + 1, ..., r + k - 1`` (mod ``K``) instead of the leading ``k``, so the window rolls by
    one channel per round and every global channel is trained equally often over time
    (FedRolex Sec. 3). Aggregation averages each global entry over the clients whose window
    covered it. Evaluation uses the leading-channel sub-models and their mean, as for HeteroFL.

    Args: as :class:`HeteroFL`.
    """

    def offset(self, rnd: int) -> int | None:
        return int(rnd)
