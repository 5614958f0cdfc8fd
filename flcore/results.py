"""What a run leaves besides TensorBoard and checkpoints: ``metrics.csv`` and ``results.json``.

Both are rewritten from the trainer's round history (the list restored from the checkpoint on a
resume), so rounds redone after a resume never appear twice, and both are written atomically
(temporary file, then rename). Reports over many run folders (:mod:`flcore.report`) read only
these two files.

``results.json`` holds: the resolved config, the seed, package versions, the git commit (when the
working directory is a git checkout), the rounds completed, the final evaluation, the selected
round (highest validation accuracy; its test accuracy is "test at best val"), the papers' "best
test accuracy" only when asked for (``FederatedTrainer(report_best_test=True)``) and labelled as
such, the wall time and the total bytes sent down to and up from clients.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from flcore.metric_names import GLOBAL, TEST_ACC, VAL_ACC

__all__ = ["write_metrics_csv", "write_results_json", "select_best", "package_versions", "git_commit",
           "atomic_write_text"]

#: Packages whose versions are recorded.
PACKAGES = ("flcore", "torch", "torchvision", "lightning", "torchmetrics", "numpy", "jsonargparse")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_metrics_csv(path: str | os.PathLike, history: list[dict[str, float]]) -> Path:
    """One row per round (``round`` first, then every metric seen in any round, sorted; blank
    where a round has no value, e.g. between evaluations).

    Args:
        path: the file, e.g. ``run_dir / "metrics.csv"``.
        history: the trainer's rounds, each ``{"round": r, metric: value, ...}``.
    """
    keys = sorted({k for row in history for k in row} - {"round"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["round", *keys], lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    return atomic_write_text(path, buf.getvalue())


def select_best(history: list[dict[str, float]], metric: str = VAL_ACC) -> dict[str, float] | None:
    """The evaluated round with the highest ``metric`` (the earliest on ties), or ``None`` if no
    round has it (no validation set)."""
    rows = [h for h in history if metric in h and not math.isnan(h[metric])]
    return max(rows, key=lambda h: h[metric]) if rows else None


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` and Python's."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` of ``cwd`` (with ``-dirty`` if the tree has changes), or ``None``."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _evaluation(row: dict[str, float] | None) -> dict[str, float] | None:
    if row is None:
        return None
    return {k: v for k, v in row.items() if k == "round" or k.startswith((GLOBAL, "dp/"))}


def write_results_json(path: str | os.PathLike, *, history: list[dict[str, float]], config: dict[str, Any] | None,
                       seed: int, status: str, wall_time_s: float, report_best_test: bool = False,
                       rounds_planned: int | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Write the run record (module docstring) and return it.

    Args:
        path: the file, e.g. ``run_dir / "results.json"``.
        history: the trainer's rounds.
        config: the resolved config (``None`` outside the CLI).
        seed: the run seed.
        status: ``"finished"``, ``"interrupted"``, ``"out_of_time"`` or ``"failed"``.
        wall_time_s: seconds of training in this process (a resumed run adds the earlier part).
        report_best_test: also record the highest test accuracy over the evaluated rounds
            (the papers' "best test accuracy": selection on the test set, optimistic).
        rounds_planned: ``trainer.rounds``.
        run_id: the run's id (kept across resumes; also in every checkpoint).
    """
    evals = [h for h in history if TEST_ACC in h]
    best = select_best(history)
    record: dict[str, Any] = {
        "status": status,
        "run_id": run_id,
        "rounds_completed": history[-1]["round"] if history else 0,
        "rounds_planned": rounds_planned,
        "seed": seed,
        "final": _evaluation(evals[-1] if evals else None),
        "selected_by_val": _evaluation(best),
        "test_acc_at_best_val": best.get(TEST_ACC) if best else None,
        "wall_time_s": wall_time_s,
        "bytes_down": sum(h.get("round/bytes_down", 0.0) for h in history),
        "bytes_up": sum(h.get("round/bytes_up", 0.0) for h in history),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "config": config,
    }
    if report_best_test:
        top = select_best(history, TEST_ACC)
        record["best_test_acc_paper_protocol"] = {
            "note": "highest test accuracy over evaluated rounds: chosen on the test set (the papers' protocol)",
            "round": top["round"] if top else None, "test_acc": top[TEST_ACC] if top else None}
    atomic_write_text(path, json.dumps(record, indent=1, default=str))
    return record
