"""Learning-curve analysis over runs (:func:`flcore.report.load_runs`): mean curves over seeds,
rounds to a target, smoothed gaps to a baseline paired by seed and the round a method overtakes
it for good. Curves are ``[(round, test accuracy), ...]``; accuracies are fractions in [0, 1]."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rounds_to", "mean_curve", "group_mean_curves", "smoothed_gap", "overtakes_at", "gaps_to_baseline",
           "seed_gaps", "stays_above_from"]


def rounds_to(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated round whose test accuracy is >= ``target``, or ``None``."""
    return next((r for r, acc in curve if acc >= target), None)


def _runs_by_group(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Group name -> its runs that have a test-accuracy curve (in order of appearance)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run["curve"]:
            groups.setdefault(run["group"], []).append(run)
    return groups


def _curves_by_group(runs: list[dict[str, Any]]) -> dict[str, list[list[tuple[int, float]]]]:
    """Group name -> the test-accuracy curves of its runs that have one (in order of appearance)."""
    return {group: [m["curve"] for m in members] for group, members in _runs_by_group(runs).items()}


def mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[list[int], np.ndarray]:
    """The rounds that every curve evaluated, and the accuracies there: an array of shape
    ``(len(curves), len(rounds))`` (average over axis 0 for a group's mean curve)."""
    maps = [dict(c) for c in curves]
    rounds = sorted(set.intersection(*(set(m) for m in maps))) if maps else []
    return rounds, np.array([[m[r] for r in rounds] for m in maps], dtype=float).reshape(len(maps), len(rounds))


def smoothed_gap(curve: list[tuple[int, float]], base: list[tuple[int, float]],
                 window: int) -> tuple[list[int], np.ndarray]:
    """``curve`` minus ``base`` at their shared rounds, both smoothed by a trailing mean over
    ``window`` evaluations: the smoothed rounds (the last round of each window) and the gaps, shape
    ``(len(rounds),)`` in the curves' units (empty when they share fewer than ``window`` rounds).

    Raises:
        ValueError: ``window`` < 1.
    """
    if window < 1:
        raise ValueError(f"--last: must be >= 1, got {window}")
    mine, theirs = dict(curve), dict(base)
    rounds = sorted(set(mine) & set(theirs))
    if len(rounds) < window:
        return [], np.zeros(0)
    kernel = np.ones(window) / window
    diff = (np.convolve([mine[r] for r in rounds], kernel, "valid")
            - np.convolve([theirs[r] for r in rounds], kernel, "valid"))
    return rounds[window - 1:], diff


def overtakes_at(curve: list[tuple[int, float]], base: list[tuple[int, float]], window: int) -> int | None:
    """The round from which ``curve`` stays at or above ``base`` to their last shared round, both
    smoothed by a trailing mean over ``window`` evaluations (:func:`smoothed_gap`; the first
    smoothed round when it is never below); ``None`` when it ends below (or they share fewer than
    ``window`` rounds). Answers "whether and at what round a method overtakes FedAvg" on the
    smoothed curves, so one round's luck neither makes nor breaks it.

    Raises:
        ValueError: ``window`` < 1.
    """
    return stays_above_from(*smoothed_gap(curve, base, window))


def stays_above_from(rounds: list[int], gap: np.ndarray) -> int | None:
    """The first of ``rounds`` from which ``gap`` (shape ``(len(rounds),)``) stays >= 0 to the
    end, or ``None`` if it ends below 0.

    >>> stays_above_from([10, 20, 30, 40], np.array([0.1, -0.2, 0.0, 0.3]))
    30
    >>> stays_above_from([10, 20], np.array([0.1, -0.1])) is None
    True
    """
    if not rounds or gap[-1] < 0:
        return None
    below = np.flatnonzero(gap < 0)
    return rounds[below[-1] + 1] if below.size else rounds[0]


def group_mean_curves(runs: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Group name -> its mean test-accuracy curve ``[(round, acc), ...]`` over the rounds all its
    runs evaluated (:func:`mean_curve`)."""
    return {group: _mean_of(curves) for group, curves in _curves_by_group(runs).items()}


def _mean_of(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    rounds, acc = mean_curve(curves)
    return list(zip(rounds, acc.mean(0)))


def gaps_to_baseline(runs: list[dict[str, Any]], baseline: str,
                     window: int) -> dict[str, tuple[list[int], np.ndarray]]:
    """Group name (all but ``baseline``) -> :func:`smoothed_gap` of its mean curve to the
    baseline's, **paired by seed**: the baseline's mean is over its runs with the group's seeds
    (over all its runs if it shares none), so a one-seed variant is compared with the baseline's
    run of that seed, not with a mean over seeds it never ran.

    Raises:
        ValueError: no group named ``baseline`` with a test curve; ``window`` < 1.
    """
    groups = _runs_by_group(runs)
    base_runs = groups.pop(baseline, None)
    if not base_runs:
        raise ValueError(f"--baseline: no run group {baseline!r} with a test curve; "
                         f"groups: {sorted({r['group'] for r in runs})}")
    gaps = {}
    for group, mine in groups.items():
        seeds = {m.get("seed") for m in mine}
        paired = [b for b in base_runs if b.get("seed") in seeds] or base_runs
        gaps[group] = smoothed_gap(_mean_of([m["curve"] for m in mine]), _mean_of([b["curve"] for b in paired]), window)
    return gaps


def seed_gaps(runs: list[dict[str, Any]], baseline: str, window: int) -> dict[str, tuple[list[int], np.ndarray]]:
    """Group name -> the per-seed smoothed gaps to the baseline's run of the same seed
    (:func:`smoothed_gap` of each seed pair), at the smoothed rounds every pair shares: rounds and
    an array of shape ``(seeds, len(rounds))`` in the curves' units. Groups sharing fewer than two
    seeds with the baseline are left out (no spread to show). Their mean over seeds is the
    group's :func:`gaps_to_baseline` where all seeds evaluated the same rounds.

    Raises:
        ValueError: ``window`` < 1.
    """
    groups = _runs_by_group(runs)
    base = {b.get("seed"): b["curve"] for b in groups.pop(baseline, [])}
    out = {}
    for group, mine in groups.items():
        pairs = [smoothed_gap(m["curve"], base[m.get("seed")], window) for m in mine if m.get("seed") in base]
        pairs = [p for p in pairs if p[0]]
        if len(pairs) < 2:
            continue
        rounds = sorted(set.intersection(*(set(r) for r, _ in pairs)))
        out[group] = (rounds, np.array([[dict(zip(r, g))[x] for x in rounds] for r, g in pairs]))
    return out
