"""Server optimizers (Reddi et al., ICLR 2021, Algorithm 2; FedAvgM) against hand-computed steps,
and composed with the single-model strategies through a checkpoint and resume."""

import math

import pytest
import torch
from lightning import seed_everything

from datamodules import Digits
from flcore import FederatedTrainer
from flcore.checkpoint import load_checkpoint
from flcore.server_opt import ServerAdagrad, ServerAdam, ServerSGD, ServerYogi
from flcore.messages import ClientResult
from flcore.strategies import FedAvg, FedProx, HeteroFedAvg, Scaffold
from lightning_modules import ClientModule, FedProxModule, ScaffoldModule
from lightning_modules.models import CNN, HeteroResNet
from tests.conftest import assert_same_tree

TAU = 1e-3


def _states():
    x = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64), "bn.running_mean": torch.tensor([0.0]),
         "bn.num_batches_tracked": torch.tensor(3)}
    agg = {"w": torch.tensor([1.5, 1.0], dtype=torch.float64), "bn.running_mean": torch.tensor([0.25]),
           "bn.num_batches_tracked": torch.tensor(5)}
    return x, agg  # Delta = [0.5, -1.0]


def _expected(v_of, lr, beta1):
    out = []
    for x, d in ((1.0, 0.5), (2.0, -1.0)):
        m = (1 - beta1) * d
        out.append(x + lr * m / (math.sqrt(v_of(d)) + TAU))
    return out


@pytest.mark.parametrize("opt, v_of, lr, beta1", [
    (ServerAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=TAU), lambda d: 0.99 * TAU ** 2 + 0.01 * d * d, 0.1, 0.9),
    (ServerAdagrad(lr=0.1, tau=TAU), lambda d: TAU ** 2 + d * d, 0.1, 0.0),
    # Yogi: v = tau^2 - (1 - beta2) d^2 sign(tau^2 - d^2) = tau^2 + 0.01 d^2 here (d^2 > tau^2)
    (ServerYogi(lr=0.1, beta1=0.9, beta2=0.99, tau=TAU), lambda d: TAU ** 2 + 0.01 * d * d, 0.1, 0.9),
], ids=["adam", "adagrad", "yogi"])
def test_adaptive_first_step_by_hand(opt, v_of, lr, beta1):
    x, agg = _states()
    before = {k: v.clone() for k, v in {**x, **{f"agg.{k}": v for k, v in agg.items()}}.items()}
    state = opt.init_state(x)
    assert set(state) == {"m", "v"} and set(state["m"]) == {"w"}  # trained weights only
    assert torch.equal(state["v"]["w"], torch.full((2,), TAU ** 2, dtype=torch.float64))
    new, new_state = opt.step(x, agg, state)
    assert new["w"].tolist() == pytest.approx(_expected(v_of, lr, beta1), rel=1e-12)
    assert torch.equal(new["bn.running_mean"], agg["bn.running_mean"])  # statistics: the aggregate
    assert new["bn.num_batches_tracked"].item() == 5
    assert torch.equal(state["m"]["w"], torch.zeros(2, dtype=torch.float64))  # inputs untouched
    assert all(torch.equal(before[k], v) for k, v in x.items())
    assert all(torch.equal(before[f"agg.{k}"], v) for k, v in agg.items())
    assert new_state["m"]["w"].tolist() == pytest.approx([(1 - beta1) * 0.5, (1 - beta1) * -1.0])


def test_yogi_second_moment_shrinks_when_v_exceeds_delta_squared():
    opt = ServerYogi(lr=1.0, beta2=0.5, tau=TAU)
    v = opt.second_moment(torch.tensor([4.0]), torch.tensor([1.0]))  # 4 - 0.5 * 1 * sign(3)
    assert v.item() == pytest.approx(3.5)


def test_fedavgm_two_steps_by_hand():
    opt = ServerSGD(lr=0.5, momentum=0.9)
    x, agg = _states()
    state = opt.init_state(x)
    assert set(state) == {"m"}
    x1, state = opt.step(x, agg, state)  # m1 = Delta = [0.5, -1]; x1 = x + 0.5 m1
    assert x1["w"].tolist() == pytest.approx([1.25, 1.5])
    agg2 = {**agg, "w": torch.tensor([1.25, 2.5], dtype=torch.float64)}  # Delta2 = agg2 - x1 = [0, 1]
    x2, state = opt.step(x1, agg2, state)  # m2 = 0.9 m1 + Delta2 = [0.45, 0.1]; x2 = x1 + 0.5 m2
    assert x2["w"].tolist() == pytest.approx([1.25 + 0.225, 1.5 + 0.05])


def test_bad_settings_are_one_line():
    with pytest.raises(ValueError, match=r"strategy.server_optimizer.lr: must be > 0, got 0"):
        ServerAdam(lr=0)
    with pytest.raises(ValueError, match=r"strategy.server_optimizer.beta2: must be in \[0, 1\), got 1"):
        ServerYogi(beta2=1)
    with pytest.raises(ValueError, match=r"strategy.server_optimizer.tau: must be > 0"):
        ServerAdagrad(tau=0)
    with pytest.raises(ValueError, match=r"strategy.server_optimizer.momentum: must be in \[0, 1\)"):
        ServerSGD(momentum=-0.1)


def _fit(tmp_path, strategy, module, rounds, name, ckpt_path=None):
    """``module``: a factory, called after seeding (the same initial weights every time)."""
    seed_everything(0)
    module = module()
    trainer = FederatedTrainer(strategy=strategy, rounds=rounds, clients_per_round=3, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name=name, checkpoint_every=1)
    trainer.fit(module, Digits(num_clients=5, batch_size=32), ckpt_path=ckpt_path)
    return trainer, load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")["strategy_state"]


def _net():
    return CNN(1, 10, 8, channels=(4, 8), hidden=16)


def test_plain_fedavgm_without_momentum_is_fedavg(tmp_path):
    _, plain = _fit(tmp_path, FedAvg(), lambda: ClientModule(_net()), 2, "plain")
    _, sgd = _fit(tmp_path, FedAvg(ServerSGD(lr=1.0, momentum=0.0)), lambda: ClientModule(_net()), 2, "sgd")
    assert all(torch.allclose(plain["global"][k].float(), sgd["global"][k].float(), atol=1e-6) for k in plain["global"])


@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda: (FedAvg(ServerAdam(lr=0.01)), lambda: ClientModule(_net())),
                                  lambda: (FedProx(ServerSGD(lr=1.0, momentum=0.9)), lambda: FedProxModule(_net(), mu=0.1)),
                                  lambda: (Scaffold(server_optimizer=ServerYogi(lr=0.01)), lambda: ScaffoldModule(_net()))],
                         ids=["fedadam", "fedprox+fedavgm", "scaffold+fedyogi"])
def test_server_optimizer_changes_the_run_and_resumes_exactly(tmp_path, make):
    strategy, module = make()
    _, full = _fit(tmp_path, strategy, module, 3, "full")
    assert set(full["server_opt"]) >= {"m"} and full["server_opt"]["m"]
    _, plain = _fit(tmp_path, type(strategy)(), make()[1], 3, "plain")
    assert any(not torch.equal(full["global"][k], plain["global"][k]) for k in full["global"])
    strategy, module = make()
    _fit(tmp_path, strategy, module, 2, "resumed")
    strategy, module = make()
    _, resumed = _fit(tmp_path, strategy, module, 3, "resumed", ckpt_path="last")
    assert all(torch.equal(full["global"][k], resumed["global"][k]) for k in full["global"])
    for name in full["server_opt"]:
        assert all(torch.equal(full["server_opt"][name][k], resumed["server_opt"][name][k]) for k in full["server_opt"][name])


def _hetero_results(states):
    return [ClientResult(cid=c, slot=c, state=s, num_samples=10) for c, s in enumerate(states)]


def test_layerwise_hetero_fedavgm_steps_only_the_keys_the_round_trained():
    """Two architectures: "big" has a and b, "small" has a. Round 1 (both): Delta_a = mean - x_a,
    Delta_b = y_b - x_b; round 2 (small only): a steps with momentum, b and its momentum stay."""
    strategy = HeteroFedAvg("layerwise", server_optimizer=ServerSGD(lr=0.5, momentum=0.9))
    strategy.bind(["big", "small"])
    d = torch.float64
    init = {"big": {"a": torch.tensor([1.0], dtype=d), "b": torch.tensor([2.0], dtype=d)},
            "small": {"a": torch.tensor([1.0], dtype=d)}}
    state = strategy.initialize(init, clients_per_round=2)
    big = {"a": torch.tensor([2.0], dtype=d), "b": torch.tensor([4.0], dtype=d)}
    small = {"a": torch.tensor([3.0], dtype=d)}
    state = strategy.aggregate_fit(0, _hetero_results([big, small]), state, None)
    # Delta_a = 2.5 - 1 = 1.5, m_a = 1.5, a = 1 + 0.75; Delta_b = 2, m_b = 2, b = 2 + 1
    assert state["global"]["a"].item() == pytest.approx(1.75) and state["global"]["b"].item() == pytest.approx(3.0)
    state = strategy.aggregate_fit(1, [ClientResult(cid=1, slot=0, state={"a": torch.tensor([2.75], dtype=d)},
                                                    num_samples=10)], state, None)
    # Delta_a = 1, m_a = 0.9 * 1.5 + 1 = 2.35, a = 1.75 + 1.175; b untouched, m_b still 2
    assert state["global"]["a"].item() == pytest.approx(2.925) and state["global"]["b"].item() == pytest.approx(3.0)
    assert state["server_opt"]["m"]["b"].item() == pytest.approx(2.0)


def test_same_shape_hetero_fedadam_keeps_one_optimizer_per_architecture():
    strategy = HeteroFedAvg("same_shape", server_optimizer=ServerAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=TAU))
    strategy.bind(["p", "q"])
    d = torch.float64
    state = strategy.initialize({"p": {"w": torch.tensor([1.0], dtype=d)}, "q": {"w": torch.tensor([1.0, 2.0], dtype=d)}},
                                clients_per_round=2)
    state = strategy.aggregate_fit(0, _hetero_results([{"w": torch.tensor([1.5], dtype=d)}]), state, None)
    expected = 1.0 + 0.1 * (0.1 * 0.5) / (math.sqrt(0.99 * TAU ** 2 + 0.01 * 0.25) + TAU)  # Alg. 2, Delta = 0.5
    assert state["models"]["p"]["w"].item() == pytest.approx(expected)
    assert state["models"]["q"]["w"].tolist() == [1.0, 2.0] and state["server_opt"]["q"]["m"]["w"].tolist() == [0.0, 0.0]


@pytest.mark.slow
def test_hetero_server_optimizer_resumes_exactly(tmp_path):
    def run(name, rounds, ckpt_path=None):
        seed_everything(0)
        trainer = FederatedTrainer(strategy=HeteroFedAvg(server_optimizer=ServerAdam(lr=0.01)), rounds=rounds,
                                   clients_per_round=2, local={"max_epochs": 1}, log_dir=str(tmp_path), name=name,
                                   checkpoint_every=1, architectures=["resnet10", "resnet14"])
        trainer.fit(ClientModule(HeteroResNet("resnet10", 1, 10, width=4, stem="cifar")),
                    Digits(num_clients=4, batch_size=64), ckpt_path=ckpt_path)
        return load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")["strategy_state"]

    full = run("full", 2)
    run("resumed", 1)
    resumed = run("resumed", 2, ckpt_path="last")
    assert_same_tree(full, resumed)
    assert any(float(v.abs().sum()) > 0 for v in full["server_opt"]["m"].values())
