"""Per-architecture accuracies of heterogeneous-model runs, from their ``metrics.csv`` files.

Reads every run folder below the given roots (a folder with ``results.json`` and ``metrics.csv``)
and prints one Markdown row per run: the final evaluation's ``global/test_acc/<arch>`` for each
architecture (or level) and their mean (``global/test_acc``), in %.

    python benchmarks/hetero/per_arch.py runs/hetero > benchmarks/results/hetero/per_arch.md
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def final_row(metrics_csv: Path, last: int = 1) -> dict[str, float]:
    """The test accuracies of the last ``last`` evaluated rows, averaged: ``{"mean": ...,
    "<arch>": ...}`` (fractions; ``last=1``: the final evaluation)."""
    rows: list[dict[str, str]] = []
    with metrics_csv.open() as f:
        rows = [row for row in csv.DictReader(f) if row.get("global/test_acc")][-last:]
    out: dict[str, float] = {}
    if rows:
        out["mean"] = sum(float(r["global/test_acc"]) for r in rows) / len(rows)
    for key in rows[0] if rows else ():
        if key.startswith("global/test_acc/") and all(r[key] for r in rows):
            out[key.removeprefix("global/test_acc/")] = sum(float(r[key]) for r in rows) / len(rows)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", type=Path)
    p.add_argument("--last", type=int, default=1, help="average the last LAST evaluations (default: the final one)")
    args = p.parse_args(argv)
    if args.last < 1:
        p.error(f"--last: must be >= 1, got {args.last}")
    rows = []
    for root in args.roots:
        for path in sorted(root.rglob("results.json")):
            if (path.parent / "metrics.csv").exists():
                run = path.parent.parent if path.parent.name.startswith("version_") else path.parent
                rows.append((run.name, final_row(path.parent / "metrics.csv", args.last)))
    what = "final test accuracy" if args.last == 1 else f"mean test accuracy of the last {args.last} evaluations"
    print(f"| run | mean (%) | per architecture / level: {what} (%) |")
    print("|---|---|---|")
    for name, accs in rows:
        per = ", ".join(f"{a} {100 * v:.1f}" for a, v in accs.items() if a != "mean")
        print(f"| {name} | {100 * accs.get('mean', float('nan')):.2f} | {per} |")


if __name__ == "__main__":
    main()
