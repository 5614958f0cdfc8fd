import math

import pytest
import torch
import torch.nn.functional as F

from datamodules import Digits
from flcore.checkpoint import load_checkpoint, save_checkpoint
from flcore.client_store import checkpoint_client_states
from flcore.local import LocalRunner
from flcore.strategies import ClientResult, ClientTask, FedNova, Moon, Scaffold
from lightning_modules import FedNovaModule, FedProxModule, MoonModule, ScaffoldModule
from lightning_modules.fednova import FedNovaUpload, momentum_a_norm
from lightning_modules.terms import ScaffoldTask, ScaffoldUpload
from lightning_modules.moon import MoonNet, moon_contrastive_loss
from lightning_modules.models import CNN
from tests.conftest import QUICKSTART


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


# ---------------------------------------------------------------- FedProx
def test_fedprox_gradient_is_ce_gradient_plus_mu_times_drift():
    torch.manual_seed(0)
    mod = FedProxModule(CNN(1, 10, 8, channels=(4, 8), hidden=16), mu=0.3)
    mod.configure_client({})  # w_global = current weights
    w_global = [p.detach().clone() for p in mod.net.parameters()]
    with torch.no_grad():
        for p in mod.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = _batch()
    mod.net.zero_grad()
    mod.training_loss(mod(x), y, x).backward()
    prox_grads = [p.grad.clone() for p in mod.net.parameters()]
    mod.net.zero_grad()
    F.cross_entropy(mod(x), y).backward()
    for g, p, w0 in zip(prox_grads, mod.net.parameters(), w_global):
        assert torch.allclose(g, p.grad + 0.3 * (p.detach() - w0), atol=1e-6)


def test_fedprox_mu_must_be_non_negative():
    with pytest.raises(ValueError, match="mu"):
        FedProxModule(CNN(1, 10, 8), mu=-0.1)


# ---------------------------------------------------------------- SCAFFOLD
def _one_batch_client():
    dm = Digits(num_clients=20, batch_size=1000, seed=0)  # every client fits in one batch: K = 1 step
    dm.setup()
    return dm


def test_scaffold_corrected_step_and_option_ii_update():
    torch.manual_seed(0)
    dm = _one_batch_client()
    lr = 0.1
    mod = ScaffoldModule(CNN(1, 10, 8, channels=(4, 8), hidden=16),
                         optimizer=lambda p: torch.optim.SGD(p, lr=lr))
    runner = LocalRunner(mod, dm, {"max_epochs": 1}, seed=0)
    x0 = {k: v.clone() for k, v in mod.net.state_dict().items()}
    names = [n for n, _ in mod.net.named_parameters()]
    g = torch.Generator().manual_seed(1)
    c = {n: 0.01 * torch.randn(x0[n].shape, generator=g) for n in names}
    ci = {n: 0.01 * torch.randn(x0[n].shape, generator=g) for n in names}
    res = runner.fit(ClientTask(cid=3, state=x0, payload=ScaffoldTask(c), client_state={"c_i": ci}), rnd=0)
    # the gradient of the client's loss at x0
    mod.net.load_state_dict(x0)
    mod.net.zero_grad()
    xs, ys = dm.client_dataset(3).__getitems__(list(range(len(dm.client_dataset(3)))))
    F.cross_entropy(mod.net(xs), ys).backward()
    grad = {n: p.grad.clone() for n, p in mod.net.named_parameters()}
    for n in names:  # y = x - lr (g - c_i + c)
        assert torch.allclose(res.state[n], x0[n] - lr * (grad[n] - ci[n] + c[n]), atol=1e-5)
        # option II with K = 1: c_i+ = c_i - c + (x - y) / lr = g
        assert torch.allclose(res.client_state["c_i"][n], grad[n], atol=1e-4)
        assert torch.allclose(res.payload.delta_c[n], grad[n] - ci[n], atol=1e-4)


def test_scaffold_server_update_hand_computed():
    s = Scaffold(global_lr=0.5)
    state = s.initialize({"w": torch.tensor([0.0]), "bn.num_batches_tracked": torch.tensor(0)}, 2, num_clients=4)
    tasks = s.configure_fit(0, [1, 3], state, None)
    assert tasks[0].payload == ScaffoldTask({}) and tasks[0].client_state is None  # c_i is the trainer's to fill
    results = [
        ClientResult(1, 0, {"w": torch.tensor([2.0]), "bn.num_batches_tracked": torch.tensor(4)}, 10,
                     payload=ScaffoldUpload({"w": torch.tensor([1.0])})),
        ClientResult(3, 1, {"w": torch.tensor([6.0]), "bn.num_batches_tracked": torch.tensor(8)}, 30,
                     payload=ScaffoldUpload({"w": torch.tensor([3.0])})),
    ]
    new = s.aggregate_fit(0, results, state, None)
    assert new["global"]["w"].item() == pytest.approx(2.0)  # 0 + 0.5 * mean(2, 6), unweighted
    assert new["c"]["w"].item() == pytest.approx(1.0)  # 0 + (2/4) * mean(1, 3)
    assert new["global"]["bn.num_batches_tracked"].item() == 3  # 0.5 * 0 + 0.5 * 6
    assert state["c"] == {}  # the input state is not mutated
    task = s.configure_fit(1, [3], new, None)[0]
    assert torch.equal(task.payload.c["w"], torch.tensor([1.0]))  # the new server control variate goes down


def test_scaffold_refuses_fp16_scaling():
    mod = ScaffoldModule(CNN(1, 10, 8))
    with pytest.raises(ValueError, match="precision"):
        mod.check_local_config({"precision": "16-mixed"})
    mod.check_local_config({"precision": "bf16-mixed"})


# ---------------------------------------------------------------- FedNova
def test_momentum_a_norm_matches_the_unrolled_sum():
    assert momentum_a_norm(5, 0.0) == 5
    assert momentum_a_norm(3, 0.5) == pytest.approx(4.25)
    rho, tau = 0.9, 7
    unrolled = sum(sum(rho ** (t - k) for t in range(k, tau)) for k in range(tau))
    assert momentum_a_norm(tau, rho) == pytest.approx(unrolled)


def test_fednova_normalized_averaging_hand_computed():
    s = FedNova()
    state = s.initialize({"w": torch.tensor([0.0]), "bn.running_mean": torch.tensor([0.0])}, 2)
    results = [
        ClientResult(0, 0, {"w": torch.tensor([-2.0]), "bn.running_mean": torch.tensor([1.0])}, 1,
                     payload=FedNovaUpload(2, 2.0, ("w",))),
        ClientResult(1, 1, {"w": torch.tensor([-8.0]), "bn.running_mean": torch.tensor([5.0])}, 3,
                     payload=FedNovaUpload(4, 4.0, ("w",))),
    ]
    new = s.aggregate_fit(0, results, state, None)
    # p = (1/4, 3/4); d = (1, 2); tau_eff = 3.5; x = 0 - 3.5 * (0.25 + 1.5) = -6.125 (FedAvg: -6.5)
    assert new["global"]["w"].item() == pytest.approx(-6.125)
    assert new["global"]["bn.running_mean"].item() == pytest.approx(4.0)  # buffers: FedAvg


def test_fednova_module_reports_steps():
    dm = Digits(num_clients=10, batch_size=20, seed=0)
    dm.setup()
    mod = FedNovaModule(CNN(1, 10, 8), optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.5))
    runner = LocalRunner(mod, dm, {"max_epochs": 2}, seed=0)
    init = {k: v.clone() for k, v in mod.net.state_dict().items()}
    res = runner.fit(ClientTask(cid=0, state=init), 0)
    tau = 2 * math.ceil(dm.client_sizes[0] / 20)
    assert res.payload.tau == tau and res.payload.a_norm == pytest.approx(momentum_a_norm(tau, 0.5))


# ---------------------------------------------------------------- MOON
def test_moon_loss_hand_computed():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    zg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zp = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    # sample 1: sim_g = 1, sim_p = 0 -> log(1 + e^-2); sample 2: both 1 -> log 2
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert moon_contrastive_loss(z, zg, zp, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_moon_net_and_previous_model():
    torch.manual_seed(0)
    mod = MoonModule(CNN(1, 10, 8), mu=5.0, projection_dim=32)
    assert isinstance(mod.net, MoonNet) and mod.net.features(torch.randn(2, 1, 8, 8)).shape == (2, 32)
    prev = {k: torch.zeros_like(v) for k, v in mod.net.state_dict().items()}
    mod.load_client_state({"prev": prev})
    mod.configure_client({})
    assert all(torch.equal(p, torch.zeros_like(p)) for p in mod.prev_net.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(mod.global_net.state_dict().values(), mod.net.state_dict().values()))
    mod.train()
    assert not mod.global_net.training and not mod.prev_net.training


def test_moon_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        MoonModule(CNN(1, 10, 8), temperature=0)
    with pytest.raises(ValueError, match="mu"):
        MoonModule(CNN(1, 10, 8), mu=-1)


@pytest.mark.parametrize("strategy,module,key", [(Scaffold, ScaffoldModule, "c_i"), (Moon, MoonModule, "prev")])
def test_trainer_keeps_and_checkpoints_client_states(tmp_path, strategy, module, key):
    """Client state is the trainer's: each participant's state after round r is what it gets back
    at its next participation, and the checkpoint holds it (not the strategy state)."""
    from flcore import FederatedTrainer

    dm = Digits(num_clients=4, batch_size=50, seed=0)
    trainer = FederatedTrainer(strategy=strategy(), rounds=2, clients_per_round=4, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name="cs")
    seen: list[tuple[int, dict | None]] = []
    mod = module(CNN(1, 10, 8, channels=(4, 8), hidden=16))
    original = mod.load_client_state

    def spy(state):
        seen.append(state)
        original(state)

    mod.load_client_state = spy
    trainer.fit(mod, datamodule=dm)
    assert seen[:4] == [None] * 4 and all(s is not None and key in s for s in seen[4:])  # round 2 gets round 1's
    ckpt = load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")
    kept = checkpoint_client_states(ckpt, trainer.run_dir)["module"]
    assert sorted(kept) == [0, 1, 2, 3] and "clients" not in ckpt["strategy_state"]
    assert all(key in s for s in kept.values())
    assert sorted(ckpt["client_store"]["entries"]["module"]) == [0, 1, 2, 3]  # named, not copied
    assert "client_states" not in ckpt


def test_old_checkpoints_client_states_move_to_the_trainer(tmp_path):
    """Checkpoints written when the strategy kept client states (``strategy_state["clients"]``)
    resume with those states as the trainer's."""
    from flcore.lifecycle import client_states as _client_states

    old = {"round": 3, "strategy_state": {"global": {"w": torch.zeros(2)}, "clients": {2: {"c_i": {"w": torch.ones(2)}}}}}
    save_checkpoint(old, tmp_path / "round_00003.ckpt")
    back = load_checkpoint(tmp_path / "last.ckpt")
    states = _client_states(back)
    assert torch.equal(states["module"][2]["c_i"]["w"], torch.ones(2)) and "clients" not in back["strategy_state"]
    assert states["bn"] == {}
    assert _client_states({"client_states": {1: {"prev": {}}}, "strategy_state": {}}) == {"module": {1: {"prev": {}}},
                                                                                        "bn": {}}


# ---------------------------------------------------------------- end to end
BASELINES = {
    "fedprox": ("flcore.strategies.FedProx", "lightning_modules.FedProxModule", ["--model.init_args.mu", "0.01"]),
    "scaffold": ("flcore.strategies.Scaffold", "lightning_modules.ScaffoldModule", []),
    "fednova": ("flcore.strategies.FedNova", "lightning_modules.FedNovaModule", []),
    "moon": ("flcore.strategies.Moon", "lightning_modules.MoonModule", ["--model.init_args.mu", "1.0"]),
}


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_two_round_cli_run(run_cli, tmp_path, name):
    from tests.test_cli import _scalars

    strategy, module, extra = BASELINES[name]
    code, out, err = run_cli("fit", "--config", QUICKSTART, "--trainer.rounds", "2", "--trainer.eval_every", "1",
                             "--trainer.local.max_epochs", "1", "--trainer.strategy.class_path", strategy,
                             "--model.class_path", module, *extra)
    assert code == 0, err
    run = sorted((tmp_path / "runs").glob("quickstart/version_*"))[-1]
    acc = _scalars(run, "global/test_acc")
    assert [s for s, _ in acc] == [1, 2]
    down = [v for _, v in _scalars(run, "round/bytes_down")]
    model_bytes = sum(p.numel() * 4 for p in CNN(1, 10, 8).parameters()) * 5  # CNN has no buffers; 5 clients
    if name == "scaffold":
        assert down[0] >= model_bytes and down[1] >= 2 * model_bytes  # round 2 also sends c
    elif name != "moon":
        assert down == [model_bytes, model_bytes]
