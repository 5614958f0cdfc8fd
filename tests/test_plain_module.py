"""A user's own LightningModule, unchanged, as a federated client (the general path,
lightning_modules/plain.py and flcore/plain_local.py): the same update as a hand-written loop,
FedProx's term applied without the user adding it, the module's own logging, optimizers and hooks
as in a plain Trainer.fit, YAML and Python, and one-line refusals before training."""

import copy
import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning import seed_everything

from datamodules import Digits, Dirichlet
from flcore import FederatedTrainer
from flcore.checkpoint import load_checkpoint
from flcore.errors import ConfigError
from flcore.seeding import STREAM_CLIENT, derive_seed
from flcore.strategies import FedAvg, FedCross, FedMR, FedProx, Moon, Scaffold
from lightning_modules import FedProxModule, MoonModule
from lightning_modules.models import CNN
from tests.conftest import assert_same_tree
from tests.user_code import Counting, DigitsMLP, NoForward, WithFeatures, WrongOutput

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "own_module"


def _data(num_clients=3):
    return Digits(num_clients=num_clients, partition=Dirichlet(beta=0.5), batch_size=40, seed=0)


def _fit(tmp_path, strategy, module, data, rounds=2, epochs=2, clients=3, name="run"):
    trainer = FederatedTrainer(strategy=strategy, rounds=rounds, clients_per_round=clients, eval_every=1,
                               local={"max_epochs": epochs}, log_dir=str(tmp_path), name=name)
    summary = trainer.fit(module, data)
    return trainer, summary


def _hand_rounds(init, data, rounds, epochs, lr, mu=0.0, seed=0):
    """FedAvg / FedProx by hand: every client from the global model, SGD over its mini-batches in
    flcore's order (derive_seed(seed, round, client)), gradient + mu (w - w_global), then the
    sample-weighted mean (FedProx paper, Alg. 2; FedAvg when mu = 0)."""
    global_state = copy.deepcopy(init)
    for rnd in range(rounds):
        states, sizes = [], []
        for cid in range(data.num_clients):
            net = DigitsMLP(hidden=8, lr=lr)
            net.load_state_dict(global_state)
            anchor = [p.detach().clone() for p in net.parameters()]
            opt = torch.optim.SGD(net.parameters(), lr=lr)
            source = data.client_batches(cid, generator=torch.Generator().manual_seed(derive_seed(seed, rnd, cid, STREAM_CLIENT)))
            for _ in range(epochs):
                for batches in source:
                    for x, y in batches:
                        opt.zero_grad()
                        F.cross_entropy(net(x), y).backward()
                        with torch.no_grad():
                            for p, a in zip(net.parameters(), anchor):
                                p.grad += mu * (p - a)
                        opt.step()
            states.append(net.state_dict())
            sizes.append(source.num_samples)
        total = sum(sizes)
        global_state = {k: sum(s[k] * (n / total) for s, n in zip(states, sizes)) for k in global_state}
    return global_state


def _global(summary):
    return load_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "last.ckpt")["strategy_state"]["global"]


@pytest.mark.parametrize("mu", [None, 0.5])
def test_fedavg_and_fedprox_equal_the_hand_written_loop(tmp_path, mu):
    seed_everything(0)
    module, data = Counting(hidden=8, lr=0.2), _data()
    init = copy.deepcopy(module.state_dict())
    strategy = FedAvg() if mu is None else FedProx(mu=mu)
    _, summary = _fit(tmp_path, strategy, module, data)
    got = _global(summary)
    want = _hand_rounds(init, data, rounds=2, epochs=2, lr=0.2, mu=mu or 0.0)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    if mu:  # the proximal term changed the update: FedProx is not FedAvg here
        plain = _hand_rounds(init, data, rounds=2, epochs=2, lr=0.2)
        assert max((got[k] - plain[k]).abs().max().item() for k in want) > 1e-3


def test_the_module_behaves_as_in_a_plain_fit_and_its_logs_reach_the_records(tmp_path):
    seed_everything(0)
    module, data = Counting(hidden=8), _data(num_clients=4)
    trainer, summary = _fit(tmp_path, FedAvg(), module, data, rounds=3, clients=2)
    # configure_optimizers: once for the check before training, then fresh for each of 3 x 2 clients
    assert module.optimizers_built == 1 + 6 and module.fits_started == 6
    row = trainer.history[-1]
    assert 0.0 <= row["clients/my_acc"] <= 1.0 and row["clients/my_loss"] > 0
    assert row["clients/train_loss"] == pytest.approx(row["clients/my_loss"], rel=1e-5)  # both: last epoch's mean
    run = Path(summary["run_dir"])
    with open(run / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert {"clients/my_loss", "clients/my_acc", "global/test_acc"} <= set(header)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    assert "clients/my_acc" in events.Tags()["scalars"]
    assert summary["final_test_acc"] > 0.1  # 3 short rounds; the evaluation itself ran on (B, 10) outputs


def test_a_module_without_num_classes_is_evaluated_over_the_datas_classes(tmp_path):
    seed_everything(0)
    module = DigitsMLP(hidden=8)
    assert not hasattr(module, "num_classes")
    _, summary = _fit(tmp_path, FedAvg(), module, _data(), rounds=1)
    assert 0.0 <= summary["final_test_acc"] <= 1.0


def test_fedcross_and_fedmr_run_a_user_module_and_repeat_under_a_seed(tmp_path):
    states = {}
    for strategy, name in ((FedCross(alpha=0.9), "fedcross"), (FedMR(), "fedmr"), (FedMR(), "fedmr_again")):
        seed_everything(0)
        trainer, summary = _fit(tmp_path, strategy, DigitsMLP(hidden=8), _data(), rounds=3, epochs=1, name=name)
        assert [row["round"] for row in trainer.history] == [1, 2, 3]
        states[name] = load_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "last.ckpt")["strategy_state"]
    assert len(states["fedcross"]["models"]) == 3 and len(states["fedmr"]["models"]) == 3  # K = clients per round
    assert_same_tree(states["fedmr"], states["fedmr_again"])


@pytest.mark.slow
def test_the_example_runs_from_yaml_with_fedavg_fedprox_fedcross_and_fedmr(run_cli, tmp_path):
    config = str(EXAMPLE / "fedavg_digits.yaml")
    for strategy in (["flcore.strategies.FedAvg"], ["flcore.strategies.FedProx", "--trainer.strategy.mu", "0.01"],
                     ["flcore.strategies.FedCross"], ["flcore.strategies.FedMR"]):
        code, out, err = run_cli("fit", "--config", config, "--trainer.strategy", *strategy, "--trainer.rounds", "4",
                                 "--trainer.eval_every", "4", "--trainer.name", strategy[0].rsplit(".", 1)[1])
        assert code == 0, err
        assert "finished 4 rounds" in out
    record = json.loads(next((tmp_path / "runs" / "FedProx").glob("version_*/results.json")).read_text())
    assert record["status"] == "finished"
    code, out, err = run_cli("test", "--config", config, "--trainer.log_dir", str(tmp_path / "runs"),
                             "--trainer.name", "FedAvg")
    assert code == 0 and "flcore test: round 4" in out, err


@pytest.mark.parametrize("strategy, module, message", [
    (Moon(), DigitsMLP(), "trainer.strategy.init_args.mu: MOON with a user's own LightningModule needs"),
    (Moon(mu=1.0), DigitsMLP(), "model: MOON's contrastive term reads the module's representation; give DigitsMLP a "
                                "features(x) method"),
    (Moon(mu=1.0), MoonModule(CNN(in_channels=1, num_classes=10, image_size=8)),
     "trainer.strategy.init_args.mu: set the contrastive weight once, in model.init_args.mu"),
    (FedProx(), DigitsMLP(), "trainer.strategy.init_args.mu: FedProx with a user's own LightningModule needs"),
    (FedAvg(), NoForward(), "model: cannot take the data's inputs of shape (1, 8, 8) (forward must map"),
    (FedAvg(), WrongOutput(), "model: forward must return (B, 10) class scores for the data's 10 classes, got (2, 5)"),
    (FedAvg(), DigitsMLP(hidden=0), "model: parameter model.1.weight has zero size"),
    (FedProx(mu=0.1), FedProxModule(CNN(in_channels=1, num_classes=10, image_size=8)),
     "trainer.strategy.init_args.mu: set the proximal weight once, in model.init_args.mu"),
])
def test_refusals_are_one_line_before_training(tmp_path, strategy, module, message):
    trainer = FederatedTrainer(strategy=strategy, rounds=1, clients_per_round=2, log_dir=str(tmp_path), name="bad")
    with pytest.raises(ConfigError) as err:
        trainer.fit(module, _data())
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "bad").exists()  # nothing written: refused before training


def test_a_negative_proximal_weight_is_refused():
    with pytest.raises(ValueError, match=r"trainer.strategy.init_args.mu: the proximal weight must be >= 0, got -1"):
        FedProx(mu=-1)


def test_a_python_run_records_its_config_seed_and_hyperparameters(tmp_path):
    import yaml

    seed_everything(3)
    _, summary = _fit(tmp_path, FedProx(mu=0.05), DigitsMLP(hidden=8, lr=0.2), _data(), rounds=1)
    run = Path(summary["run_dir"])
    config = json.loads((run / "results.json").read_text())["config"]
    assert config["source"] == "python" and config["seed_everything"] == 3
    assert config["model"] == {"class_path": "my_module.DigitsMLP", "init_args": {"hidden": 8, "lr": 0.2}}
    assert config["trainer"]["strategy"] == {"class_path": "flcore.strategies.FedProx",
                                             "init_args": {"server_optimizer": None, "mu": 0.05}}
    assert config["data"]["init_args"]["partition"] == {"class_path": "datamodules.Dirichlet",
                                                        "init_args": {"beta": 0.5, "min_size": 10, "max_tries": 1000}}
    assert yaml.safe_load((run / "config.yaml").read_text()) == config
    hp = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hp["model"] == "DigitsMLP" and hp["model.lr"] == 0.2 and hp["strategy.mu"] == 0.05 and hp["seed"] == 3


def test_scaffold_with_a_user_module_equals_the_shipped_scaffold_objective(tmp_path):
    """SCAFFOLD's control variates as a callback (ControlVariates) give the same rounds as
    ScaffoldModule on the same net, data order and optimizer, client state carried between rounds."""
    from functools import partial

    from lightning_modules import ScaffoldModule

    seed_everything(0)
    user = DigitsMLP(hidden=8, lr=0.2)
    shipped_net = copy.deepcopy(user.model)
    _, plain = _fit(tmp_path, Scaffold(), user, _data(), rounds=3, name="plain")
    seed_everything(0)
    shipped = ScaffoldModule(shipped_net, optimizer=partial(torch.optim.SGD, lr=0.2))
    _, fast = _fit(tmp_path, Scaffold(), shipped, _data(), rounds=3, name="fast")
    a, b = (load_checkpoint(Path(s["run_dir"]) / "checkpoints" / "last.ckpt")["strategy_state"] for s in (plain, fast))
    assert list(a["global"]) == [f"model.{k}" for k in b["global"]]
    for key in b["global"]:
        torch.testing.assert_close(a["global"][f"model.{key}"], b["global"][key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["c"][f"model.{key}"], b["c"][key], rtol=1e-4, atol=1e-6)
    assert max(v.abs().max().item() for v in a["c"].values()) > 0  # the control variates moved


def test_moon_with_a_user_module_equals_the_shipped_moon_objective(tmp_path):
    """MOON's contrastive term as a callback (ContrastiveTerm) on a user's module whose
    features() and forward are MoonNet's gives the same rounds as MoonModule on that net (same
    data order and optimizer; the previous local model carried between rounds as client state),
    and differs from FedAvg."""
    from functools import partial

    import lightning as L

    from lightning_modules.models import CNN as _CNN

    class UserMoon(L.LightningModule):  # what a user writes: MoonNet as its model, its own loss
        def __init__(self, net):
            super().__init__()
            self.model = net

        def features(self, x):
            return self.model.features(x)

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.2)

    seed_everything(0)
    shipped = MoonModule(_CNN(1, 10, 8, channels=(4, 8), hidden=16), optimizer=partial(torch.optim.SGD, lr=0.2),
                         mu=5.0, projection_dim=8)
    user = UserMoon(copy.deepcopy(shipped.net))
    avg = UserMoon(copy.deepcopy(shipped.net))
    _, plain = _fit(tmp_path, Moon(mu=5.0), user, _data(), rounds=3, name="plain")
    _, fast = _fit(tmp_path, Moon(), shipped, _data(), rounds=3, name="fast")
    _, fedavg = _fit(tmp_path, FedAvg(), avg, _data(), rounds=3, name="fedavg")
    a, b, c = (load_checkpoint(Path(s["run_dir"]) / "checkpoints" / "last.ckpt")["strategy_state"]["global"]
               for s in (plain, fast, fedavg))
    assert list(a) == [f"model.{k}" for k in b]
    for key in b:
        torch.testing.assert_close(a[f"model.{key}"], b[key], rtol=1e-4, atol=1e-5)
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-3  # the term changed the update


def test_moon_keeps_a_user_modules_previous_model_between_rounds(tmp_path):
    """The README's module with a features() method runs under MOON: each participant's model
    after its update is its client state, in the checkpoint's client-state store."""
    from flcore.client_store import checkpoint_client_states

    seed_everything(0)
    trainer, summary = _fit(tmp_path, Moon(mu=1.0), WithFeatures(hidden=8, lr=0.2), _data(), rounds=2, clients=3)
    ckpt = load_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "last.ckpt")
    kept = checkpoint_client_states(ckpt, trainer.run_dir)["module"]
    assert sorted(kept) == [0, 1, 2] and all(sorted(s["prev"]) == sorted(ckpt["strategy_state"]["global"])
                                             for s in kept.values())
    assert summary["final"]["global/test_acc"] > 0.2


def test_clustered_sampling_runs_a_user_module(tmp_path):
    from flcore.samplers import ClusteredSampler

    seed_everything(0)
    trainer = FederatedTrainer(strategy=FedAvg(), sampler=ClusteredSampler(), rounds=3, clients_per_round=2,
                               eval_every=1, local={"max_epochs": 1}, log_dir=str(tmp_path), name="clusamp")
    trainer.fit(DigitsMLP(hidden=8), _data(num_clients=4))
    assert [row["round"] for row in trainer.history] == [1, 2, 3]
    assert trainer.sampler.updates is not None and trainer.sampler.updates.abs().sum() > 0  # updates observed


def test_dp_fedavg_runs_a_user_module_and_reports_epsilon(tmp_path):
    from flcore.strategies import DPFedAvg

    seed_everything(0)
    trainer, _ = _fit(tmp_path, DPFedAvg(clip_norm=0.5, noise_multiplier=1.0), DigitsMLP(hidden=8), _data(num_clients=4),
                      rounds=2, epochs=1, clients=2, name="dp")
    eps = [row["dp/epsilon"] for row in trainer.history]
    assert 0 < eps[0] < eps[1]  # the accountant spends more with every round
