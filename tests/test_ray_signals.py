"""A RayExecutor that starts its own Ray keeps the trainer's signal handling (own module: no
module-scoped Ray may be running)."""

import signal

import pytest

from flcore import FederatedTrainer
from flcore.strategies import FedAvg
from lightning_modules import ClientModule
from lightning_modules.models import CNN
from tests.test_executor import KillerDigits

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

from flcore.executors import RayExecutor  # noqa: E402


def test_ray_executor_keeps_the_trainers_signal_handlers(tmp_path):
    """A run that starts its own Ray keeps flcore's SIGINT/SIGTERM handling (checkpoint, exit)."""
    assert not ray.is_initialized()
    seen = []
    executor = RayExecutor(num_workers=1)

    class Spy(FedAvg):
        def aggregate_fit(self, rnd, results, state, rng):
            seen.append(signal.getsignal(signal.SIGTERM))
            return super().aggregate_fit(rnd, results, state, rng)

    trainer = FederatedTrainer(strategy=Spy(), rounds=1, clients_per_round=2, local={"max_epochs": 1},
                               log_dir=str(tmp_path), executor=executor)
    trainer.fit(ClientModule(CNN(1, 10, 8)), KillerDigits(num_clients=4, batch_size=32))  # parent_pid 0: kills nobody
    assert seen and "flcore" in getattr(seen[0], "__module__", "")  # the trainer's handler, not Ray's
    assert not ray.is_initialized()  # the executor shut down the Ray it started
