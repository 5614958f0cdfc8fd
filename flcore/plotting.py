"""One look for every figure flcore writes: a fixed colour and line style per method, legends
outside the axes.

A method keeps its colour in every figure of every report (FedCross is the same colour in the
Dir(0.1) gap figure as in the IID curves), whatever other groups a figure holds or in which order
they come. The method of a run group is its name without ``__key=value`` parts (partition, seed)
and without an ``_iid`` suffix; a known method name followed by a variant suffix (``fedavg_m09``)
keeps the method's colour with a dashed line.
"""

from __future__ import annotations

import zlib

__all__ = ["METHOD_COLORS", "method_of", "partition_of", "method_style", "legend_outside"]

# Tableau-like palette; FedAvg is always black (the baseline of every comparison).
METHOD_COLORS: dict[str, str] = {
    "fedavg": "#000000", "fedavg_layerwise": "#000000",
    "fedprox": "#7f7f7f", "scaffold": "#8c564b", "fednova": "#bcbd22", "moon": "#17becf", "clusamp": "#e377c2",
    "fedmr": "#1f77b4", "fedmr_two_stage": "#6baed6",
    "fedcross": "#d62728", "fedcross_pm": "#ff7f0e", "fedcross_pm_equal": "#fdae6b",
    "fedcross_da": "#2ca02c", "fedcross_pmda": "#9467bd", "fedcross_pmda_equal": "#c5b0d5",
    "fedin": "#d62728", "fedin_noise": "#ff9896", "inclusivefl": "#1f77b4", "inco": "#2ca02c",
    "scalefl": "#ff7f0e", "hetero_fedgen": "#9467bd", "fedgen": "#9467bd", "fedet": "#8c564b",
    "heterofl": "#7f7f7f", "fedrolex": "#bcbd22",
}
_FALLBACK = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1")


def method_of(group: str) -> str:
    """The method of a run group: ``"fedcross_iid__seed=0"`` -> ``"fedcross"``,
    ``"fedavg__beta=0.1"`` -> ``"fedavg"``, ``"fedavg_m09__beta=0.1"`` -> ``"fedavg_m09"``."""
    return group.split("__", 1)[0].removesuffix("_iid")


def partition_of(group: str) -> str:
    """The setting part of a run group (what is not the method): ``"fedavg__beta=0.1"`` ->
    ``"beta=0.1"``, ``"fedcross_iid"`` -> ``"iid"``, ``"fedavg"`` -> ``""``."""
    head, _, rest = group.partition("__")
    parts = (["iid"] if head.endswith("_iid") else []) + ([rest] if rest else [])
    return "__".join(parts)


def method_style(group: str) -> tuple[str, str]:
    """``(colour, line style)`` of a run group: the method's fixed colour and a solid line; for a
    known method followed by a variant suffix (``fedavg_m09``), that method's colour dashed; for an
    unknown method, a colour chosen by a hash of its name (stable across figures) and a dash-dot
    line."""
    method = method_of(group)
    if method in METHOD_COLORS:
        return METHOD_COLORS[method], "-"
    known = max((m for m in METHOD_COLORS if method.startswith(m + "_")), key=len, default=None)
    if known is not None:
        return METHOD_COLORS[known], "--"
    return _FALLBACK[zlib.crc32(method.encode()) % len(_FALLBACK)], "-."


def legend_outside(fig, ax, fontsize: int = 7) -> None:
    """Put ``ax``'s legend to the right of the axes (never over the curves or the last tick),
    in two columns when it has more than 14 entries; call before ``fig.savefig(...,
    bbox_inches="tight")``."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=fontsize,
                  ncols=2 if len(handles) > 14 else 1, frameon=False)
