"""``flcore report``: tables and learning-curve figures over run folders.

Built from the files a run leaves (``results.json``, ``metrics.csv``) and nothing else, so runs
made anywhere (a laptop, a cluster sweep) report the same way. Runs are grouped by their
``trainer.name`` with any ``__seed=N`` part removed (the names :mod:`flcore.sweep` gives), and
each group's figures are the mean ± standard deviation over its runs (seeds).

    flcore report runs/repro --out benchmarks/results/repro --target 0.6 0.7

Columns: runs, final test accuracy, the mean of the last ``--last`` evaluations' test accuracy
(a final figure less sensitive to one round's luck), test accuracy at the best validation round,
the papers' best test accuracy (the maximum over rounds, selected on the test set; only for runs
made with ``trainer.report_best_test``), rounds to each target test accuracy (the first evaluated
round at or above it; mean over the runs that reach it, with how many did), the standard
deviation of the last ``--last`` evaluations' test accuracy (smoothness), megabytes sent (down +
up) and wall time (minutes); a group of one run shows bare values, not "± 0.00"; with ``--early ROUNDS``, the mean test accuracy over the first ROUNDS rounds'
evaluations (early-phase speed). With ``--baseline GROUP``: the round from which each group overtakes that group
for good (:func:`overtaking`: its mean curve, smoothed over ``--last`` evaluations, stays at or
above the baseline's to the end, the baseline's runs paired with the group's seeds; "never" if it
ends below), and, with ``--target``, a
convergence speed relative to it at the first target: ``rounds_to(baseline) / rounds_to(group)``
(the FedIN paper's Table 1 "Speed", FedAvg = x1.0; above 1 is faster). Figures: ``curves.png``
(each group's mean test accuracy per round, ±1 std over seeds; one panel per partition) and, with
``--baseline``, ``gap.png`` (each group's smoothed gap to the baseline with a seed band,
:func:`flcore.report_figures.plot_gap`), in colours fixed per method (:mod:`flcore.plotting`). ``--columns`` also writes
``summary.md`` (those columns only) and ``--claims FILE`` also writes ``claims.md``
(:mod:`flcore.claims`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any


from flcore.curves import (stays_above_from, gaps_to_baseline, group_mean_curves,
                           mean_curve, overtakes_at, rounds_to, seed_gaps, smoothed_gap)
from flcore.metric_names import DP_EPSILON, TEST_ACC

__all__ = ["load_runs", "summarize", "relative_speed", "mean_curve", "group_mean_curves", "smoothed_gap",
           "gaps_to_baseline", "seed_gaps", "overtakes_at", "overtaking", "markdown_table", "main"]

_SEED = re.compile(r"__seed=[^_]+")


def load_runs(roots: list[str | Path]) -> list[dict[str, Any]]:
    """Every run folder below ``roots`` (a folder with ``results.json``): its record, its
    test-accuracy curve ``[(round, acc), ...]`` from ``metrics.csv``, its group name and its seed
    (the name's ``__seed=N`` part, else the config's ``seed_everything``, as a string)."""
    runs = []
    for root in roots:
        for path in sorted(Path(root).rglob("results.json")):
            record = json.loads(path.read_text())
            name = ((record.get("config") or {}).get("trainer") or {}).get("name") or path.parent.parent.name
            curve = []
            csv_path = path.parent / "metrics.csv"
            if csv_path.exists():
                with csv_path.open() as f:
                    for row in csv.DictReader(f):
                        if row.get(TEST_ACC):
                            curve.append((int(row["round"]), float(row[TEST_ACC])))
            seed = _SEED.search(name)
            seed = seed.group(0)[len("__seed="):] if seed else (record.get("config") or {}).get("seed_everything")
            runs.append({"dir": str(path.parent), "name": name, "group": _SEED.sub("", name), "record": record,
                         "curve": curve, "seed": None if seed is None else str(seed)})
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def summarize(runs: list[dict[str, Any]], targets: tuple[float, ...] = (), last: int = 5,
              early: int | None = None) -> list[dict[str, Any]]:
    """One row per group (see the module docstring), in order of first appearance. With ``early``
    (rounds), also ``row["early_mean"]``: the mean test accuracy over the evaluations at rounds
    <= ``early`` (an area under the early learning curve; the acceleration measure that coarse
    rounds-to-target columns miss), mean ± std over the group's runs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["group"], []).append(run)
    rows = []
    for group, members in groups.items():
        recs = [m["record"] for m in members]
        row: dict[str, Any] = {"group": group, "runs": len(members),
                               "rounds": min(r.get("rounds_completed", 0) for r in recs)}
        row["final_test_acc"] = _mean_std([(r.get("final") or {}).get(TEST_ACC) for r in recs])
        row["last_evals_mean"] = _mean_std([statistics.fmean([a for _, a in m["curve"][-last:]])
                                            for m in members if m["curve"]])
        if early is not None:
            row["early_rounds"] = early
            row["early_mean"] = _mean_std([statistics.fmean(a for r, a in m["curve"] if r <= early)
                                           for m in members if any(r <= early for r, _ in m["curve"])])
        row["test_acc_at_best_val"] = _mean_std([r.get("test_acc_at_best_val") for r in recs])
        row["best_test_acc_paper_protocol"] = _mean_std([(r.get("best_test_acc_paper_protocol") or {}).get("test_acc")
                                                         for r in recs])
        row["last_evals_std"] = _mean_std([statistics.pstdev([a for _, a in m["curve"][-last:]])
                                           for m in members if len(m["curve"]) >= 2])
        for t in targets:
            reached = [rounds_to(m["curve"], t) for m in members]
            hit = [r for r in reached if r is not None]
            row[f"rounds_to_{t:g}"] = (statistics.fmean(hit) if hit else None, len(hit))
        row["mbytes"] = _mean_std([(r.get("bytes_down", 0) + r.get("bytes_up", 0)) / 1e6 for r in recs])
        row["wall_time_s"] = _mean_std([r.get("wall_time_s") for r in recs])
        spent = [(r.get("final") or {}).get(DP_EPSILON) for r in recs]
        if any(e is not None for e in spent):  # DP-FedAvg's epsilon at its delta after the last round
            row["epsilon"] = _mean_std(spent)
        rows.append(row)
    return rows


def relative_speed(rows: list[dict[str, Any]], baseline: str, target: float,
                   runs: list[dict[str, Any]] | None = None) -> None:
    """Add ``row["speed"]``: the baseline group's mean rounds to ``target`` divided by the row's
    (FedIN paper, Table 1 "Speed"); ``None`` where either never reaches it. With ``runs``, the
    baseline's mean is **paired by seed**, as :func:`gaps_to_baseline`: over its runs with the
    row's seeds (all its runs if it shares none), so a one-seed variant is compared with the
    baseline's run of that seed.

    Raises:
        ValueError: no group named ``baseline``.
    """
    base = next((r for r in rows if r["group"] == baseline), None)
    if base is None:
        raise ValueError(f"--baseline: no run group {baseline!r}; groups: {[r['group'] for r in rows]}")
    base_runs = [r for r in runs or [] if r["group"] == baseline]
    for r in rows:
        b = base[f"rounds_to_{target:g}"][0]
        if base_runs:
            seeds = {m.get("seed") for m in runs if m["group"] == r["group"]}
            paired = [m for m in base_runs if m.get("seed") in seeds] or base_runs
            hit = [x for x in (rounds_to(m["curve"], target) for m in paired) if x is not None]
            b = statistics.fmean(hit) if hit else None
        mine = r[f"rounds_to_{target:g}"][0]
        r["speed"] = (b / mine) if (b is not None and mine) else None


def overtaking(rows: list[dict[str, Any]], runs: list[dict[str, Any]], baseline: str, window: int) -> None:
    """Add ``row["overtakes_round"]`` (the round from which the group's smoothed gap to the
    baseline, :func:`gaps_to_baseline`, stays at or above 0, as :func:`overtakes_at`; ``None``:
    never), ``row["overtakes_from_start"]`` (the gap is never below 0: the round is then only the
    first one the smoothing window covers; the table says "never below (from N)") and
    ``row["overtakes_baseline"]``.

    Raises:
        ValueError: no group named ``baseline`` with a test curve.
    """
    gaps = gaps_to_baseline(runs, baseline, window)
    for r in rows:
        r["overtakes_baseline"] = baseline
        r["overtakes_round"] = stays_above_from(*gaps[r["group"]]) if r["group"] in gaps else None
        # never below: the round is only the first one the smoothing window covers
        r["overtakes_from_start"] = r["group"] in gaps and bool(gaps[r["group"]][0]) and bool((gaps[r["group"]][1] >= 0).all())


def _fmt(ms: tuple[float, float], scale: float = 1.0, digits: int = 2) -> str:
    """``"mean ± std"``; the bare mean where there is one value (no spread to show)."""
    m, s = ms
    if math.isnan(m):
        return "—"
    if math.isnan(s):
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def _columns(rows: list[dict[str, Any]], targets: tuple[float, ...], last: int) -> list[tuple[str, str, Any]]:
    """``(key, header, cell(row) -> str)`` of every column the rows can fill, in table order."""
    def rounds_cell(t):
        def cell(r):
            mean, hit = r[f"rounds_to_{t:g}"]
            return "never" if mean is None else (f"{mean:.0f}" if r["runs"] == 1 else f"{mean:.0f} ({hit}/{r['runs']})")
        return cell

    def over_cell(r):
        over = r["overtakes_round"]
        if r["group"] == r["overtakes_baseline"]:
            return "—"
        return "never" if over is None else f"never below (from {over})" if r.get("overtakes_from_start") else str(over)

    first = rows[0] if rows else {}
    cols = [("group", "run group", lambda r: r["group"]), ("runs", "runs", lambda r: str(r["runs"])),
            ("rounds", "rounds", lambda r: str(r["rounds"])),
            ("final", "final test acc (%)", lambda r: _fmt(r["final_test_acc"], 100)),
            ("last_mean", f"mean of last {last} evals (%)", lambda r: _fmt(r["last_evals_mean"], 100))]
    if "early_mean" in first:
        cols.append(("early", f"mean test acc, rounds <= {first['early_rounds']} (%)", lambda r: _fmt(r["early_mean"], 100)))
    cols += [("val", "test acc at best val (%)", lambda r: _fmt(r["test_acc_at_best_val"], 100)),
             ("best", "best test acc, papers' protocol (%)", lambda r: _fmt(r["best_test_acc_paper_protocol"], 100))]
    cols += [(f"rounds_to_{t:g}", f"rounds to {100 * t:g} %", rounds_cell(t)) for t in targets]
    if "speed" in first:
        cols.append(("speed", f"speed vs baseline at {100 * targets[0]:g} %",
                     lambda r: "—" if r["speed"] is None else f"x{r['speed']:.1f}"))
    if "overtakes_round" in first:
        cols.append(("overtakes", f"overtakes {first['overtakes_baseline']} at round", over_cell))
    if any("epsilon" in r for r in rows):
        cols.append(("epsilon", "epsilon spent", lambda r: _fmt(r["epsilon"], 1, 2) if "epsilon" in r else "—"))
    cols += [("std", f"std of last {last} evals (pts)", lambda r: _fmt(r["last_evals_std"], 100)),
             ("mb", "MB sent", lambda r: _fmt(r["mbytes"], 1, 1)),
             ("wall", "wall (min)", lambda r: _fmt((r["wall_time_s"][0] / 60, r["wall_time_s"][1] / 60), 1, 1))]
    return cols


COLUMNS = ("group", "runs", "rounds", "final", "last_mean", "early", "val", "best", "rounds_to", "speed",
           "overtakes", "epsilon", "std", "mb", "wall")
"""The column keys of :func:`markdown_table` (``rounds_to`` stands for every ``--target``)."""


def markdown_table(rows: list[dict[str, Any]], targets: tuple[float, ...] = (), last: int = 5,
                   columns: tuple[str, ...] | None = None) -> str:
    """The summary as a Markdown table (accuracies in %, wall time in minutes). A group of one run
    shows bare values (no "± std"). ``columns`` (keys of :data:`COLUMNS`; default all) picks and
    orders the columns; a column the rows cannot fill (``speed`` without ``--baseline``) is left out.

    Raises:
        ValueError: an unknown column key.
    """
    cols = _columns(rows, targets, last)
    if columns is not None:
        bad = [c for c in columns if c not in COLUMNS]
        if bad:
            raise ValueError(f"--columns: unknown {bad}; allowed: {', '.join(COLUMNS)}")
        by_key = {k: (k, h, f) for k, h, f in cols}
        chosen = []
        for c in columns:
            chosen += [col for k, col in by_key.items() if k == c or (c == "rounds_to" and k.startswith("rounds_to_"))]
        cols = chosen
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f(r) for _, _, f in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """The summary as CSV: one column per statistic (``_mean`` / ``_std`` for mean ± std)."""
    flat = []
    for r in rows:
        out: dict[str, Any] = {}
        for k, v in r.items():
            if isinstance(v, tuple) and k.startswith("rounds_to_"):
                out[f"{k}_mean"], out[f"{k}_reached"] = v
            elif isinstance(v, tuple):
                out[f"{k}_mean"], out[f"{k}_std"] = v
            else:
                out[k] = v
        flat.append(out)
    keys = list(dict.fromkeys(k for row in flat for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(flat)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flcore report", description="Tables and curves over run folders.")
    p.add_argument("roots", nargs="+", help="folders searched (recursively) for run folders with results.json")
    p.add_argument("--out", required=True, help="folder for report.md, report.csv, curves.png")
    p.add_argument("--target", type=float, nargs="*", default=[], help="target test accuracies, e.g. 0.6 0.7")
    p.add_argument("--last", type=int, default=5, help="evaluations in the smoothness column")
    p.add_argument("--baseline", default=None, help="run group that the overtaking column (and, with --target, the "
                                                    "relative-speed column) compares against")
    p.add_argument("--early", type=int, default=None, metavar="ROUNDS",
                   help="add the mean test accuracy over the evaluations at rounds <= ROUNDS (early-phase speed)")
    p.add_argument("--columns", nargs="+", default=None, metavar="KEY",
                   help=f"also write summary.md with these columns only ({', '.join(COLUMNS)})")
    p.add_argument("--claims", default=None, metavar="YAML",
                   help="also write claims.md: the claims of this file tested on these runs (flcore.claims)")
    p.add_argument("--no-figures", action="store_true", help="write the tables only")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    if args.columns is not None and (bad := [c for c in args.columns if c not in COLUMNS]):
        p.error(f"--columns: unknown {bad}; allowed: {', '.join(COLUMNS)}")
    if args.last < 1:
        p.error(f"--last: must be >= 1, got {args.last}")
    if args.early is not None and args.early < 1:
        p.error(f"--early: must be >= 1 (rounds), got {args.early}")
    runs = load_runs(args.roots)
    if not runs:
        p.error(f"roots: no results.json below {args.roots}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs, tuple(args.target), args.last, args.early)
    if args.baseline:
        try:
            overtaking(rows, runs, args.baseline, args.last)
            if args.target:
                relative_speed(rows, args.baseline, args.target[0], runs)
        except ValueError as err:
            p.error(str(err))
    table = markdown_table(rows, tuple(args.target), args.last)
    (out / "report.md").write_text(table)
    write_csv(rows, out / "report.csv")
    written = ["report.md", "report.csv"]
    if args.columns:
        (out / "summary.md").write_text(markdown_table(rows, tuple(args.target), args.last, tuple(args.columns)))
        written.append("summary.md")
    if args.claims:
        from flcore.claims import claims_table, evaluate_claims, load_claims

        try:
            spec = load_claims(args.claims)
            results = evaluate_claims(spec["claims"], runs, args.last, args.early, spec["skip_missing"])
        except (OSError, ValueError) as err:
            p.error(str(err).splitlines()[0])
        (out / "claims.md").write_text(claims_table(results, args.last, args.early))
        written.append("claims.md")
    figures = [] if args.no_figures else ["curves.png"] + (["gap.png"] if args.baseline else [])
    written += figures
    try:
        from flcore.report_figures import plot_curves, plot_gap

        if figures:
            plot_curves(runs, out / "curves.png", args.title)
        if figures and args.baseline:
            plot_gap(runs, args.baseline, args.last, out / "gap.png",
                     args.title and f"{args.title}: gap to {args.baseline}, trailing mean over {args.last} evaluations")
    except ImportError as err:
        print(f"flcore report: {err}")
    print(table, end="")
    print(f"flcore report: {len(runs)} runs in {len(rows)} groups; wrote {out}/{', '.join(written)}")
    return 0
