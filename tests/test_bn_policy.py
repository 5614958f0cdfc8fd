"""BatchNorm policy (trainer.bn_policy): FedBN's local BN and statistics-only local BN."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning import seed_everything

from datamodules import Digits
from flcore import FederatedTrainer
from flcore.batchnorm import bn_entries
from flcore.checkpoint import load_checkpoint
from flcore.client_store import checkpoint_client_states
from flcore.errors import ConfigError
from flcore.local import LocalRunner
from flcore.strategies.fedavg import WeightedMean
from flcore.strategies import FedAvg
from lightning_modules import ClientModule
from lightning_modules.models import CNN, HeteroResNet


def _net():
    return HeteroResNet("resnet10", 1, 10, 4, "cifar")


def test_bn_entries_by_policy():
    net = _net()
    local, stats = bn_entries(net, "local"), bn_entries(net, "local_stats")
    assert bn_entries(net, "average") == [] and set(stats) < set(local)
    assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in stats)
    assert {k.rsplit(".", 1)[1] for k in local} == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert bn_entries(CNN(1, 10, 8), "local") == []


class UserModule(L.LightningModule):
    """A user's own LightningModule around the net (the general path)."""

    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.5)


@pytest.mark.parametrize("user", [False, True], ids=["client_module", "user_module"])
@pytest.mark.parametrize("policy", ["local", "local_stats"])
def test_clients_train_with_their_own_bn_entries(tmp_path, monkeypatch, policy, user):
    """Round 2: every client starts from the global model except its BN entries (all of them for
    FedBN, the statistics for local_stats), which are exactly what it trained in round 1; with
    flcore's ClientModule and with a user's own LightningModule."""
    sent, uploads = [], []
    fit_many, add = LocalRunner.fit_many, WeightedMean.add

    def spy(self, tasks, rnd):
        sent.append([(t.cid, {k: v.clone() for k, v in t.state.items()}) for t in tasks])
        outcomes = fit_many(self, tasks, rnd)
        sent[-1].append(uploads[-len(tasks):])  # (the streaming aggregation took them as they came)
        return outcomes

    def spy_add(self, result):
        uploads.append({k: v.clone() for k, v in result.state.items()})
        add(self, result)

    monkeypatch.setattr(LocalRunner, "fit_many", spy)
    monkeypatch.setattr(WeightedMean, "add", spy_add)
    seed_everything(0)
    trainer = FederatedTrainer(strategy=FedAvg(), rounds=2, clients_per_round=3, local={"max_epochs": 1},
                               log_dir=str(tmp_path), bn_policy=policy, client_eval_every=2)
    trainer.fit(UserModule() if user else ClientModule(_net()), Digits(num_clients=3, batch_size=32))
    assert 0 <= trainer.history[-1]["clients/test_acc_mean"] <= 1  # each client evaluated with its own BN
    keys = [f"net.{k}" if user else k for k in bn_entries(_net(), policy)]
    first, second = sent
    trained = dict(zip([c for c, _ in first[:-1]], first[-1]))
    global_after_1 = second[0][1]  # equal for all clients outside the local keys
    for cid, state in second[:-1]:
        for k in keys:
            assert torch.equal(state[k], trained[cid][k])  # its own round-1 entries, not the average
        shared = [k for k in state if k not in keys]
        assert all(torch.equal(state[k], global_after_1[k]) for k in shared)
    if policy == "local_stats":  # the affine BN parameters are shared (averaged)
        weight = next(k for k in state if k.endswith("bn1.weight"))
        assert weight not in keys and torch.equal(second[0][1][weight], second[1][1][weight])
    ckpt = load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")
    bn = checkpoint_client_states(ckpt, trainer.run_dir)["bn"]
    assert sorted(bn) == [0, 1, 2] and sorted(bn[0]) == sorted(keys)


def test_bn_policy_bad_input(tmp_path):
    dm = Digits(num_clients=3, batch_size=32)
    with pytest.raises(ConfigError, match=r"trainer.bn_policy: must be one of \['average', 'local', 'local_stats'\]"):
        FederatedTrainer(bn_policy="fedbn", log_dir=str(tmp_path), clients_per_round=2)._check(ClientModule(_net()), dm)
    with pytest.raises(ConfigError, match="trainer.bn_policy: 'local' keeps BatchNorm entries .* has no BatchNorm"):
        FederatedTrainer(bn_policy="local", log_dir=str(tmp_path), clients_per_round=2)._check(ClientModule(CNN(1, 10, 8)), dm)
