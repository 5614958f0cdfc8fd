"""GPU check: flcore's round against a hand-written loop on one GPU, and clients sharing the GPU.

Synthetic CIFAR-shaped data (3x32x32, 10 classes; a GPU machine has no data sets), SGD lr 0.01
momentum 0.5, the data in host memory (each mini-batch copied to the device, as flcore does).

1. ``round``: for the LeNet CNN, the FedAvg CNN, ResNet-20 and VGG-16, with AMP (bf16 autocast,
   ``precision: bf16-mixed``) and channels-last: flcore's trainer round
   (``flcore.round.run_round`` with the sequential executor and ``accelerator: gpu``) against a
   hand-written PyTorch round on the same clients (load the global weights, a fresh SGD, E epochs
   of mini-batches, sample-weighted average), alternating, median over rounds. Prints
   samples/s of both and the ratio hand / flcore (1.0 = as fast as the hand loop).
2. ``shared``: several small-model clients at once on the one GPU: the LeNet CNN round through
   the process pool with 1, 2 and 4 worker processes sharing the device, samples/s and speed-up
   over one worker.

``--dry`` runs every code path on the CPU with tiny sizes in a few seconds (the test suite does);
its figures mean nothing. On a GPU machine ``benchmarks/gpu_check.sh`` runs the full check
(about 5 minutes on one recent GPU) and writes ``benchmarks/results/gpu_check.json``.

Usage:
    python benchmarks/gpu_check.py --dry
    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from lightning_modules.models import CNN, VGG16, LeNetCNN, ResNet20  # noqa: E402
from speed import Synthetic, _flcore_round_driver, hand_round, timed_rounds  # noqa: E402

MODELS = {
    "LeNet CNN": lambda: LeNetCNN(3, 10, 32),
    "FedAvg CNN": lambda: CNN(3, 10, 32),
    "ResNet-20": lambda: ResNet20(3, 10),
    "VGG-16": lambda: VGG16(3, 10),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def section_round(args, device: str, accelerator: str) -> list[dict]:
    from flcore.samplers import UniformSampler
    from flcore.seeding import STREAM_SAMPLER, round_rng

    rows = []
    precision = "bf16-mixed"
    for name, make in MODELS.items():
        dm = Synthetic((3, 32, 32), args.samples, args.clients, batch_size=args.batch)
        dm.setup("fit")
        run_round, close = _flcore_round_driver(dm, make, args.per_round, args.epochs, True,
                                                local={"accelerator": accelerator, "precision": precision})
        hand_net = make().to(memory_format=torch.channels_last)
        hand_state = {k: v.clone() for k, v in hand_net.state_dict().items()}
        clients = run_round(0)  # warm-up: Lightning builds its loops, cuDNN picks its kernels
        hand_round(hand_net, dm, clients, hand_state, args.epochs, True, device=device, amp_dtype=torch.bfloat16)
        t_fl, t_hand = [], []
        for r in range(1, args.rounds + 1):
            for first in ((0, 1) if r % 2 else (1, 0)):
                _sync(device)
                t0 = time.perf_counter()
                if first == 0:
                    run_round(r)
                    _sync(device)
                    t_fl.append(time.perf_counter() - t0)
                else:
                    same = UniformSampler().sample(r, dm.num_clients, args.per_round, round_rng(0, r, STREAM_SAMPLER))
                    hand_state = hand_round(hand_net, dm, same, hand_state, args.epochs, True, device=device,
                                            amp_dtype=torch.bfloat16)
                    _sync(device)
                    t_hand.append(time.perf_counter() - t0)
        close()
        samples = args.per_round * args.samples * args.epochs
        fl, hand = statistics.median(t_fl), statistics.median(t_hand)
        rows.append({"model": name, "precision": precision, "channels_last": True, "rounds": len(t_fl),
                     "flcore_samples_per_s": samples / fl, "hand_samples_per_s": samples / hand, "ratio": hand / fl})
        print("  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
              flush=True)
    return rows


def section_shared(args, accelerator: str) -> list[dict]:
    from flcore.executors import ProcessPoolExecutor

    rows = []
    base = None
    for workers in args.workers:
        dm = Synthetic((3, 32, 32), args.samples, args.clients, batch_size=args.batch)
        dm.setup("fit")
        times = timed_rounds(*_flcore_round_driver(
            dm, MODELS["LeNet CNN"], args.per_round, args.epochs, True,
            executor=ProcessPoolExecutor(num_workers=workers, threads_per_worker=1),
            local={"accelerator": accelerator, "precision": "bf16-mixed"}), args.rounds)
        rate = args.per_round * args.samples * args.epochs / statistics.median(times)
        base = base or rate
        rows.append({"model": "LeNet CNN", "workers": workers, "samples_per_s": rate, "speedup_over_1": rate / base})
        print("  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
              flush=True)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes: check the code paths in seconds")
    p.add_argument("--sections", nargs="+", choices=["round", "shared"], default=["round", "shared"])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.dry:
        args.clients, args.per_round, args.samples, args.batch, args.epochs, args.rounds = 4, 2, 8, 4, 1, 1
        args.workers = [1, 2]
        global MODELS
        MODELS = {"LeNet CNN": MODELS["LeNet CNN"], "ResNet-20": MODELS["ResNet-20"]}
        device, accelerator = "cpu", "cpu"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device (use --dry to check the code paths on the CPU)")
        args.clients, args.per_round, args.samples, args.batch, args.epochs, args.rounds = 100, 10, 500, 50, 2, 5
        args.workers = [1, 2, 4]
        device, accelerator = "cuda", "gpu"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run)"
    print(f"flcore GPU check: {gpu}; torch {torch.__version__}; {args.per_round} clients x {args.samples} samples x "
          f"{args.epochs} epochs per round, batch {args.batch}, bf16 AMP, channels-last")
    out: dict = {"gpu": gpu, "torch": torch.__version__, "dry": args.dry}
    if "round" in args.sections:
        print("[round] flcore round vs hand-written loop")
        out["round"] = section_round(args, device, accelerator)
    if "shared" in args.sections:
        print("[shared] worker processes sharing the device")
        out["shared"] = section_shared(args, accelerator)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
