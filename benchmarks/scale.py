"""Scale benchmark: memory, checkpoint and disk against the number of clients.

For FedAvg, SCAFFOLD, MOON (the FedAvg CNN) and FedBN (ResNet-20, local BatchNorm entries) over
100, 1,000, 3,597 (LEAF FEMNIST's number of writers) and 10,000 clients, each run in a fresh
process prints: peak RSS (``ru_maxrss``), the largest checkpoint, the run folder's bytes after
the run (client-state files included) and the median seconds per round. Every client holds 30
Fashion-MNIST training images drawn at random (a fixed-size split, so that a round costs the same
at every population: what grows with the population is only the client-resident state), 100
clients per round, 1 local epoch, batch 50, SGD lr 0.01 momentum 0.5, ``--rounds`` rounds
(default 8: up to 800 distinct clients visited), a checkpoint every round (the newest 3 kept, the
default).
FEMNIST's own data needs a download; its population is simulated on Fashion-MNIST here.

A second table is the setting in which SCAFFOLD's growth was first measured: IID over 2,000
clients (30 images each), 100 per round, 4 rounds of one local epoch.

Targets: peak RSS and largest checkpoint within 1.2x from 100 to 10,000 clients; SCAFFOLD at
2,000 clients <= 3 GB RSS and <= 0.5 GB per checkpoint. ``--source DIR`` runs another checkout
of flcore (e.g. a ``git worktree`` of an earlier commit) for a before/after comparison.

Usage:
    python benchmarks/scale.py                                 # all rows, ~25 min on 2 cores
    python benchmarks/scale.py --methods scaffold --clients 100 10000
    python benchmarks/scale.py --source /tmp/flcore-old --out benchmarks/results/scale/before.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

METHODS = ("fedavg", "scaffold", "moon", "fedbn")
CLIENTS = (100, 1000, 3597, 10000)


def _fixed_size_partition(per_client: int):
    from datamodules.partition import Partitioner

    class FixedSize(Partitioner):
        """Each client gets ``per_client`` samples drawn without replacement within the client
        (clients may share samples): a round costs the same at every population."""

        def __call__(self, labels, num_clients, rng):
            n = len(labels)
            return [sorted(rng.choice(n, per_client, replace=False)) for _ in range(num_clients)]

    return FixedSize()


def child(spec: dict) -> dict:
    """One run in this (fresh) process; returns its figures."""
    import numpy as np
    import torch
    from lightning import seed_everything

    from datamodules import Digits, FashionMNIST
    from datamodules.partition import IID
    from flcore import FederatedTrainer
    from flcore.strategies import FedAvg, Moon, Scaffold
    from lightning_modules import ClientModule, MoonModule, ScaffoldModule
    from lightning_modules.models import CNN, ResNet20

    torch.set_num_threads(1)
    seed_everything(0)
    method, n = spec["method"], spec["clients"]
    partition = IID() if spec.get("iid") else _fixed_size_partition(spec["per_client"])
    if spec.get("data", "fmnist") == "digits":  # scikit-learn's 8x8 digits: for a quick check of the script
        dm, size = Digits(num_clients=n, partition=partition, batch_size=50, seed=0), 8
    else:
        dm, size = FashionMNIST(root=str(ROOT / "data"), num_clients=n, partition=partition, batch_size=50, seed=0), 28
    opt = lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.5)  # noqa: E731
    net = ResNet20(1, 10) if method == "fedbn" else CNN(1, 10, size)
    module = {"scaffold": ScaffoldModule, "moon": MoonModule}.get(method, ClientModule)(net, optimizer=opt)
    strategy = {"scaffold": Scaffold, "moon": Moon}.get(method, FedAvg)()
    kwargs = dict(strategy=strategy, rounds=spec["rounds"], clients_per_round=spec["per_round"], eval_every=spec["rounds"],
                  local={"max_epochs": 1, "accelerator": "cpu"}, log_dir=spec["log_dir"], name=spec["name"],
                  checkpoint_every=1, checkpoint_interval_s=None)
    if method == "fedbn":
        kwargs["bn_policy"] = "local"
    if "client_state_mb" in inspect.signature(FederatedTrainer).parameters and spec.get("budget_mb", "default") != "default":
        kwargs["client_state_mb"] = spec["budget_mb"]
    trainer = FederatedTrainer(**kwargs)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - t0
    run = trainer.run_dir
    ckpts = [p.stat().st_size for p in (run / "checkpoints").glob("round_*.ckpt")]
    folder = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    per_round = [h["round/wall_time_s"] for h in trainer.history]
    store = getattr(trainer, "client_store", None)
    if not spec.get("keep_runs"):  # a run folder holds every visited client's state: gigabytes
        shutil.rmtree(run, ignore_errors=True)
    return {**{k: v for k, v in spec.items() if k not in ("log_dir", "name")},
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "largest_ckpt_mb": max(ckpts) / 2**20, "run_folder_mb": folder / 2**20,
            "s_per_round": statistics.median(per_round), "wall_s": wall,
            "client_state_budget_mb": getattr(trainer, "client_state_mb", None),
            "store_spills": getattr(store, "spills", None), "store_loads": getattr(store, "loads", None),
            "test_acc": float(trainer.history[-1].get("global/test_acc", np.nan))}


def run_one(spec: dict, source: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(source)}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env=env, cwd=source)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("SCALE ")]
    if out.returncode or not line:
        raise RuntimeError(f"{spec['name']} failed: {out.stderr[-3000:]}")
    return json.loads(line[-1][6:])


COLUMNS = ["method", "clients", "peak_rss_gb", "largest_ckpt_mb", "run_folder_mb", "s_per_round"]


def table(rows: list[dict], title: str) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r[c] if isinstance(r[c], (str, int)) else f"{r[c]:.2f}" for c in COLUMNS]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def flatness(rows: list[dict]) -> list[str]:
    """Per method: the ratio of the largest population's figures to the smallest's."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["clients"])
        if len(mine) > 1:
            lo, hi = mine[0], mine[-1]
            out.append(f"{method}: {hi['clients']} vs {lo['clients']} clients: peak RSS x{hi['peak_rss_gb'] / lo['peak_rss_gb']:.2f}, "
                       f"largest checkpoint x{hi['largest_ckpt_mb'] / lo['largest_ckpt_mb']:.2f} (target <= 1.2)")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--clients", nargs="+", type=int, default=list(CLIENTS))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--per-round", type=int, default=100)
    p.add_argument("--per-client", type=int, default=30)
    p.add_argument("--data", choices=["fmnist", "digits"], default="fmnist",
                   help="digits: scikit-learn's 8x8 digits instead (a quick check that needs no data package)")
    p.add_argument("--budget-mb", default="default", help="trainer.client_state_mb ('default': the trainer's own)")
    p.add_argument("--no-issue-setting", action="store_true", help="skip the SCAFFOLD 2,000-client row")
    p.add_argument("--keep-runs", action="store_true", help="keep each run folder (deleted once measured)")
    p.add_argument("--source", type=Path, default=ROOT, help="the flcore checkout to measure")
    p.add_argument("--log-dir", type=Path, default=Path("/tmp/flcore_scale_runs"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale" / "scale.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("SCALE " + json.dumps(child(json.loads(args.child))))
        return
    budget = args.budget_mb if args.budget_mb in ("default", "null") else float(args.budget_mb)
    budget = None if budget == "null" else budget
    commit = subprocess.run(["git", "-C", str(args.source), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"flcore scale benchmark at {commit}: Fashion-MNIST, {args.per_client} images per client, {args.per_round} "
          f"clients per round, 1 local epoch, {args.rounds} rounds; one process per run, 1 thread")
    rows, issue_rows = [], []
    for method in args.methods:
        for n in args.clients:
            spec = {"method": method, "clients": n, "rounds": args.rounds, "per_round": args.per_round,
                    "per_client": args.per_client, "budget_mb": budget, "data": args.data, "keep_runs": args.keep_runs, "log_dir": str(args.log_dir),
                    "name": f"{method}_{n}"}
            rows.append(run_one(spec, args.source))
            print("  " + "  ".join(f"{c}={rows[-1][c]}" if isinstance(rows[-1][c], (str, int)) else f"{c}={rows[-1][c]:.2f}"
                                   for c in COLUMNS), flush=True)
    if not args.no_issue_setting:
        spec = {"method": "scaffold", "clients": 2000, "rounds": 4, "per_round": 100, "iid": True, "budget_mb": budget,
                "keep_runs": args.keep_runs,
                "log_dir": str(args.log_dir), "name": "scaffold_2000_iid"}
        issue_rows.append(run_one(spec, args.source))
        print("  issue setting: " + "  ".join(f"{c}={issue_rows[-1][c]}" for c in COLUMNS), flush=True)
    notes = flatness(rows)
    for line in notes:
        print("  " + line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"commit": commit, "rows": rows, "scaffold_2000_iid": issue_rows,
                                    "flatness": notes}, indent=1) + "\n")
    md = [f"Scale benchmark at {commit} (`benchmarks/scale.py`): Fashion-MNIST, {args.per_client} images per client, "
          f"{args.per_round} clients per round, 1 local epoch, {args.rounds} rounds, a checkpoint every round.", "",
          table(rows, "By population"), "", *[f"- {n}" for n in notes]]
    if issue_rows:
        md += ["", table(issue_rows, "SCAFFOLD, IID over 2,000 clients, 100 per round, 4 rounds")]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
