"""Claims computed from run records: per-seed paired differences, a 95 % interval and a verdict.

A claims file (YAML) states what the papers say and which runs test it::

    claims:
      - claim: FedCross beats FedAvg          # the papers' statement, in words
        paper: "+9.6 (CIFAR-10 CNN, beta 0.1)" # the papers' own figure, quoted
        partition: Dir(0.1)
        method: fedcross__beta=0.1             # run group (flcore.report names)
        baseline: fedavg__beta=0.1
        metric: last_mean                      # see METRICS
        direction: higher                      # higher | lower: what "the claim holds" means

    flcore report RECORDS --out DIR --last 10 --early 100 --claims claims.yaml   # writes DIR/claims.md

For each claim the method's and the baseline's runs are paired by seed (the seeds both groups
ran); ``d_s = metric(method, s) - metric(baseline, s)`` in points (percent points for
accuracies, rounds for ``rounds_to``). The table gives every ``d_s``, their mean, the paired-t
95 % interval ``mean ± t(0.975, n-1) · sd / sqrt(n)`` (n >= 2) and a verdict:

* **holds**: the interval lies entirely on the claimed side of 0;
* **contradicted**: it lies entirely on the other side;
* **not distinguishable**: it contains 0;
* **one seed**: n = 1, no interval; the sign alone is not a test.

"Variance" says what the seeds vary: ``training seed`` when every paired run used the same
partition (``data.init_args.seed``), ``seed + partition`` when the partition varies with them.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import yaml

from flcore.curves import rounds_to
from flcore.metric_names import TEST_ACC

__all__ = ["METRICS", "run_metric", "evaluate_claim", "evaluate_claims", "claims_table", "load_claims"]

METRICS = {
    "last_mean": "mean of the last evaluations' test accuracy",
    "final": "final test accuracy",
    "best": "best test accuracy (papers' protocol)",
    "early_mean": "mean test accuracy over the early rounds",
    "last_std": "std of the last evaluations' test accuracy",
    "rounds_to": "rounds to a target test accuracy",
}
"""Metric keys of a claim and what they measure (per run)."""

_FIELDS = ("claim", "paper", "partition", "method", "baseline", "metric", "direction")


def run_metric(run: dict[str, Any], metric: str, last: int = 10, early: int | None = None,
               target: float | None = None) -> float | None:
    """One run's value of ``metric`` (:data:`METRICS`): accuracies and their std as fractions,
    ``rounds_to`` in rounds; ``None`` where the run has no such value (no curve, target never
    reached, no best-test record).

    Raises:
        ValueError: an unknown metric; ``early_mean`` without ``early``; ``rounds_to`` without
            ``target``.
    """
    curve, record = run["curve"], run["record"]
    if metric == "last_mean":
        return statistics.fmean(a for _, a in curve[-last:]) if curve else None
    if metric == "last_std":
        return statistics.pstdev([a for _, a in curve[-last:]]) if len(curve) >= 2 else None
    if metric == "final":
        return (record.get("final") or {}).get(TEST_ACC)
    if metric == "best":
        return (record.get("best_test_acc_paper_protocol") or {}).get("test_acc")
    if metric == "early_mean":
        if early is None:
            raise ValueError("claims: metric 'early_mean' needs 'early' (rounds) in the claim or --early")
        values = [a for r, a in curve if r <= early]
        return statistics.fmean(values) if values else None
    if metric == "rounds_to":
        if target is None:
            raise ValueError("claims: metric 'rounds_to' needs 'target' (a test accuracy, e.g. 0.8)")
        return rounds_to(curve, target)
    raise ValueError(f"claims: metric {metric!r} is unknown; allowed: {', '.join(METRICS)}")


def _t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def _data_seed(run: dict[str, Any]) -> Any:
    data = (run["record"].get("config") or {}).get("data") or {}
    return (data.get("init_args") or {}).get("seed")


def evaluate_claim(claim: dict[str, Any], runs: list[dict[str, Any]], last: int = 10,
                   early: int | None = None) -> dict[str, Any]:
    """The claim with its evidence: ``seeds``, ``diffs`` (per seed, points), ``n``, ``mean``,
    ``interval`` (``(lo, hi)`` or ``None`` for n < 2), ``variance`` and ``verdict`` (module
    docstring). A claim's own ``last``, ``early`` or ``target`` override the defaults.

    Raises:
        ValueError: a missing field; ``direction`` not higher/lower; an unknown metric; a group
            with no runs; no seed that both groups ran.
    """
    missing = [f for f in _FIELDS if f not in claim]
    if missing:
        raise ValueError(f"claims: {claim.get('claim', claim)!r} lacks {', '.join(missing)}")
    if claim["direction"] not in ("higher", "lower"):
        raise ValueError(f"claims: direction must be 'higher' or 'lower', got {claim['direction']!r}")
    last, early = claim.get("last", last), claim.get("early", early)
    groups = {}
    for side in ("method", "baseline"):
        members = [r for r in runs if r["group"] == claim[side]]
        if not members:
            raise ValueError(f"claims: {side} {claim[side]!r} has no runs; groups: {sorted({r['group'] for r in runs})}")
        groups[side] = {r["seed"]: r for r in members}
    seeds = sorted(set(groups["method"]) & set(groups["baseline"]), key=str)
    if not seeds:
        raise ValueError(f"claims: {claim['method']!r} and {claim['baseline']!r} share no seed")
    scale = 1.0 if claim["metric"] == "rounds_to" else 100.0
    diffs, used = [], []
    for s in seeds:
        a, b = (run_metric(groups[side][s], claim["metric"], last, early, claim.get("target"))
                for side in ("method", "baseline"))
        if a is not None and b is not None:
            diffs.append(scale * (a - b))
            used.append(s)
    n = len(diffs)
    out = {**claim, "seeds": used, "diffs": diffs, "n": n, "mean": statistics.fmean(diffs) if diffs else math.nan,
           "interval": None}
    partitions = {_data_seed(groups[side][s]) for s in used for side in ("method", "baseline")}
    out["variance"] = "—" if n < 2 else ("seed + partition" if len(partitions) > 1 else "training seed")
    sign = 1.0 if claim["direction"] == "higher" else -1.0
    if n < 2:
        out["verdict"] = "one seed" if n else "no data"
        return out
    half = _t975(n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    lo, hi = out["mean"] - half, out["mean"] + half
    out["interval"] = (lo, hi)
    slo, shi = sorted((sign * lo, sign * hi))
    out["verdict"] = "holds" if slo > 0 else "contradicted" if shi < 0 else "not distinguishable"
    return out


def load_claims(path: str | Path) -> dict[str, Any]:
    """A claims file (module docstring): ``{"claims": [...], "skip_missing": bool}``. With
    ``skip_missing: true`` a claim whose method or baseline has no runs among the records is left
    out of the table (one file can serve record sets that hold different methods).

    Raises:
        ValueError: the file has no non-empty ``claims`` list.
    """
    data = yaml.safe_load(Path(path).read_text()) or {}
    claims = data.get("claims")
    if not isinstance(claims, list) or not claims:
        raise ValueError(f"claims: {path} must hold a non-empty 'claims' list")
    return {"claims": claims, "skip_missing": bool(data.get("skip_missing", False))}


def evaluate_claims(claims: list[dict[str, Any]], runs: list[dict[str, Any]], last: int = 10,
                    early: int | None = None, skip_missing: bool = False) -> list[dict[str, Any]]:
    """:func:`evaluate_claim` for each claim, in order; with ``skip_missing``, claims naming a
    group that has no runs are left out.

    Raises:
        ValueError: as :func:`evaluate_claim`.
    """
    groups = {r["group"] for r in runs}
    return [evaluate_claim(c, runs, last, early) for c in claims
            if not skip_missing or (c.get("method") in groups and c.get("baseline") in groups)]


def _metric_label(c: dict[str, Any], last: int, early: int | None) -> str:
    m = c["metric"]
    return {"last_mean": f"last-{c.get('last', last)} mean", "final": "final", "best": "best (test-selected)",
            "early_mean": f"mean over rounds <= {c.get('early', early)}",
            "last_std": f"std of last {c.get('last', last)}",
            "rounds_to": f"rounds to {100 * c.get('target', 0):g} %"}[m]


def claims_table(results: list[dict[str, Any]], last: int = 10, early: int | None = None) -> str:
    """The evaluated claims as a Markdown table (differences in points; rounds for ``rounds_to``)."""
    head = ["claim", "paper", "partition", "metric", "method − baseline, per seed", "n", "mean",
            "95 % interval", "variance", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in results:
        digits = 0 if c["metric"] == "rounds_to" else 2
        per_seed = ", ".join(f"{d:+.{digits}f}" for d in c["diffs"]) or "—"
        interval = "—" if c["interval"] is None else f"[{c['interval'][0]:+.{digits}f}, {c['interval'][1]:+.{digits}f}]"
        mean = "—" if math.isnan(c["mean"]) else f"{c['mean']:+.{digits}f}"
        lines.append("| " + " | ".join([c["claim"], str(c["paper"]), c["partition"], _metric_label(c, last, early),
                                        per_seed, str(c["n"]), mean, interval, c["variance"],
                                        f"**{c['verdict']}**" if c["verdict"] in ("holds", "contradicted")
                                        else c["verdict"]]) + " |")
    return "\n".join(lines) + "\n"
