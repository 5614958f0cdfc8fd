import lightning as L
import torch

from datamodules import Digits
from flcore.local import LocalRunner
from flcore.strategies import ClientTask
from lightning_modules import ClientModule
from lightning_modules.models import CNN


class StepCounter(L.Callback):
    def __init__(self):
        self.steps = 0
        self.optimizers = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1

    def on_train_start(self, trainer, pl_module):
        self.optimizers.append(id(trainer.optimizers[0]))
        assert not trainer.optimizers[0].state  # momentum buffers start empty


def test_reused_trainer_runs_exact_local_epochs_each_time():
    dm = Digits(num_clients=10, batch_size=20, seed=0)
    dm.setup()
    module = ClientModule(CNN(1, 10, 8))
    counter = StepCounter()
    runner = LocalRunner(module, dm, {"max_epochs": 3}, seed=0, callbacks=[counter])
    init = {k: v.clone() for k, v in module.net.state_dict().items()}
    for rnd, cid in enumerate([0, 1, 2]):
        before = counter.steps
        res = runner.fit(ClientTask(cid=cid, state=init), rnd)
        batches = -(-dm.client_sizes[cid] // 20)
        assert counter.steps - before == 3 * batches
        assert res.num_samples == dm.client_sizes[cid]
        assert "train_loss" in res.metrics
        assert not torch.equal(res.state["fc2.weight"], init["fc2.weight"])
    assert len(set(counter.optimizers)) == 3  # a fresh optimizer for every local update


def test_local_update_is_a_function_of_seed_round_client():
    dm = Digits(num_clients=10, batch_size=20, seed=0)
    dm.setup()
    module = ClientModule(CNN(1, 10, 8))
    runner = LocalRunner(module, dm, {"max_epochs": 1}, seed=3)
    init = {k: v.clone() for k, v in module.net.state_dict().items()}
    a = runner.fit(ClientTask(cid=4, state=init), 2)
    runner.fit(ClientTask(cid=5, state=init), 7)  # unrelated work in between
    b = runner.fit(ClientTask(cid=4, state=init), 2)
    c = runner.fit(ClientTask(cid=4, state=init), 3)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert not all(torch.equal(a.state[k], c.state[k]) for k in a.state)
