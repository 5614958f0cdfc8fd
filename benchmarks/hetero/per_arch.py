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


def final_row(metrics_csv: Path) -> dict[str, float]:
    """The last evaluated row's test accuracies: ``{"mean": ..., "<arch>": ...}`` (fractions)."""
    last: dict[str, str] = {}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            if row.get("global/test_acc"):
                last = row
    out = {"mean": float(last["global/test_acc"])} if last else {}
    for key, value in last.items():
        if key.startswith("global/test_acc/") and value:
            out[key.removeprefix("global/test_acc/")] = float(value)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", type=Path)
    args = p.parse_args(argv)
    rows = []
    for root in args.roots:
        for path in sorted(root.rglob("results.json")):
            if (path.parent / "metrics.csv").exists():
                run = path.parent.parent if path.parent.name.startswith("version_") else path.parent
                rows.append((run.name, final_row(path.parent / "metrics.csv")))
    print("| run | mean (%) | per architecture / level: final test accuracy (%) |")
    print("|---|---|---|")
    for name, accs in rows:
        per = ", ".join(f"{a} {100 * v:.1f}" for a, v in accs.items() if a != "mean")
        print(f"| {name} | {100 * accs.get('mean', float('nan')):.2f} | {per} |")


if __name__ == "__main__":
    main()
