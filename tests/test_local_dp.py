"""Local DP-SGD (Abadi et al., CCS 2016) through Opacus: the clipped step by hand, the noise scale,
Poisson sampling, the accountant counting every local step of every round a client took part in,
composition with FedProx / SCAFFOLD / MOON, exact resume, and the refusals before training."""

import math

import pytest
import torch
import torch.nn.functional as F
from lightning import seed_everything
from torch import nn

from datamodules import Digits, PoissonEpochs
from flcore import FederatedTrainer
from flcore.checkpoint import load_checkpoint
from flcore.errors import ConfigError
from flcore.samplers import UniformSampler
from flcore.seeding import STREAM_SAMPLER, round_rng
from flcore.strategies import FedAvg, FedProx, Moon, Scaffold
from lightning_modules import ClientModule, FedProxModule, MoonModule, ScaffoldModule
from lightning_modules.dp import LEDGER_KEY, DPSteps, LocalDP, rdp_epsilon
from lightning_modules.models import CNN, ResNet20
from tests.conftest import assert_same_tree

pytest.importorskip("opacus")


def _sgd(params):
    return torch.optim.SGD(params, lr=0.5)


class _Linear(nn.Module):
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _fit(tmp_path, module, strategy=None, rounds=1, per_round=1, clients=1, batch=10_000, dp=None, name="dp",
         epochs=1, ckpt_path=None, **kwargs):
    seed_everything(0)
    trainer = FederatedTrainer(strategy=strategy or FedAvg(), rounds=rounds, clients_per_round=per_round,
                               local={"max_epochs": epochs}, log_dir=str(tmp_path), name=name, local_dp=dp,
                               eval_every=rounds, **kwargs)
    dm = Digits(num_clients=clients, batch_size=batch)
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer, dm


def test_one_step_is_the_clipped_mean_gradient_by_hand(tmp_path):
    """No noise, one client, one full-batch step: w1 = w0 - lr * mean_i(g_i * min(1, C / ||g_i||)),
    with g_i each sample's own cross-entropy gradient (weight and bias together)."""
    torch.manual_seed(0)
    net = _Linear()
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    dm = Digits(num_clients=1, batch_size=10_000)
    dm.setup("fit")
    x, y = dm.x_train[dm.client_indices[0]], dm.y_train[dm.client_indices[0]]
    clip = 0.05
    total = {k: torch.zeros_like(v) for k, v in w0.items()}
    for xi, yi in zip(x, y):
        probe = _Linear()
        probe.load_state_dict(w0)
        F.cross_entropy(probe(xi[None]), yi[None]).backward()
        grads = {f"fc.{n}": p.grad for n, p in probe.fc.named_parameters()}
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
        for k, g in grads.items():
            total[k] += g * min(1.0, clip / (norm + 1e-6))
    expected = {k: w0[k] - 0.5 * total[k] / len(y) for k in w0}
    module = ClientModule(net, optimizer=_sgd)
    _fit(tmp_path, module, dp=LocalDP(noise_multiplier=0.0, max_grad_norm=clip, poisson=False))
    got = module.net.state_dict()  # one client: its update is the global model
    for k in expected:
        assert torch.allclose(got[k], expected[k], atol=1e-6), k
    assert not torch.allclose(got["fc.weight"], w0["fc.weight"])
    # and unclipped (C large) it is plain SGD
    plain = _Linear()
    plain.load_state_dict(w0)
    F.cross_entropy(plain(x), y).backward()
    torch.manual_seed(0)
    module = ClientModule(_Linear(), optimizer=_sgd)
    _fit(tmp_path, module, dp=LocalDP(noise_multiplier=0.0, max_grad_norm=1e6, poisson=False), name="big")
    assert torch.allclose(module.net.fc.weight, w0["fc.weight"] - 0.5 * plain.fc.weight.grad, atol=1e-6)


def test_noise_has_standard_deviation_z_c_over_the_expected_batch():
    """A batch whose gradients are all zero leaves only the noise: std z * C / E[B]."""
    net = nn.Linear(400, 200, bias=False)
    nn.init.zeros_(net.weight)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    dp = DPSteps(LocalDP(noise_multiplier=1.3, max_grad_norm=0.5))
    dp.attach(net, opt)
    dp.begin_client(num_samples=40, num_batches=4)  # E[B] = 10
    dp.clear()
    torch.manual_seed(3)
    net(torch.zeros(6, 400)).sum().backward()  # zero inputs: every per-sample gradient is zero
    dp.privatize(6)
    std = float(net.weight.grad.std())
    assert std == pytest.approx(1.3 * 0.5 / 10, rel=0.02)
    assert dp.steps == 1 and dp.sample_rate == 0.25


def _poisson(seed):
    return PoissonEpochs(torch.arange(200.0), torch.arange(200), range(200), 20, torch.Generator().manual_seed(seed))


def test_poisson_batches_sample_each_sample_with_rate_one_over_s():
    src = _poisson(0)
    assert src.num_batches == 10 and src.sample_rate == 0.1
    sizes = [len(y) for _ in range(50) for _, y in next(iter(src))]
    assert len(sizes) == 500 and sum(sizes) / len(sizes) == pytest.approx(20, rel=0.05)
    assert len(set(sizes)) > 5  # the sizes vary, as Poisson sampling makes them
    a, b = next(iter(_poisson(0))), next(iter(_poisson(0)))  # the same generator state, the same batches
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.mark.slow
def test_the_accountant_counts_every_local_step_of_every_round(tmp_path):
    """4 clients, 2 per round, 3 rounds of 2 local epochs at B = 64: each client's step count is
    (its rounds) * 2 * ceil(n_k / 64), and its epsilon is Opacus's after that many steps."""
    module = ClientModule(CNN(1, 10, 8, channels=(4, 8), hidden=16))
    dp = LocalDP(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    trainer, dm = _fit(tmp_path, module, rounds=3, per_round=2, clients=4, batch=64, dp=dp, epochs=2)
    sampler = UniformSampler()
    sampler.setup(dm.client_sizes)
    rounds_of = {c: 0 for c in range(4)}
    for rnd in range(3):
        for c in sampler.sample(rnd, 4, 2, round_rng(0, rnd, STREAM_SAMPLER)):
            rounds_of[int(c)] += 1
    from opacus.accountants import RDPAccountant

    for c in range(4):
        per_round = 2 * math.ceil(dm.client_sizes[c] / 64)
        kept = trainer.client_store.get("module", c)
        assert (kept or {}).get(LEDGER_KEY, 0) == rounds_of[c] * per_round, c
        if rounds_of[c]:
            accountant = RDPAccountant()
            for _ in range(rounds_of[c] * per_round):
                accountant.step(noise_multiplier=1.1, sample_rate=1 / math.ceil(dm.client_sizes[c] / 64))
            assert rdp_epsilon(1.1, 1 / math.ceil(dm.client_sizes[c] / 64), kept[LEDGER_KEY], 1e-5) == pytest.approx(
                accountant.get_epsilon(1e-5), rel=1e-9)
    last = trainer.history[-1]
    assert last["clients/dp_epsilon_max"] >= last["clients/dp_epsilon"] > 0
    assert math.isfinite(last["global/test_acc"])


def _no_noise():
    return LocalDP(noise_multiplier=0.0, max_grad_norm=1e6, poisson=False)


@pytest.mark.slow
@pytest.mark.parametrize("make, strategy", [
    (lambda: FedProxModule(CNN(1, 10, 8, channels=(4, 8), hidden=16), optimizer=_sgd, mu=1.0), FedProx),
    (lambda: ScaffoldModule(CNN(1, 10, 8, channels=(4, 8), hidden=16), optimizer=_sgd), Scaffold),
    (lambda: MoonModule(CNN(1, 10, 8, channels=(4, 8), hidden=16), optimizer=_sgd, mu=1.0), Moon),
], ids=["fedprox", "scaffold", "moon"])
def test_objectives_compose_without_clipping_or_noise_it_is_the_objective(tmp_path, make, strategy):
    """With C far above every gradient and no noise, DP-SGD is the objective's own SGD: FedProx's
    proximal term (outside the per-sample gradients) is kept, SCAFFOLD's correction is added after
    the privatization, MOON's contrastive term is clipped with the samples'."""
    torch.manual_seed(1)
    a = make()
    torch.manual_seed(1)
    b = make()
    ta, _ = _fit(tmp_path, a, strategy(), rounds=2, per_round=2, clients=4, batch=64, name="plain")
    tb, _ = _fit(tmp_path, b, strategy(), rounds=2, per_round=2, clients=4, batch=64, dp=_no_noise(), name="dp")
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-4), k
    assert ta.history[-1]["global/test_acc"] == pytest.approx(tb.history[-1]["global/test_acc"], abs=0.02)


@pytest.mark.slow
def test_fedprox_under_dp_keeps_its_proximal_term(tmp_path):
    torch.manual_seed(1)
    prox = FedProxModule(CNN(1, 10, 8, channels=(4, 8), hidden=16), optimizer=_sgd, mu=1.0)
    torch.manual_seed(1)
    avg = ClientModule(CNN(1, 10, 8, channels=(4, 8), hidden=16), optimizer=_sgd)
    _fit(tmp_path, prox, FedProx(), clients=4, per_round=1, batch=64, dp=_no_noise(), name="prox")
    _fit(tmp_path, avg, FedAvg(), clients=4, per_round=1, batch=64, dp=_no_noise(), name="avg")
    assert not torch.allclose(prox.net.fc2.weight, avg.net.fc2.weight, atol=1e-4)


@pytest.mark.slow
def test_noised_runs_are_seeded_and_resume_bit_identically(tmp_path):
    dp = LocalDP(noise_multiplier=1.0, max_grad_norm=1.0)

    def run(name, rounds, ckpt_path=None):
        torch.manual_seed(0)
        module = ClientModule(CNN(1, 10, 8, channels=(4, 8), hidden=16))
        trainer, _ = _fit(tmp_path, module, rounds=rounds, per_round=2, clients=8, batch=64, dp=dp, name=name,
                          checkpoint_every=1, ckpt_path=ckpt_path)
        return trainer

    whole = run("whole", 3)
    run("split", 1)
    split = run("split", 3, ckpt_path="last")  # a fresh process state: also seeded round 1 again
    a = load_checkpoint(whole.run_dir / "checkpoints" / "last.ckpt")
    b = load_checkpoint(split.run_dir / "checkpoints" / "last.ckpt")
    assert_same_tree(a["strategy_state"], b["strategy_state"])
    assert whole.history[-1]["clients/dp_epsilon_max"] == split.history[-1]["clients/dp_epsilon_max"]


def test_refusals_are_one_line_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.local_dp.max_grad_norm: must be > 0, got 0"):
        LocalDP(max_grad_norm=0)
    with pytest.raises(ValueError, match=r"trainer.local_dp.delta: must be in \(0, 1\), got 2"):
        LocalDP(delta=2)
    with pytest.raises(ConfigError, match=r"model.net: local DP-SGD cannot compute per-sample gradients of ResNet20: "
                                          r".*BatchNorm"):
        _fit(tmp_path, ClientModule(ResNet20(in_channels=1, num_classes=10)), dp=LocalDP())
    with pytest.raises(ConfigError, match=r"trainer.local.precision: local DP-SGD runs in 32-true, got 'bf16-mixed'"):
        seed_everything(0)
        FederatedTrainer(rounds=1, clients_per_round=1, local={"precision": "bf16-mixed"}, log_dir=str(tmp_path),
                         local_dp=LocalDP()).fit(ClientModule(_Linear()), Digits(num_clients=1))
    assert not (tmp_path / "dp").exists()  # nothing was written
