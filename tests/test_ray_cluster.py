"""RayExecutor across a real multi-node Ray cluster on this machine (Ray's own
``ray.cluster_utils.Cluster``: a head without CPUs and two worker nodes of one CPU each, so the
two actors run on different nodes),
with the data only on the driver (Ray's object store carries it), and a worker node lost in the
middle of a round."""

import os
import signal
import time

import pytest
import torch
from lightning import seed_everything

from datamodules import Digits, Dirichlet

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

from ray.cluster_utils import Cluster  # noqa: E402

from flcore import FederatedTrainer  # noqa: E402
from flcore.executors import RayExecutor, SequentialExecutor  # noqa: E402
from flcore.strategies import FedAvg  # noqa: E402
from lightning_modules import ClientModule  # noqa: E402
from lightning_modules.models import CNN  # noqa: E402


class DriverDataDigits(Digits):
    """Data only the driver can load (the nodes have none of their own); inside an actor each
    client's update also takes ``delay_s`` longer, so a round lasts long enough to lose a node."""

    driver_pid = 0
    delay_s = 0.0

    def load(self):
        if os.getpid() != self.driver_pid:
            raise FileNotFoundError("no data set on this node")
        return super().load()

    def client_batches(self, cid, generator=None):
        if os.getpid() != self.driver_pid:
            time.sleep(self.delay_s)
        return super().client_batches(cid, generator)


@pytest.fixture(scope="module")
def cluster():
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]  # one actor per node
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def _fit(executor, tmp_path, name, delay_s=0.0, rounds=3):
    seed_everything(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors' thread count: bit-identical updates
    dm = DriverDataDigits(num_clients=8, partition=Dirichlet(0.5), batch_size=32)
    dm.driver_pid, dm.delay_s = os.getpid(), delay_s
    trainer = FederatedTrainer(strategy=FedAvg(), rounds=rounds, clients_per_round=4, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name=name, executor=executor, checkpoint_every=1)
    try:
        trainer.fit(ClientModule(CNN(1, 10, 8)), dm)
    finally:
        torch.set_num_threads(threads)
    return trainer


def _same(a, b):
    keys = ("global/test_acc", "global/test_loss", "clients/train_loss")
    assert [[h.get(k) for k in keys] for h in a.history] == [[h.get(k) for k in keys] for h in b.history]


def test_two_node_cluster_equals_sequential_and_survives_a_lost_node(cluster, tmp_path, monkeypatch):
    c, (_, second) = cluster
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    reference = _fit(SequentialExecutor(), tmp_path, "seq")
    spread = RayExecutor(num_workers=2, num_cpus_per_worker=1, address="auto")
    _same(reference, _fit(spread, tmp_path, "cluster"))  # actors on both worker nodes, data from the driver

    replaced = []
    lossy = RayExecutor(num_workers=2, num_cpus_per_worker=1, address="auto")
    original = lossy._replace
    lossy._replace = lambda actor: (replaced.append(actor), original(actor))
    wait, rounds_started = ray.wait, []
    run = lossy.run

    def counting_run(rnd, tasks, runner):
        rounds_started.append(rnd)
        return run(rnd, tasks, runner)

    def wait_then_lose_a_node(*args, **kwargs):  # the driver's wait for round 2's actors
        if rounds_started == [0, 1] and not replaced and second in c.worker_nodes:
            c.add_node(num_cpus=1)   # room for the replacement actor
            c.remove_node(second)    # the node of one of the two busy actors (one per node)
        return wait(*args, **kwargs)

    lossy.run = counting_run
    monkeypatch.setattr(ray, "wait", wait_then_lose_a_node)
    lost = _fit(lossy, tmp_path, "lost", delay_s=1.5)
    assert replaced, "no actor was lost"
    # its actor's clients ran again on a surviving node: nothing lost, the same run as sequential
    assert [h["round/failed_clients"] for h in lost.history] == [0.0, 0.0, 0.0]
    _same(reference, lost)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3  # head, the first node and the new one
