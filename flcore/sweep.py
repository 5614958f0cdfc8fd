"""``flcore sweep``: run a grid of experiments, resumably, then report on it.

A grid file (YAML) names base configs and the values to cross with them::

    log_dir: runs/repro                 # where every run folder goes
    configs:                            # label -> config file (or a list of files: label = stem)
      fedavg: configs/fedavg_fmnist_lenet.yaml
      fedcross: configs/fedcross_fmnist_lenet.yaml
      fedcross_pm_equal:                # a variant: a config plus arguments of its own
        config: configs/fedcross_pm_fmnist_lenet.yaml
        args: [--trainer.strategy.init_args.propeller_weighting, equal]
    grid:                               # dotted keys -> values; the cartesian product is run
      seed_everything: [0, 1, 2]
      data.init_args.partition.init_args.beta: [0.1, 0.5]
      # linked keys vary together (not crossed); the run is named by the first key:
      # "seed_everything,data.init_args.seed": [[1, 1], [2, 2]]   -> a new partition per seed
    args: [--trainer.rounds, "500"]     # fixed extra arguments for every run (optional)

Every grid point is one ``flcore fit`` process named ``<label>__<key>=<value>...`` (the last
part of each dotted key; ``seed_everything`` becomes ``seed``), so :mod:`flcore.report` groups
seeds together. ``--workers`` processes run at once, in the order of the file (configs, then grid
values), each with ``--threads`` torch threads (default ``cores // workers``); any executor can be set inside the configs. Resumable: a run whose latest
``results.json`` says ``finished`` is skipped, and one with a checkpoint continues from it
(``--ckpt_path last``), so a sweep can be stopped and started again at will.

Several sweeps may share one ``log_dir`` (two sittings, two machines on a shared disk, a second
sweep started to use a freed core): each run is trained under an exclusive lock on
``<run>/sweep.lock`` (``fcntl.flock``, released when its process ends), and a sweep skips a run
another live process holds (status ``running``). ``--only PATTERN ...`` (shell-style patterns on
the run names) runs part of a grid.

    flcore sweep grid.yaml --workers 2
    flcore sweep grid.yaml --only 'fedmr*' 'fedcross_pm*'   # part of it, e.g. in a second sitting
    flcore report runs/repro --out benchmarks/results/repro
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import yaml

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one sweep per log_dir
    fcntl = None

from flcore.checkpoint import newest_version

__all__ = ["expand", "run_status", "select", "run_lock", "main"]


def _short(key: str) -> str:
    return "seed" if key == "seed_everything" else key.rsplit(".", 1)[-1]


def expand(grid_file: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of a grid file: ``[{"name", "config", "args": [...]}, ...]`` in a stable order.

    A ``configs`` entry is a path, or ``{"config": path, "args": [...]}`` (a variant of a config
    under its own label).

    Raises:
        ValueError: no ``configs``; a variant without ``config``; a ``grid`` value that is not a list.
    """
    configs = grid_file.get("configs")
    if isinstance(configs, list):
        configs = {Path(c).stem: c for c in configs}
    if not configs:
        raise ValueError("grid: 'configs' must name at least one config file")
    grid = grid_file.get("grid") or {}
    for key, values in grid.items():
        if not isinstance(values, list):
            raise ValueError(f"grid.{key}: must be a list of values, got {values!r}")
        width = len(key.split(","))
        if width > 1 and not all(isinstance(v, list) and len(v) == width for v in values):
            raise ValueError(f"grid.{key}: linked keys take a list of [{', '.join(['value'] * width)}] lists, got {values!r}")
    extra = [str(a) for a in grid_file.get("args") or []]
    log_dir = str(grid_file.get("log_dir", "runs/sweep"))
    runs = []
    for label, entry in configs.items():
        own: list[str] = []
        config = entry
        if isinstance(entry, dict):
            if "config" not in entry:
                raise ValueError(f"configs.{label}: a variant needs 'config' (a file) and optional 'args', got {entry!r}")
            config, own = entry["config"], [str(a) for a in entry.get("args") or []]
        for combo in itertools.product(*grid.values()) if grid else [()]:
            point = dict(zip(grid, combo))
            # linked keys ("a,b": [[1, 1], [2, 2]]) vary together; the run is named by the first
            name = "__".join([label, *(f"{_short(k.split(',')[0])}={v[0] if ',' in k else v}" for k, v in point.items())])
            args = [arg for k, v in point.items()
                    for kk, vv in (zip(k.split(","), v) if "," in k else [(k, v)]) for arg in (f"--{kk}", str(vv))]
            runs.append({"name": name, "config": str(config),
                         "args": [*args, *own, *extra, "--trainer.log_dir", log_dir, "--trainer.name", name],
                         "run_root": str(Path(log_dir) / name)})
    return runs


def run_status(run_root: str | Path) -> str:
    """Of the newest run folder (``version_N``), as ``--ckpt_path last`` sees it: ``"finished"``,
    ``"resumable"`` (it has a checkpoint) or ``"new"`` (none, or no checkpoint yet)."""
    newest = newest_version(run_root)
    if newest is None:
        return "new"
    results = newest / "results.json"
    if results.is_file() and json.loads(results.read_text()).get("status") == "finished":
        return "finished"
    return "resumable" if any((newest / "checkpoints").glob("*.ckpt")) else "new"


@contextlib.contextmanager
def run_lock(run_root: str | Path) -> Iterator[bool]:
    """Hold the exclusive lock of a run (``<run_root>/sweep.lock``) for the ``with`` block.

    Yields:
        ``True`` if this process now holds it, ``False`` if another live process does (the lock
        is ``fcntl.flock``, so a killed sweep leaves no stale lock). Always ``True`` without
        ``fcntl`` (Windows).
    """
    if fcntl is None:
        yield True
        return
    Path(run_root).mkdir(parents=True, exist_ok=True)
    with open(Path(run_root) / "sweep.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _held_elsewhere(run_root: str | Path) -> bool:
    if not Path(run_root).is_dir():
        return False
    with run_lock(run_root) as mine:
        return not mine


def select(runs: list[dict[str, Any]], patterns: list[str] | None) -> list[dict[str, Any]]:
    """The runs whose name matches any of the shell-style ``patterns`` (all runs if ``None``).

    Raises:
        ValueError: a pattern that matches no run of the grid (names the pattern and the runs).
    """
    if patterns is None:
        return runs
    names = [r["name"] for r in runs]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(f"--only: {pat!r} matches no run of the grid; the runs are: {', '.join(names)}")
    return [r for r in runs if any(fnmatch.fnmatchcase(r["name"], pat) for pat in patterns)]


def _launch(run: dict[str, Any], threads: int, log: Path) -> tuple[str, str, float]:
    """``(name, outcome, wall seconds)``; outcome: ``running`` (held by another sweep),
    ``skipped`` (finished before), ``done`` or ``failed``."""
    with run_lock(run["run_root"]) as mine:
        if not mine:
            return run["name"], "running", 0.0
        return (run["name"], *_train(run, threads, log))


def _train(run: dict[str, Any], threads: int, log: Path) -> tuple[str, float]:
    status = run_status(run["run_root"])
    if status == "finished":
        return "skipped", 0.0
    cmd = [sys.executable, "-m", "flcore", "fit", "--config", run["config"], *run["args"]]
    if status == "resumable":
        cmd += ["--ckpt_path", "last"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    return ("failed" if code else "done"), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flcore sweep", description="Run a grid of experiments, resumably.")
    p.add_argument("grid", help="grid YAML (see flcore.sweep)")
    p.add_argument("--workers", type=int, default=1, help="runs at once (>= 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores // workers)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their status, run nothing")
    p.add_argument("--only", nargs="+", metavar="PATTERN", default=None,
                   help="run only the runs whose name matches one of these shell-style patterns")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers: must be >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads: must be >= 1, got {args.threads}")
    try:
        runs = expand(yaml.safe_load(Path(args.grid).read_text()) or {})
    except (OSError, yaml.YAMLError, ValueError) as err:
        p.error(f"grid: {str(err).splitlines()[0]}")
    try:
        runs = select(runs, args.only)
    except ValueError as err:
        p.error(str(err))
    for run in runs:
        status = "running" if _held_elsewhere(run["run_root"]) else run_status(run["run_root"])
        print(f"{status:9s} {run['name']}")
    if args.dry_run:
        return 0
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    with ThreadPoolExecutor(args.workers) as pool:
        outcomes = list(pool.map(lambda r: _launch(r, threads, Path(r["run_root"]) / "sweep.log"), runs))
    for name, outcome, wall in outcomes:
        print(f"{outcome:7s} {wall:8.1f} s  {name}")
    return 1 if any(outcome == "failed" for _, outcome, _ in outcomes) else 0
