"""Behaviour pinned bit for bit: short fixed-seed runs of every shipped strategy (and the main
variants: FedCross's selections and acceleration, FedMR's two-stage start and module unit,
FedBN's local BatchNorm, clustered sampling, the process pool, a server optimizer) end with exactly the recorded
server state and metrics.

A refactor must keep every hash. A change that is meant to change numbers regenerates them::

    FLCORE_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py

and says so in its commit. Floating-point results depend on the platform (CPU model and the
kernels torch picks for it, torch version, thread count), so the hashes are recorded per platform
(:func:`platform_fingerprint`). On a platform without a recording the comparison is skipped, saying
so, and :func:`test_repeated_runs_are_bit_identical` still checks that a run repeats bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import pytest
import torch
from lightning import seed_everything

from datamodules import Digits
from flcore import FederatedTrainer
from flcore.checkpoint import load_checkpoint
from flcore.client_store import checkpoint_client_states
from flcore.executors import ProcessPoolExecutor
from flcore.samplers import ClusteredSampler
from flcore.server_opt import ServerAdam
from lightning_modules import ClientModule
from lightning_modules.models import HeteroResNet
from tests.test_strategy_contract import CASES, _tensors

GOLDEN = Path(__file__).parent / "golden" / "strategies.json"

#: case -> (strategy name, strategy kwargs, trainer kwargs, module factory or None for the contract table's)
VARIANTS = {
    **{name: (name, {}, {}, None) for name in CASES},
    "FedCross/in_order": ("FedCross", {"selection": "in_order"}, {}, None),
    "FedCross/highest_similarity": ("FedCross", {"selection": "highest_similarity", "similarity": "authors"}, {}, None),
    "FedCross/pm_da": ("FedCross", {"propeller_rounds": 1, "dynamic_alpha_rounds": 2}, {}, None),
    "FedMR/two_stage": ("FedMR", {"first_stage_rounds": 1}, {}, None),
    "FedMR/module": ("FedMR", {"unit": "module"}, {}, None),
    "FedAvg/fedbn": ("FedAvg", {}, {"bn_policy": "local"},
                     lambda: ClientModule(HeteroResNet("resnet10", 1, 10, 4, "cifar"))),
    "FedAvg/clusamp": ("FedAvg", {}, {"sampler": "clustered"}, None),
    "FedAvg/process_pool": ("FedAvg", {}, {"executor": "pool"}, None),
    "FedAvg/server_adam": ("FedAvg", {"server_optimizer": "adam"}, {}, None),
}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _run(case: str, tmp_path) -> dict:
    name, kwargs, trainer_kwargs, module = VARIANTS[case]
    cls, make_module, archs = CASES[name]
    trainer_kwargs = dict(trainer_kwargs)
    if trainer_kwargs.get("sampler") == "clustered":
        trainer_kwargs["sampler"] = ClusteredSampler()
    if trainer_kwargs.get("executor") == "pool":
        trainer_kwargs["executor"] = ProcessPoolExecutor(num_workers=2, threads_per_worker=1)
    if kwargs.get("server_optimizer") == "adam":
        kwargs = {**kwargs, "server_optimizer": ServerAdam(lr=0.01)}
    seed_everything(0)
    trainer = FederatedTrainer(strategy=cls(**kwargs), rounds=2, clients_per_round=3, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name=case.replace("/", "_"), architectures=archs,
                               **trainer_kwargs)
    public = 64 if getattr(cls, "needs_public_data", False) else 0
    trainer.fit((module or make_module)(), Digits(num_clients=4, batch_size=32, public_size=public))
    ckpt = load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")
    metrics = {k: v for row in trainer.history for k, v in row.items()
               if k.startswith(("global/", "clients/train")) and isinstance(v, float)}
    return {"server_state": _digest(_tensors(ckpt["strategy_state"])),
            "client_state": _digest(_tensors(checkpoint_client_states(ckpt, trainer.run_dir))),
            "metrics": {k: float(v).hex() for k, v in sorted(metrics.items())}}


def platform_fingerprint() -> str:
    """What the recorded hashes depend on: CPU architecture and model, the CPU kernels torch
    dispatches to, torch's version, its intra-op thread count."""
    model = platform.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.machine()} {model} {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def _recordings() -> dict:
    return json.loads(GOLDEN.read_text()).get("platforms", {}) if GOLDEN.exists() else {}


def _golden() -> dict:
    return _recordings().get(platform_fingerprint(), {})


def test_golden_covers_every_case():
    if os.environ.get("FLCORE_UPDATE_GOLDEN"):
        pytest.skip("regenerating")
    recordings = _recordings()
    assert recordings, "no recorded runs; FLCORE_UPDATE_GOLDEN=1 pytest tests/test_golden.py"
    for fingerprint, cases in recordings.items():  # every recording covers every case
        assert set(cases) == set(VARIANTS), f"{fingerprint}: run FLCORE_UPDATE_GOLDEN=1 pytest tests/test_golden.py"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["FedAvg", "Scaffold", "FedCross"])
def test_repeated_runs_are_bit_identical(tmp_path, case):
    """Whatever the platform: the same run twice gives the same hashes (what the recordings rest on)."""
    assert _run(case, tmp_path / "a") == _run(case, tmp_path / "b")


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_bit_identical_to_the_recorded_run(tmp_path, case):
    got = _run(case, tmp_path)
    fingerprint = platform_fingerprint()
    if os.environ.get("FLCORE_UPDATE_GOLDEN"):
        recordings = _recordings()
        recordings.setdefault(fingerprint, {})[case] = got
        recordings[fingerprint] = dict(sorted(recordings[fingerprint].items()))
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"platforms": recordings}, indent=1) + "\n")
        return
    golden = _golden()
    if not golden:
        pytest.skip(f"no recording for this platform ({fingerprint}); record one with FLCORE_UPDATE_GOLDEN=1 "
                    f"on the commit before a change")
    want = golden.get(case)
    assert want is not None, f"{case}: no recorded run; FLCORE_UPDATE_GOLDEN=1 pytest tests/test_golden.py"
    assert got["metrics"] == want["metrics"], f"{case}: metrics changed"
    assert got["server_state"] == want["server_state"], f"{case}: final server state changed"
    assert got["client_state"] == want["client_state"], f"{case}: client-resident state changed"
