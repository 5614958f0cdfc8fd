import os
import signal

import pytest
import torch
from lightning import seed_everything

from datamodules import Digits, Dirichlet
from flcore import FederatedTrainer
from flcore.executors import ProcessPoolExecutor, SequentialExecutor
from flcore.strategies import FedAvg, FedCross
from lightning_modules import ClientModule
from lightning_modules.models import CNN


def _run(executor, strategy, tmp_path, name):
    seed_everything(0)
    trainer = FederatedTrainer(strategy=strategy, rounds=2, clients_per_round=4, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name=name, executor=executor)
    trainer.fit(ClientModule(CNN(1, 10, 8)), Digits(num_clients=8, partition=Dirichlet(0.5), batch_size=32))
    ckpt = torch.load(next(tmp_path.glob(f"{name}/version_*/checkpoints/last.ckpt")), weights_only=True)
    state = ckpt["strategy_state"]
    return state["models"] if "models" in state else [state["global"]], ckpt["history"]


def assert_same_as_sequential(executor, strategy, tmp_path):
    """2 rounds with ``executor`` end with the sequential executor's weights and metrics, bit for
    bit (both at 1 torch thread per process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same threads per process as the 1-thread workers
    try:
        seq_models, seq_hist = _run(SequentialExecutor(), strategy(), tmp_path, "seq")
        other_models, other_hist = _run(executor, strategy(), tmp_path, "other")
    finally:
        torch.set_num_threads(threads)
    assert len(seq_models) == len(other_models)
    for a, b in zip(seq_models, other_models):
        assert all(torch.equal(a[k], b[k]) for k in a)
    keys = ("global/test_acc", "global/test_loss", "clients/train_loss")
    assert [[h.get(k) for k in keys] for h in seq_hist] == [[h.get(k) for k in keys] for h in other_hist]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [FedAvg, lambda: FedCross(alpha=0.9)], ids=["fedavg", "fedcross"])
def test_process_pool_equals_sequential(tmp_path, strategy):
    assert_same_as_sequential(ProcessPoolExecutor(num_workers=2, threads_per_worker=1), strategy, tmp_path)


class KillerDigits(Digits):
    """Kills the worker process that loads client 3's data (never the parent)."""

    parent_pid = 0

    def client_batches(self, cid, generator=None):
        if cid == 3 and os.getpid() != self.parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().client_batches(cid, generator)


@pytest.mark.slow
def test_dead_worker_is_a_failed_client(tmp_path):
    seed_everything(0)
    dm = KillerDigits(num_clients=8, batch_size=32)
    dm.parent_pid = os.getpid()
    trainer = FederatedTrainer(strategy=FedAvg(), rounds=2, clients_per_round=8, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name="dead", executor=ProcessPoolExecutor(2))
    with pytest.warns(UserWarning, match="worker process died"):
        summary = trainer.fit(ClientModule(CNN(1, 10, 8)), dm)
    assert len(trainer.history) == 2  # the pool is rebuilt and the second round runs
    assert [h["round/failed_clients"] for h in trainer.history] == [1.0, 1.0]  # only the killing client
    assert summary["final_test_acc"] > 0


def test_bad_executor_arguments():
    with pytest.raises(ValueError, match="num_workers"):
        ProcessPoolExecutor(num_workers=0)
    with pytest.raises(ValueError, match="start_method"):
        ProcessPoolExecutor(start_method="teleport")


_ORPHAN_SCRIPT = """
import sys, time
from datamodules import Digits
from flcore.executors import ProcessPoolExecutor
from flcore.local import LocalRunner
from flcore.messages import ClientTask
from lightning_modules import ClientModule
from lightning_modules.models import CNN

dm = Digits(num_clients=4, batch_size=32)
dm.setup()
module = ClientModule(CNN(1, 10, 8))
runner = LocalRunner(module, dm, {"max_epochs": 1}, seed=0)
state = {k: v.clone() for k, v in module.net.state_dict().items()}
executor = ProcessPoolExecutor(num_workers=2)
executor.run(0, [ClientTask(cid=c, state=state, slot=c) for c in range(4)], runner)
print(" ".join(str(p) for p in executor._pool._processes), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_workers_die_with_a_killed_parent():
    """kill -9 of the trainer's process ends its pool workers too (no orphans of ~1 GB each)."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers)
    finally:
        proc.kill()
