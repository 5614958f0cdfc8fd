"""Speed benchmark: flcore against the physical limits of this machine.

Eight sections (``--sections``), each printed as a table and written to ``--out`` (JSON):

1. ``local``: the same client work run (a) by flcore's ``SequentialExecutor`` through the reusable
   Lightning Trainer and (b) by a hand-written PyTorch loop on the same tensors (same model,
   optimizer, batch order source, channels-last setting). Ratio = hand time / flcore time
   (target >= 0.95 for CNN and ResNet-20, >= 0.9 for the tiny MLP). The two are interleaved and
   repeated; medians are reported.
2. ``server``: the server step for K models of CNN / ResNet-20 / VGG-16 (FedAvg, FedMR
   recombination, FedCross lowest-similarity with its similarity matrix, layer-wise heterogeneous
   averaging) against one in-place pass over the K state_dicts (``_foreach_mul_`` by 1: every
   byte read and written once, the memory-bandwidth floor). Target <= 2x.
3. ``memory``: peak resident memory of a real FedCross run (K = 10 VGG-16 middleware models, 2
   rounds on a few synthetic samples per client, in a fresh process) in model copies:
   ``(peak RSS - RSS before the model existed) / model bytes``, the RSS before taken after a
   warm-up FedCross fit of a tiny CNN in the same process (Lightning, TensorBoard and the
   allocator's arenas set up, about 50 MB that are no model copy). Target: K + 3 (the K
   middleware models, and the local net with its gradient and momentum). Run under glibc's
   default allocator settings and with a fixed mmap threshold (:data:`ALLOCATORS`), each
   ``--memory-repeats`` times in fresh processes (median, lowest and highest).
4. ``rounds``: median seconds per round (evaluation excluded) of the accuracy benchmark's
   Fashion-MNIST CNN workload (100 clients, 10 per round, 5 local epochs, batch 50) for each
   executor. Flower's simulation is compared if ``flwr`` is installed (it is not a dependency).
5. ``round``: whole FedAvg rounds, flcore's trainer round (sampling, dispatch, the local updates
   through the reusable Lightning Trainer, aggregation; evaluation excluded) against a
   hand-written PyTorch round on the same clients (load the global weights, a fresh SGD, E epochs
   of shuffled mini-batches indexed from the in-memory tensors, sample-weighted average), in one
   process, alternating which goes first, median over rounds. Cases: FedAvg CNN (E = 2) and the
   authors' LeNet CNN (E = 5) on Fashion-MNIST (100 clients Dir(0.1), 10 per round, B = 50);
   a 64-32-10 MLP on Digits (20 clients Dir(0.5), 10 per round, E = 5, B = 20); and a
   cross-device case (LeNet, 1,000 clients of 20 Fashion-MNIST samples, 100 per round, E = 1,
   B = 20). Targets (hand / flcore): >= 0.95, 0.95, 0.9, 0.8.
6. ``scaling``: LeNet-CNN rounds per second of the process pool and Ray with 2 workers x 1 thread
   against 1 worker x 1 thread (and the sequential executor at 1 and 2 threads), Fashion-MNIST,
   100 clients Dir(0.1), 10 per round, E = 5. Target >= 1.7x.

7. ``layout``: channels-last against the default (contiguous) memory format for the conv nets
   (LeNet, FedAvg CNN, ResNet-20 and VGG-16 on 32x32x3 and the two CNNs on 28x28x1 too): median
   seconds of 20 SGD steps at B = 50 (forward, cross-entropy, backward, step), alternating.
   Speed-up = contiguous time / channels-last time; the configs turn channels-last on where it
   is >= 1.05 on this CPU.
8. ``general``: the same FedAvg rounds (the ``round`` cases) with the net in a user's ordinary
   LightningModule (the general path: one plain ``Trainer.fit`` per client, automatic
   optimization) against ``ClientModule`` (the fast path); ratio = general / fast seconds per
   round. Run it alone: ``--sections general --out benchmarks/results/general_path.json``.

Scaled-down by default to fit a few minutes on 2 CPU cores (stated in the output); ``--full``
uses the issue's sizes (local: 10 clients x 500 samples x 5 epochs; rounds: 5 local epochs).
Run it on an otherwise idle machine: other processes distort every ratio.

Usage:
    python benchmarks/speed.py                       # all sections, scaled down
    python benchmarks/speed.py --sections local server --repeats 5
    python benchmarks/speed.py --full
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from datamodules.base import FederatedDataModule  # noqa: E402
from flcore.executors import SequentialExecutor  # noqa: E402
from flcore.functional import layerwise_average, weighted_average  # noqa: E402
from flcore.local import LocalRunner  # noqa: E402
from flcore.strategies import FedCross, FedMR  # noqa: E402
from flcore.messages import ClientTask  # noqa: E402
from lightning_modules import ClientModule  # noqa: E402
from lightning_modules.models import CNN, VGG16, LeNetCNN, ResNet20  # noqa: E402


class Synthetic(FederatedDataModule):
    """Random inputs of a given shape, IID over ``num_clients`` (timing only; never learns)."""

    def __init__(self, shape: tuple[int, ...], samples_per_client: int, num_clients: int, batch_size: int = 50):
        super().__init__(num_clients=num_clients, batch_size=batch_size)
        self.input_shape, self.num_classes, self.n = tuple(shape), 10, samples_per_client * num_clients

    def load(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n, *self.input_shape, generator=g)
        y = torch.randint(0, 10, (self.n,), generator=g)
        return x, y, x[:100], y[:100]


class TinyMLP(nn.Module):
    """64 -> 32 -> 10 on 1x8x8 inputs (a Digits-sized model: per-step overhead dominates)."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


MODELS = {
    "CNN": (lambda: CNN(3, 10, 32), (3, 32, 32), True),
    "ResNet-20": (lambda: ResNet20(3, 10), (3, 32, 32), True),
    "tiny MLP": (TinyMLP, (1, 8, 8), False),
}


#: picklable by reference (workers of the process pool and Ray must rebuild it)
_sgd = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.5)


def _sgd_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              amp_dtype: torch.dtype | None = None) -> None:
    """One hand-written mini-batch step: forward (under ``torch.autocast`` with ``amp_dtype``),
    cross-entropy, backward, optimizer step."""
    if amp_dtype is None:
        loss = F.cross_entropy(net(x), y)
    else:
        with torch.autocast(x.device.type, dtype=amp_dtype):
            loss = F.cross_entropy(net(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def hand_loop(net: nn.Module, dm: FederatedDataModule, clients: list[int], state, epochs: int, channels_last: bool,
              device: str = "cpu", amp_dtype: torch.dtype | None = None):
    """What a researcher would write by hand: the floor flcore is measured against. On another
    ``device`` each mini-batch is copied there (the data stay in host memory, as flcore's do);
    ``amp_dtype`` runs the forward pass under ``torch.autocast`` (e.g. ``torch.bfloat16``)."""
    out = []
    net.to(device)
    for cid in clients:
        net.load_state_dict(state)
        net.train()
        opt = _sgd(net.parameters())
        idx = torch.as_tensor(dm.client_indices[cid])
        g = torch.Generator().manual_seed(cid)
        for _ in range(epochs):
            perm = idx[torch.randperm(len(idx), generator=g)]
            for start in range(0, len(perm), dm.batch_size):
                b = perm[start : start + dm.batch_size]
                x, y = dm.x_train[b].to(device, non_blocking=True), dm.y_train[b].to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                _sgd_step(net, opt, x, y, amp_dtype)
        out.append({k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()})
    return out


def section_local(args) -> list[dict]:
    rows = []
    for name, (make, shape, cl) in MODELS.items():
        n_clients, n_samples, epochs = args.local_clients, args.local_samples, args.local_epochs
        if name == "ResNet-20" and not args.full:
            n_samples = max(50, n_samples // 2)  # 3x slower per sample; keep the section short
        dm = Synthetic(shape, n_samples, n_clients)
        dm.setup("fit")
        net = make()
        if cl:
            net = net.to(memory_format=torch.channels_last)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        runner = LocalRunner(ClientModule(net, optimizer=_sgd, channels_last=cl), dm,
                             {"max_epochs": epochs, "accelerator": "cpu"}, seed=0)
        hand_net = make().to(memory_format=torch.channels_last) if cl else make()
        executor = SequentialExecutor()
        tasks = [ClientTask(cid=c, state=state, slot=i) for i, c in enumerate(range(n_clients))]
        executor.run(0, tasks[:1], runner)  # warm-up (first fit builds Lightning's loops)
        hand_loop(hand_net, dm, [0], state, 1, cl)
        t_fl, t_hand = [], []
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            executor.run(rep, tasks, runner)
            t_fl.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            hand_loop(hand_net, dm, list(range(n_clients)), state, epochs, cl)
            t_hand.append(time.perf_counter() - t0)
        fl, hand = statistics.median(t_fl), statistics.median(t_hand)
        work = n_clients * n_samples * epochs
        target = 0.9 if name == "tiny MLP" else 0.95
        rows.append({"model": name, "work": f"{n_clients} clients x {n_samples} samples x {epochs} epochs",
                     "flcore_s": fl, "hand_s": hand, "ratio": hand / fl, "target": target,
                     "flcore_samples_per_s": work / fl, "hand_samples_per_s": work / hand})
        _print_row(rows[-1], ["model", "work", "flcore_s", "hand_s", "ratio", "target", "flcore_samples_per_s"])
    return rows


def _floor(states) -> None:
    for s in states:
        torch._foreach_mul_([t for t in s.values() if t.is_floating_point()], 1.0)


def section_server(args) -> list[dict]:
    k = args.k
    makers = {"CNN": lambda: CNN(3, 10, 32), "ResNet-20": lambda: ResNet20(3, 10), "VGG-16": lambda: VGG16(3, 10)}
    rows = []
    for name, make in makers.items():
        base = make().state_dict()
        g = torch.Generator().manual_seed(0)
        states = [{key: (v + 0.01 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v.clone()
                   for key, v in base.items()} for _ in range(k)]
        mb = sum(t.numel() * t.element_size() for t in base.values()) / 2**20
        fedcross, fedmr = FedCross(alpha=0.99, selection="lowest_similarity"), FedMR()
        ops = {
            "one in-place pass (floor)": lambda: _floor(states),
            "FedAvg": lambda: weighted_average(states, [1.0] * k),
            "FedMR recombine": lambda: fedmr.combine(1, [dict(s) for s in states], np.random.default_rng(0)),
            "FedCross lowest-sim": lambda: fedcross.combine(1, [dict(s) for s in states], np.random.default_rng(0)),
            "layer-wise average": lambda: layerwise_average(states),
        }
        times = {op: [] for op in ops}
        for _ in range(args.repeats):
            for op, fn in ops.items():
                t0 = time.perf_counter()
                fn()
                times[op].append(time.perf_counter() - t0)
        floor = statistics.median(times["one in-place pass (floor)"])
        for op in ops:
            t = statistics.median(times[op])
            rows.append({"model": name, "model_MiB": mb, "K": k, "op": op, "ms": 1e3 * t, "x_floor": t / floor})
            _print_row(rows[-1], ["model", "op", "ms", "x_floor"])
    return rows


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(k: int) -> dict:
    """Runs in a fresh process: a real 2-round FedCross fit with K VGG-16 models."""
    from flcore.trainer import FederatedTrainer

    torch.set_num_threads(1)
    dm = Synthetic((3, 32, 32), 4, k, batch_size=4)
    dm.setup("fit")
    warm = FederatedTrainer(strategy=FedCross(alpha=0.99, selection="lowest_similarity"), rounds=2,
                            clients_per_round=k, local={"max_epochs": 1, "accelerator": "cpu"},
                            log_dir=str(ROOT / "benchmarks" / "results" / "speed_runs"), name="memory_warmup")
    warm.fit(ClientModule(CNN(3, 10, 32, channels=(4, 8), hidden=16), optimizer=_sgd), dm)
    del warm
    gc.collect()
    before = _rss_bytes()
    net = VGG16(3, 10)
    model_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    trainer = FederatedTrainer(strategy=FedCross(alpha=0.99, selection="lowest_similarity"), rounds=2,
                               clients_per_round=k, local={"max_epochs": 1, "accelerator": "cpu"},
                               log_dir=str(ROOT / "benchmarks" / "results" / "speed_runs"), name="memory")
    trainer.fit(ClientModule(net, optimizer=_sgd), dm)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"K": k, "model_MiB": model_bytes / 2**20, "peak_over_base_MiB": (peak - before) / 2**20,
            "copies": (peak - before) / model_bytes, "target_copies": k + 3}


#: glibc's allocator settings the memory section runs under: its default, whose mmap threshold
#: grows to the size of the largest freed block (up to 32 MiB), so freed model-sized tensors stay in
#: the heap and count in the RSS; and a fixed 128 KiB threshold (``MALLOC_MMAP_THRESHOLD_``), which
#: returns every freed block above it to the system at once.
ALLOCATORS = {"glibc default": {}, "mmap threshold 128 KiB": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def section_memory(args) -> list[dict]:
    """Each allocator setting's copy count: the median of ``--memory-repeats`` fresh processes
    (the peak RSS varies by a few tenths of a copy between identical runs, with where the
    allocator's free chunks happen to lie), with the lowest and highest."""
    rows = []
    for allocator, env in ALLOCATORS.items():
        runs = []
        for _ in range(args.memory_repeats):
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(args.k)], capture_output=True,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("MEMORY ")]
            if out.returncode or not line:
                raise RuntimeError(f"memory child failed: {out.stderr[-2000:]}")
            runs.append(json.loads(line[-1][7:]))
        copies = sorted(r["copies"] for r in runs)
        median = sorted(runs, key=lambda r: r["copies"])[len(runs) // 2]
        rows.append({"allocator": allocator, **median, "copies_min": copies[0], "copies_max": copies[-1],
                     "runs": len(runs)})
        _print_row(rows[-1], ["allocator", "K", "model_MiB", "peak_over_base_MiB", "copies", "copies_min",
                              "copies_max", "target_copies"])
    return rows


def _fmnist_round_times(executor, rounds: int, epochs: int) -> list[float]:
    from datamodules import FashionMNIST
    from datamodules.partition import Dirichlet
    from flcore.trainer import FederatedTrainer

    dm = FashionMNIST(root=str(ROOT / "data"), num_clients=100, partition=Dirichlet(0.1), batch_size=50)
    net = CNN(1, 10, 28)
    trainer = FederatedTrainer(rounds=rounds, clients_per_round=10, eval_every=10_000, executor=executor,
                               local={"max_epochs": epochs, "accelerator": "cpu"},
                               log_dir=str(ROOT / "benchmarks" / "results" / "speed_runs"), name="rounds")
    trainer.fit(ClientModule(net, optimizer=_sgd, channels_last=True), dm)
    return [h["round/wall_time_s"] for h in trainer.history]


def section_rounds(args) -> list[dict]:
    from flcore.executors import ProcessPoolExecutor

    cores = os.cpu_count() or 1
    executors = {
        f"sequential ({cores} threads)": lambda: SequentialExecutor(),
        f"process pool ({cores} workers x 1 thread)": lambda: ProcessPoolExecutor(cores, 1),
    }
    if importlib.util.find_spec("ray") is not None:  # optional: pip install 'flcore[ray]'
        from flcore.executors import RayExecutor

        executors[f"Ray ({cores} actors x 1 CPU)"] = lambda: RayExecutor(num_workers=cores, num_cpus_per_worker=1)
    else:
        print("ray not installed: Ray executor skipped")
    rows = []
    for name, make in executors.items():
        torch.set_num_threads(cores if name.startswith("sequential") else 1)
        times = _fmnist_round_times(make(), args.rounds, args.round_epochs)
        steady = times[1:] or times  # round 1 includes worker start-up
        rows.append({"executor": name, "rounds": len(times), "local_epochs": args.round_epochs,
                     "median_s_per_round": statistics.median(steady), "first_round_s": times[0]})
        _print_row(rows[-1], ["executor", "local_epochs", "median_s_per_round", "first_round_s"])
    torch.set_num_threads(cores)
    try:
        import flwr  # noqa: F401

        print("flwr is installed, but a Flower comparison is not implemented in this script yet")
    except ImportError:
        print("flwr not installed: Flower comparison skipped (pip install 'flwr[simulation]' to add it)")
    return rows


# ---------------------------------------------------------------------------- whole rounds
from datamodules import FashionMNIST  # noqa: E402


class FashionMNISTSubset(FashionMNIST):
    """The first ``train_samples`` Fashion-MNIST training images (module level: picklable for
    the process pool's spawned workers)."""

    train_samples: int | None = None

    def load(self):
        x, y, xt, yt = super().load()
        n = self.train_samples
        return (x, y, xt, yt) if n is None else (x[:n], y[:n], xt, yt)


def _fmnist(num_clients: int, partition, batch_size: int, train_samples: int | None = None):
    dm = FashionMNISTSubset(root=str(ROOT / "data"), num_clients=num_clients, partition=partition,
                            batch_size=batch_size)
    dm.train_samples = train_samples
    return dm


def _digits_mlp_case():
    from datamodules import Digits
    from datamodules.partition import Dirichlet

    return Digits(num_clients=20, partition=Dirichlet(0.5), batch_size=20), TinyMLP, 10, 5, False


def round_cases(names: list[str]) -> dict:
    """name -> (datamodule, net factory, clients per round, local epochs, channels-last)."""
    from datamodules.partition import IID, Dirichlet

    cases = {
        "FedAvg CNN E=2": lambda: (_fmnist(100, Dirichlet(0.1), 50), lambda: CNN(1, 10, 28), 10, 2, True),
        "LeNet CNN E=5": lambda: (_fmnist(100, Dirichlet(0.1), 50), lambda: LeNetCNN(1, 10, 28), 10, 5, False),
        "MLP 64-32-10 Digits E=5": _digits_mlp_case,
        "cross-device LeNet 1000x20": lambda: (_fmnist(1000, IID(), 20, train_samples=20_000),
                                               lambda: LeNetCNN(1, 10, 28), 100, 1, False),
    }
    return {n: cases[n] for n in names}


ROUND_TARGETS = {"FedAvg CNN E=2": 0.95, "LeNet CNN E=5": 0.95, "MLP 64-32-10 Digits E=5": 0.9,
                 "cross-device LeNet 1000x20": 0.8}


def hand_round(net, dm, clients, state, epochs, channels_last, **device_options):
    """A hand-written FedAvg round: :func:`hand_loop` (``device_options``: its ``device`` and
    ``amp_dtype``) plus the sample-weighted average."""
    states = hand_loop(net, dm, clients, state, epochs, channels_last, **device_options)
    return weighted_average(states, [float(len(dm.client_indices[c])) for c in clients])


def _flcore_round_driver(dm, make, k, epochs, cl, executor=None, local=None, general=False):
    """flcore's own trainer round (``flcore.round.run_round``: sampling, configure_fit, the
    executor, failure policy, aggregation, round metrics; evaluation excluded), set up as ``fit``
    sets it up; ``local`` adds local Trainer options (e.g. ``accelerator``, ``precision``);
    ``general``: the net in a plain LightningModule (:class:`PlainClassifier`, the general path)
    instead of ``ClientModule`` (the fast path). Returns (run_round(r) -> clients, close)."""
    from flcore.client_store import ClientStateStore
    from flcore.round import run_round as flcore_round
    from flcore.seeding import STREAM_SAMPLER, round_rng
    from flcore.strategies import FedAvg
    from flcore.trainer import FederatedTrainer

    net = make()
    trainer = FederatedTrainer(strategy=FedAvg(), clients_per_round=k, eval_every=10**9, rounds=10**6,
                               local={"max_epochs": epochs, "accelerator": "cpu", **(local or {})},
                               executor=executor or SequentialExecutor())
    module = trainer._check(PlainClassifier(net) if general else ClientModule(net, optimizer=_sgd, channels_last=cl), dm)
    runner = LocalRunner(module, dm, trainer.local, seed=0)
    trainer.sampler.setup(dm.client_sizes)
    box = {"state": trainer.strategy.initialize({k_: v.clone() for k_, v in module.net.state_dict().items()}, k)}
    store = ClientStateStore(tempfile.mkdtemp(prefix="flcore_speed_"))  # FedAvg keeps no client state

    def run_round(r):
        box["state"], _ = flcore_round(trainer, r, box["state"], store, runner, dm, 0)
        return trainer.sampler.sample(r, dm.num_clients, k, round_rng(0, r, STREAM_SAMPLER))

    return run_round, trainer.executor.close


class PlainClassifier(L.LightningModule):
    """The net as a user writes an ordinary LightningModule: automatic optimization,
    cross-entropy in ``training_step`` logged with ``self.log``, the same SGD as ``_sgd``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return _sgd(self.parameters())


def section_general(args) -> list[dict]:
    """The general path (a user's plain LightningModule, one ``Trainer.fit`` per client under
    automatic optimization) against the fast path (``ClientModule``) on the same FedAvg round,
    alternating which goes first, median over rounds."""
    rows = []
    for name, make_case in round_cases(args.round_cases).items():
        dm, make, k, epochs, cl = make_case()
        dm.setup("fit")
        drivers = {path: _flcore_round_driver(dm, make, k, epochs, cl and path == "fast", general=path == "general")
                   for path in ("fast", "general")}
        times = {"fast": [], "general": []}
        for run_round, _ in drivers.values():
            run_round(0)  # warm-up
        for r in range(1, args.round_repeats + 1):
            for path in (("fast", "general") if r % 2 else ("general", "fast")):
                t0 = time.perf_counter()
                drivers[path][0](r)
                times[path].append(time.perf_counter() - t0)
        for _, close in drivers.values():
            close()
        fast, general = statistics.median(times["fast"]), statistics.median(times["general"])
        rows.append({"case": name, "rounds": len(times["fast"]), "fast_s_per_round": fast,
                     "general_s_per_round": general, "general_over_fast": general / fast,
                     "torch_threads": torch.get_num_threads()})
        _print_row(rows[-1], ["case", "fast_s_per_round", "general_s_per_round", "general_over_fast"])
    return rows


def general_table(rows: list[dict], commit: str) -> str:
    """The ``general`` section as a markdown table (embedded in docs/python-api.md)."""
    lines = [f"Seconds per FedAvg round (median, evaluation excluded; {rows[0]['torch_threads']} torch threads, "
             f"commit {commit}):", "",
             "| round | fast path (`ClientModule`) | general path (plain LightningModule) | general / fast |",
             "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['fast_s_per_round']:.3f} | {r['general_s_per_round']:.3f} | {r['general_over_fast']:.2f}x |"
              for r in rows]
    return "\n".join(lines) + "\n"


def timed_rounds(run_round, close, repeats: int) -> list[float]:
    """Seconds of rounds 1..``repeats`` of a round driver, after an untimed round 0 (workers
    start, Lightning builds its loops); closes the driver."""
    run_round(0)
    times = []
    for r in range(1, repeats + 1):
        t0 = time.perf_counter()
        run_round(r)
        times.append(time.perf_counter() - t0)
    close()
    return times


def section_round(args) -> list[dict]:
    rows = []
    for name, make_case in round_cases(args.round_cases).items():
        dm, make, k, epochs, cl = make_case()
        dm.setup("fit")
        run_round, close = _flcore_round_driver(dm, make, k, epochs, cl)
        hand_net = make().to(memory_format=torch.channels_last) if cl else make()
        hand_state = {key: v.clone() for key, v in hand_net.state_dict().items()}
        clients = run_round(0)  # warm-up: Lightning builds its loops in the first fit
        hand_round(hand_net, dm, clients, hand_state, epochs, cl)
        t_fl, t_hand = [], []
        for r in range(1, args.round_repeats + 1):
            for first in ((0, 1) if r % 2 else (1, 0)):
                t0 = time.perf_counter()
                if first == 0:
                    clients = run_round(r)
                    t_fl.append(time.perf_counter() - t0)
                else:
                    from flcore.seeding import STREAM_SAMPLER, round_rng
                    from flcore.samplers import UniformSampler

                    same = UniformSampler().sample(r, dm.num_clients, k, round_rng(0, r, STREAM_SAMPLER))
                    t0 = time.perf_counter()
                    hand_state = hand_round(hand_net, dm, same, hand_state, epochs, cl)
                    t_hand.append(time.perf_counter() - t0)
        close()
        fl, hand = statistics.median(t_fl), statistics.median(t_hand)
        rows.append({"case": name, "rounds": len(t_fl), "flcore_s_per_round": fl, "hand_s_per_round": hand,
                     "ratio": hand / fl, "target": ROUND_TARGETS[name], "torch_threads": torch.get_num_threads()})
        _print_row(rows[-1], ["case", "rounds", "flcore_s_per_round", "hand_s_per_round", "ratio", "target"])
    return rows


def section_scaling(args) -> list[dict]:
    """LeNet-CNN rounds per second: parallel executors at 2 workers x 1 thread vs 1 x 1."""
    from datamodules.partition import Dirichlet
    from flcore.executors import ProcessPoolExecutor

    makers = {
        "sequential 1 thread": (lambda: SequentialExecutor(), 1),
        "sequential 2 threads": (lambda: SequentialExecutor(), 2),
        "process pool 1 x 1": (lambda: ProcessPoolExecutor(1, 1), 1),
        "process pool 2 x 1": (lambda: ProcessPoolExecutor(2, 1), 1),
    }
    if importlib.util.find_spec("ray") is not None:
        from flcore.executors import RayExecutor

        makers["Ray 1 x 1"] = (lambda: RayExecutor(num_workers=1, num_cpus_per_worker=1), 1)
        makers["Ray 2 x 1"] = (lambda: RayExecutor(num_workers=2, num_cpus_per_worker=1), 1)
    dm = _fmnist(100, Dirichlet(0.1), 50)
    dm.setup("fit")
    threads = torch.get_num_threads()
    rows = []
    for name, (make_executor, n_threads) in makers.items():
        torch.set_num_threads(n_threads)
        times = timed_rounds(*_flcore_round_driver(dm, lambda: LeNetCNN(1, 10, 28), 10, 5, False, make_executor()),
                             args.round_repeats)
        rows.append({"executor": name, "rounds": len(times), "median_s_per_round": statistics.median(times),
                     "rounds_per_s": 1 / statistics.median(times), "total_s": sum(times)})
        _print_row(rows[-1], ["executor", "rounds", "median_s_per_round", "rounds_per_s", "total_s"])
    torch.set_num_threads(threads)
    by = {r["executor"]: r for r in rows}
    for kind in ("process pool", "Ray"):
        if f"{kind} 2 x 1" in by:
            speedup = by[f"{kind} 1 x 1"]["total_s"] / by[f"{kind} 2 x 1"]["total_s"]
            rows.append({"executor": f"{kind}: 2 x 1 over 1 x 1 (same rounds)", "speedup": speedup, "target": 1.7})
            _print_row(rows[-1], ["executor", "speedup", "target"])
    return rows


LAYOUT_MODELS = {
    "LeNet 28x28x1": (lambda: LeNetCNN(1, 10, 28), (1, 28, 28)),
    "FedAvg CNN 28x28x1": (lambda: CNN(1, 10, 28), (1, 28, 28)),
    "LeNet 32x32x3": (lambda: LeNetCNN(3, 10, 32), (3, 32, 32)),
    "FedAvg CNN 32x32x3": (lambda: CNN(3, 10, 32), (3, 32, 32)),
    "ResNet-20 32x32x3": (lambda: ResNet20(3, 10), (3, 32, 32)),
    "VGG-16 32x32x3": (lambda: VGG16(3, 10), (3, 32, 32)),
}


def _steps_time(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    opt = _sgd(net.parameters())
    t0 = time.perf_counter()
    for _ in range(steps):
        _sgd_step(net, opt, x, y)
    return time.perf_counter() - t0


def section_layout(args) -> list[dict]:
    """Channels-last against contiguous, per conv net (hand-written SGD steps, B = 50)."""
    rows = []
    steps = 20 if args.full else 6
    for name, (make, shape) in LAYOUT_MODELS.items():
        torch.manual_seed(0)
        x, y = torch.randn(50, *shape), torch.randint(0, 10, (50,))
        plain, last = make(), make().to(memory_format=torch.channels_last)
        x_last = x.contiguous(memory_format=torch.channels_last)
        _steps_time(plain, x, y, 2), _steps_time(last, x_last, y, 2)  # warm-up
        t_plain, t_last = [], []
        for rep in range(args.repeats + 2):
            order = [(plain, x, t_plain), (last, x_last, t_last)]
            for net, inputs, times in (order if rep % 2 else order[::-1]):
                times.append(_steps_time(net, inputs, y, steps) / steps)
        a, b = statistics.median(t_plain), statistics.median(t_last)
        rows.append({"model": name, "contiguous_ms_per_step": a * 1e3, "channels_last_ms_per_step": b * 1e3,
                     "speedup": a / b, "torch_threads": torch.get_num_threads()})
        _print_row(rows[-1], ["model", "contiguous_ms_per_step", "channels_last_ms_per_step", "speedup"])
    return rows


def _print_row(row: dict, keys: list[str]) -> None:
    parts = []
    for key in keys:
        v = row[key]
        parts.append(f"{key}={v:.3f}" if isinstance(v, float) else f"{key}={v}")
    print("  " + "  ".join(parts), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sections = ["local", "server", "memory", "rounds", "round", "scaling", "layout", "general"]
    p.add_argument("--sections", nargs="+", default=sections, choices=sections)
    p.add_argument("--round-cases", nargs="+", default=list(ROUND_TARGETS), choices=list(ROUND_TARGETS))
    p.add_argument("--round-repeats", type=int, default=8, help="rounds per case in the round and scaling sections")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full", action="store_true", help="the issue's sizes (slow on CPU)")
    p.add_argument("--k", type=int, default=10, help="models in the server and memory sections")
    p.add_argument("--rounds", type=int, default=4, help="rounds per executor in the rounds section")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    p.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per allocator (median reported)")
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child is not None:
        print("MEMORY " + json.dumps(memory_child(args.memory_child)))
        return
    args.local_clients, args.local_samples, args.local_epochs = (10, 500, 5) if args.full else (4, 250, 2)
    args.round_epochs = 5 if args.full else 1
    print(f"flcore speed benchmark on {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {'full' if args.full else 'scaled-down'} sizes")
    results = {"cpu_cores": os.cpu_count(), "torch": torch.__version__, "full": args.full}
    for section in args.sections:
        print(f"[{section}]", flush=True)
        results[section] = globals()[f"section_{section}"](args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    if results.get("general"):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        table = Path(args.out).with_suffix(".md")
        table.write_text(general_table(results["general"], commit or "unknown"))
        print(f"wrote {table}")


if __name__ == "__main__":
    main()
