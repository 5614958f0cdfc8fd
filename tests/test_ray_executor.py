"""RayExecutor on a local 2-worker Ray instance (``pytest -m ray``; CI installs ray)."""

import builtins
import os
import signal

import pytest

from tests.conftest import QUICKSTART
from tests.test_executor import KillerDigits, assert_same_as_sequential

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

from datamodules import Digits  # noqa: E402
from flcore import FederatedTrainer  # noqa: E402
from flcore.executors import RayExecutor  # noqa: E402
from flcore.strategies import FedAvg, FedCross  # noqa: E402
from lightning_modules import ClientModule  # noqa: E402
from lightning_modules.models import CNN  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting Ray costs seconds); executors join it."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    for sig, handler in handlers.items():  # Ray installs a SIGTERM handler; later tests check the defaults
        signal.signal(sig, handler)
    yield
    ray.shutdown()


@pytest.mark.parametrize("strategy,data", [(FedAvg, "object_store"), (lambda: FedCross(alpha=0.9), "object_store"),
                                           (FedAvg, "reload")], ids=["fedavg", "fedcross", "fedavg-reload"])
def test_ray_equals_sequential(local_ray, tmp_path, strategy, data):
    assert_same_as_sequential(RayExecutor(num_workers=2, num_cpus_per_worker=1, address="auto", data=data),
                              strategy, tmp_path)


class DriverOnlyDigits(Digits):
    """Data that only the driver's process can load (as on a cluster whose nodes lack the data)."""

    def load(self):
        if os.getpid() != self.driver_pid:
            raise FileNotFoundError("no data set on this node")
        return super().load()


def test_ray_workers_need_no_data_of_their_own(local_ray, tmp_path):
    """``data="object_store"``: the actors get the driver's data from Ray's object store."""
    dm = DriverOnlyDigits(num_clients=4, batch_size=32)
    dm.driver_pid = os.getpid()
    trainer = FederatedTrainer(strategy=FedAvg(), rounds=1, clients_per_round=4, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name="nodisk", executor=RayExecutor(2, address="auto"))
    trainer.fit(ClientModule(CNN(1, 10, 8)), dm)
    assert trainer.history[-1]["round/failed_clients"] == 0


def test_ray_runs_a_users_lazy_dataset_as_the_sequential_executor_does(local_ray, tmp_path):
    """``FromDatasets`` over a lazy file Dataset: the actors get the driver's set-up datamodule
    from the object store, read the user's files themselves, and end bit-identical to the
    sequential executor."""
    import torch

    from datamodules import Dirichlet, FromDatasets
    from flcore.executors import SequentialExecutor
    from tests.conftest import assert_same_tree
    from tests.user_data import NpyFolder, write_npy_folder

    def run(executor, name):
        from lightning import seed_everything

        seed_everything(0)
        dm = FromDatasets(NpyFolder(write_npy_folder(tmp_path / "files", "train")),
                          NpyFolder(write_npy_folder(tmp_path / "files", "test")), num_clients=4,
                          partition=Dirichlet(beta=0.5), batch_size=40)
        trainer = FederatedTrainer(strategy=FedAvg(), rounds=2, clients_per_round=4, local={"max_epochs": 1},
                                   log_dir=str(tmp_path), name=name, executor=executor)
        trainer.fit(ClientModule(CNN(1, 10, 8)), dm)
        return torch.load(trainer.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["strategy_state"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 1-thread actors' kernels
    try:
        sequential = run(SequentialExecutor(), "seq")
        other = run(RayExecutor(num_workers=2, num_cpus_per_worker=1, address="auto"), "ray")
    finally:
        torch.set_num_threads(threads)
    assert_same_tree(sequential, other)


def test_killed_ray_actor_is_a_failed_client(local_ray, tmp_path):
    dm = KillerDigits(num_clients=8, batch_size=32)
    dm.parent_pid = os.getpid()
    trainer = FederatedTrainer(strategy=FedAvg(), rounds=2, clients_per_round=8, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name="dead", executor=RayExecutor(2, address="auto"))
    with pytest.warns(UserWarning, match="Ray worker died"):
        summary = trainer.fit(ClientModule(CNN(1, 10, 8)), dm)
    assert len(trainer.history) == 2  # the actor is replaced and both rounds complete
    assert [h["round/failed_clients"] for h in trainer.history] == [1.0, 1.0]
    assert summary["final_test_acc"] > 0


def test_ray_executor_bad_arguments():
    with pytest.raises(ValueError, match="num_workers"):
        RayExecutor(num_workers=0)
    with pytest.raises(ValueError, match="num_gpus_per_worker"):
        RayExecutor(num_gpus_per_worker=-1)
    with pytest.raises(ValueError, match=r"trainer.executor.data: must be one of \['object_store', 'reload'\]"):
        RayExecutor(data="nfs")


def test_missing_ray_is_one_clear_line(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"pip install 'flcore\[ray\]'") as err:
        RayExecutor()
    assert "\n" not in str(err.value)




def test_ray_executor_from_yaml_cli(local_ray, run_cli):
    code, out, err = run_cli("fit", "--config", QUICKSTART, "--trainer.rounds", "1",
                             "--data.num_clients", "6", "--trainer.clients_per_round", "2",
                             "--trainer.executor", "flcore.executors.RayExecutor",
                             "--trainer.executor.num_workers", "2", "--trainer.executor.address", "auto")
    assert code == 0, err
    assert "finished 1 rounds" in out


def test_missing_ray_cli_error(monkeypatch, run_cli):
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "ray" or name.startswith("ray.") else real_import(name, *a, **k))
    code, out, err = run_cli("fit", "--config", QUICKSTART, "--trainer.executor", "flcore.executors.RayExecutor")
    assert code == 2
    assert err.strip().splitlines()[-1] == ("flcore: error: trainer.executor: RayExecutor needs the 'ray' package; "
                                            "install it with: pip install 'flcore[ray]'")

