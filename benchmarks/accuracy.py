"""Accuracy benchmark: FedAvg, FedMR and FedCross on real data (Fashion-MNIST, FedAvg CNN).

Every run is a real ``flcore fit`` of the repository's configs (``configs/*_fmnist_cnn.yaml``)
with the scale overridden from the command line, run as subprocesses with one thread each,
``--workers`` at a time. Prints a table of final and best global test accuracy (mean ± std over
seeds) and writes a JSON file with every learning curve. TensorBoard run directories are kept
under ``--out``'s folder (``tensorboard --logdir benchmarks/results/runs``).

Default scale (fits about an hour on 2 CPU cores): 100 clients, 10 per round, Dir(0.1) and
Dir(0.5), 1 local epoch, batch 50, SGD lr 0.01 momentum 0.5 for every method, 30 rounds, 2 seeds.
The papers run 5 local epochs for 1,000 to 2,000 rounds; this is far shorter.

Usage:
    python benchmarks/accuracy.py                      # the default grid (FedAvg, FedMR, FedCross, PM-DA)
    python benchmarks/accuracy.py --betas 0.1 --seeds 0 --methods FedAvg FedProx SCAFFOLD FedNova MOON CluSamp FedGen
    python benchmarks/accuracy.py --rounds 5 --seeds 0 --betas 0.5 --methods FedAvg FedCross
    python benchmarks/accuracy.py --table hetero     # FedAvg/FedProx layer-wise, FedIN, FedIN (+Noise), same-shape
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

#: method name -> (config, extra overrides)
METHODS: dict[str, tuple[str, list[str]]] = {
    "FedAvg": ("configs/fedavg_fmnist_cnn.yaml", []),
    "FedMR": ("configs/fedmr_fmnist_cnn.yaml", []),
    "FedCross": ("configs/fedcross_fmnist_cnn.yaml", []),
    "FedCross w/ PM-DA": ("configs/fedcross_fmnist_cnn.yaml", [
        "--trainer.strategy.init_args.propeller_rounds", "10",
        "--trainer.strategy.init_args.num_propellers", "9",
        "--trainer.strategy.init_args.dynamic_alpha_rounds", "10",
    ]),
    "FedProx": ("configs/fedprox_fmnist_cnn.yaml", []),
    "SCAFFOLD": ("configs/scaffold_fmnist_cnn.yaml", []),
    "FedNova": ("configs/fednova_fmnist_cnn.yaml", []),
    "MOON": ("configs/moon_fmnist_cnn.yaml", []),
    "CluSamp": ("configs/clusamp_fmnist_cnn.yaml", []),
    "FedGen": ("configs/fedgen_fmnist_cnn.yaml", []),
}
#: the default grid: the papers' methods; the baselines are opt-in (--methods) for time
DEFAULT_METHODS = ["FedAvg", "FedMR", "FedCross", "FedCross w/ PM-DA"]

#: heterogeneous-model table (``--table hetero``): ResNet10/14/18/22/26 spread over the clients
HETERO_METHODS: dict[str, tuple[str, list[str]]] = {
    "FedAvg (layer-wise)": ("configs/hetero_fedavg_fmnist.yaml", []),
    "FedProx (layer-wise)": ("configs/hetero_fedprox_fmnist.yaml", []),
    "FedIN": ("configs/fedin_fmnist.yaml", []),
    "FedIN (+Noise)": ("configs/fedin_noise_fmnist.yaml", []),
    "FedIN (same-shape)": ("configs/fedin_same_shape_fmnist.yaml", []),
    "InclusiveFL": ("configs/inclusivefl_fmnist.yaml", []),
    "HeteroFL": ("configs/heterofl_fmnist.yaml", []),
    "FedRolex": ("configs/fedrolex_fmnist.yaml", []),
}
METHODS.update(HETERO_METHODS)


DEFAULT_OUT = ROOT / "benchmarks" / "results" / "accuracy.json"


def _beta(text: str):
    return "iid" if text.lower() == "iid" else float(text)


def run_name(method: str, beta, seed: int) -> str:
    slug = method.lower().replace(" w/ ", "_").replace(" ", "_").replace("-", "")
    slug = "".join(ch for ch in slug if ch.isalnum() or ch == "_")
    return f"{slug}_beta{beta}_seed{seed}"


def launch(method: str, beta: float, seed: int, args) -> dict:
    """One ``flcore fit`` subprocess; returns its learning curve from the final checkpoint."""
    config, extra = METHODS[method]
    name = run_name(method, beta, seed)
    cmd = [
        sys.executable, "-m", "flcore", "fit", "--config", str(ROOT / config), *extra,
        "--seed_everything", str(seed),
        "--data.init_args.seed", str(seed),
        "--data.init_args.root", args.data_root,
        *(["--data.init_args.partition", "datamodules.IID"] if beta == "iid" else
          ["--data.init_args.partition.init_args.beta", str(beta)]),
        "--data.init_args.num_clients", str(args.num_clients),
        "--trainer.clients_per_round", str(args.clients_per_round),
        "--trainer.rounds", str(args.rounds),
        "--trainer.eval_every", str(args.eval_every),
        "--trainer.checkpoint_every", "0",
        "--trainer.local.max_epochs", str(args.local_epochs),
        *(["--model.init_args.net.init_args.width", str(args.width), "--data.init_args.batch_size", str(args.batch_size)]
          if method in HETERO_METHODS else ["--model.init_args.optimizer.init_args.momentum", str(args.momentum)]),
        "--trainer.log_dir", str(args.runs_dir),
        "--trainer.name", name,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    ckpt = sorted((args.runs_dir / name).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)[-1]
    history = torch.load(ckpt, weights_only=True)["history"]
    curve = [(h["round"], h["global/test_acc"]) for h in history if "global/test_acc" in h]
    print(f"  done {name}: final {curve[-1][1]:.4f}  best {max(a for _, a in curve):.4f}  ({wall:.0f} s)", flush=True)
    return {"method": method, "beta": beta, "seed": seed, "curve": curve, "wall_s": wall,
            "final": curve[-1][1], "best": max(a for _, a in curve), "run_dir": str(ckpt.parents[1])}


def _ms(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:6.2f} ± {std:4.2f}"


def table(results: list[dict], betas: list[float], methods: list[str]) -> str:
    cols = ["IID" if b == "iid" else f"Dir({b})" for b in betas]
    head = "| method | " + " | ".join(f"{c} final | {c} best" for c in cols) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(betas))]
    for m in methods:
        cells = []
        for b in betas:
            rs = [r for r in results if r["method"] == m and r["beta"] == b]
            cells += [_ms([r["final"] for r in rs]), _ms([r["best"] for r in rs])] if rs else ["-", "-"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", choices=["homo", "hetero"], default="homo",
                   help="hetero: the heterogeneous-model table (FedIN paper's Table 1 setting, scaled down)")
    p.add_argument("--methods", nargs="+", default=None, choices=list(METHODS))
    p.add_argument("--betas", nargs="+", type=_beta, default=None, help="Dirichlet betas; 'iid' for IID")
    p.add_argument("--width", type=int, default=8, help="hetero: ResNet family width (paper: 64)")
    p.add_argument("--batch-size", type=int, default=16, help="hetero: local batch size (paper: 16)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--num-clients", type=int, default=100)
    p.add_argument("--clients-per-round", type=int, default=10)
    p.add_argument("--momentum", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    hetero = args.table == "hetero"
    args.methods = args.methods or (list(HETERO_METHODS) if hetero else DEFAULT_METHODS)
    args.betas = args.betas or (["iid", 0.5] if hetero else [0.1, 0.5])
    if args.out == DEFAULT_OUT and hetero:
        args.out = DEFAULT_OUT.with_name("accuracy_hetero.json")
    args.runs_dir = args.out.parent / "runs"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid = [(m, b, s) for b in args.betas for s in args.seeds for m in args.methods]
    model = f"ResNet10-26 (width {args.width}), batch {args.batch_size}, Adam" if hetero else f"CNN, momentum {args.momentum}"
    print(f"accuracy benchmark: {len(grid)} runs; Fashion-MNIST, {model}, {args.num_clients} clients, "
          f"{args.clients_per_round} per round, {args.local_epochs} local epoch(s), {args.rounds} rounds, "
          f"seeds {args.seeds}", flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(lambda g: launch(*g, args), grid))
    wall = time.perf_counter() - t0
    text = table(results, args.betas, args.methods)
    print(text)
    print(f"total wall time {wall / 60:.1f} min")
    scale = {k: v for k, v in vars(args).items() if k not in ("out", "runs_dir")}
    args.out.write_text(json.dumps({"scale": scale, "wall_s": wall, "table": text, "runs": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
