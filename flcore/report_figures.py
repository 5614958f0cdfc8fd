"""The report's figures (:mod:`flcore.report`): learning curves and gaps to a baseline, drawn
with matplotlib from the runs :func:`flcore.report.load_runs` reads, in colours and line styles
fixed per method (:mod:`flcore.plotting`)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from flcore.plotting import legend_outside, method_of, method_style, partition_of
from flcore.curves import _curves_by_group, gaps_to_baseline, mean_curve, seed_gaps

__all__ = ["plot_curves", "plot_gap"]


def _figure(figsize=(9.0, 4.5), panels: int = 1):
    """A figure and its axes (one, or ``panels`` side by side sharing y)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("flcore report: curves need matplotlib: pip install 'flcore[plot]'") from None
    fig = Figure(figsize=figsize)
    return fig, (fig.add_subplot() if panels == 1 else fig.subplots(1, panels, sharey=True))


def _save(fig, ax, path: str | Path, title: str | None) -> None:
    ax.grid(alpha=0.3)
    legend_outside(fig, ax)
    if title:
        ax.set_title(textwrap.fill(title, 70), fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_curves(runs: list[dict[str, Any]], path: str | Path, title: str | None = None) -> None:
    """Test accuracy against round, one line per group: the mean over its runs at the rounds
    they share, with a ±1 std band where the group has more than one run (the papers'
    learning-curve figures). Colours and line styles are fixed per method
    (:func:`flcore.plotting.method_style`); the legend sits outside the axes. Runs of several
    settings (partitions: :func:`flcore.plotting.partition_of`) go in one panel each, side by side.

    Raises:
        ImportError: matplotlib is not installed.
    """
    groups = _curves_by_group(runs)
    panels: dict[str, list[str]] = {}
    for group in groups:
        panels.setdefault(partition_of(group), []).append(group)
    if len(panels) <= 1:
        fig, ax = _figure()
        _draw_curves(ax, {g: groups[g] for g in groups}, label=lambda g: g)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (%)")
        _save(fig, ax, path, title)
        return
    fig, axes = _figure((5.0 * len(panels), 6.0), len(panels))
    for ax, (setting, members) in zip(axes, panels.items()):
        _draw_curves(ax, {g: groups[g] for g in members}, label=method_of)
        ax.set_title(setting, fontsize=10)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7, ncols=2, frameon=False)
    axes[0].set_ylabel("test accuracy (%)")
    if title:
        fig.suptitle(textwrap.fill(title, 110), fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def _draw_curves(ax, groups: dict[str, list[list[tuple[int, float]]]], label) -> None:
    for group, curves in groups.items():
        rounds, acc = mean_curve(curves)
        acc = acc * 100
        mean = acc.mean(0)
        color, style = method_style(group)
        ax.plot(rounds, mean, label=f"{label(group)} (n = {len(curves)})", linewidth=1.2, color=color, linestyle=style)
        if len(curves) > 1:
            std = acc.std(0, ddof=1)
            ax.fill_between(rounds, mean - std, mean + std, alpha=0.15, color=color, linewidth=0)


def plot_gap(runs: list[dict[str, Any]], baseline: str, window: int, path: str | Path,
             title: str | None = None) -> None:
    """Each group's smoothed gap to ``baseline`` (:func:`gaps_to_baseline`, paired by seed, in
    accuracy points) against round, with the zero line and, for a group with two or more seeds
    paired with the baseline, a ±1 std band over the per-seed gaps (:func:`seed_gaps`): where a
    line crosses zero for the last time from below is the overtaking round of the report. The raw
    curves of methods within a point of each other overlap; their gaps do not.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: no group named ``baseline``; ``window`` < 1.
    """
    gaps = gaps_to_baseline(runs, baseline, window)
    bands = seed_gaps(runs, baseline, window)
    fig, ax = _figure()
    ax.axhline(0.0, color="black", linewidth=0.8)
    for group, (rounds, diff) in gaps.items():
        color, style = method_style(group)
        n = len(bands[group][1]) if group in bands else 1
        ax.plot(rounds, diff * 100, label=f"{group} (n = {n})", linewidth=1.2, color=color, linestyle=style)
        if group in bands:
            r, per_seed = bands[group]
            mean, std = per_seed.mean(0) * 100, per_seed.std(0, ddof=1) * 100
            ax.fill_between(r, mean - std, mean + std, alpha=0.15, color=color, linewidth=0)
    ax.set_xlabel("round")
    ax.set_ylabel(f"test accuracy minus {baseline} (points)")
    _save(fig, ax, path, title or f"gap to {baseline}, trailing mean over {window} evaluations")
