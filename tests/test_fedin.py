"""FedIN and heterogeneous-model FL: the family, both aggregations, Eq. 12/13, noise, IN training."""

import re

import numpy as np
import pytest
import torch
from lightning import seed_everything

from datamodules import Digits, Dirichlet
from flcore import FederatedTrainer
from flcore.net_checks import check_feature_shapes
from flcore.errors import ConfigError
from flcore.local import LocalRunner
from flcore.strategies import ClientResult, FedIN, HeteroFedAvg
from flcore.messages import ClientTask
from lightning_modules import ClientModule, FedINModule
from lightning_modules.fedin import FedINTask, add_feature_noise, corrected_in_gradient
from lightning_modules.models import FAMILY_STAGES, HeteroResNet

FEDIN_DIGITS = "configs/fedin_digits.yaml"


# ----------------------------------------------------------------------------- the family
@pytest.mark.parametrize("stem,size,hw", [("imagenet", 32, 8), ("cifar", 8, 8)])
def test_family_features_have_one_shape_and_keys_nest(stem, size, hw):
    x = torch.randn(3, 3, size, size)
    nets = {a: HeteroResNet(a, 3, 10, width=4, stem=stem).eval() for a in FAMILY_STAGES}
    for net in nets.values():
        s_in = net.extractor(x)
        assert s_in.shape == (3, 4, hw, hw)
        assert net.intermediate(s_in).shape == (3, 32)
        assert net(x).shape == (3, 10)
    big = nets["resnet26"].state_dict()
    for arch, net in nets.items():  # every member's keys are the largest member's, with the same shapes
        assert all(k in big and big[k].shape == v.shape for k, v in net.state_dict().items())
    blocks = {a: len({k.split(".")[1] + "." + k.split(".")[2] for k in n.state_dict() if k.startswith("intermediate.layer")})
              for a, n in nets.items()}
    assert blocks == {a: sum(s) for a, s in FAMILY_STAGES.items()}


def test_family_bad_arch():
    with pytest.raises(ValueError, match=r"model.net.arch: must be one of \['resnet10'"):
        HeteroResNet("resnet99")


# ----------------------------------------------------------------------------- aggregation
def _three_arch_results():
    """Client 0 (small) has key a; client 1 (medium) a, b; client 2 (large) a, b, c."""
    states = [{"a": torch.tensor([1.0])},
              {"a": torch.tensor([3.0]), "b": torch.tensor([10.0])},
              {"a": torch.tensor([5.0]), "b": torch.tensor([20.0]), "c": torch.tensor([7.0])}]
    return [ClientResult(cid=i, slot=i, state=s, num_samples=i + 1) for i, s in enumerate(states)]


def test_layerwise_aggregation_eq19_hand_computed():
    strategy = HeteroFedAvg("layerwise")
    strategy.bind(["s", "m", "l"])
    init = {"s": {"a": torch.zeros(1)}, "m": {"a": torch.zeros(1), "b": torch.zeros(1)},
            "l": {"a": torch.zeros(1), "b": torch.zeros(1), "c": torch.zeros(1)}}
    state = strategy.initialize(init, 3)
    tasks = strategy.configure_fit(0, [0, 1, 2], state, np.random.default_rng(0))
    assert [sorted(t.state) for t in tasks] == [["a"], ["a", "b"], ["a", "b", "c"]]
    assert [t.arch for t in tasks] == ["s", "m", "l"]
    new = strategy.aggregate_fit(0, _three_arch_results(), state, np.random.default_rng(0))
    g = new["global"]  # key in 3, 2, 1 clients: plain means over owners (Eq. 19)
    assert g["a"].item() == pytest.approx(3.0) and g["b"].item() == pytest.approx(15.0) and g["c"].item() == 7.0
    weighted = HeteroFedAvg("layerwise", weighted=True)
    weighted.bind(["s", "m", "l"])
    g = weighted.aggregate_fit(0, _three_arch_results(), weighted.initialize(init, 3), None)["global"]
    assert g["a"].item() == pytest.approx((1 * 1 + 3 * 2 + 5 * 3) / 6) and g["b"].item() == pytest.approx(16.0)
    models = strategy.global_models(new)
    assert sorted(models["m"]) == ["a", "b"] and models["s"]["a"].item() == pytest.approx(3.0)


def test_layerwise_keeps_keys_no_client_trained():
    strategy = HeteroFedAvg("layerwise")
    strategy.bind(["s", "l"])
    state = strategy.initialize({"s": {"a": torch.zeros(1)}, "l": {"a": torch.zeros(1), "c": torch.full((1,), 9.0)}}, 1)
    new = strategy.aggregate_fit(0, [ClientResult(0, 0, {"a": torch.ones(1)}, 5)], state, None)
    assert new["global"]["a"].item() == 1.0 and new["global"]["c"].item() == 9.0


def test_same_shape_aggregation_eq21_weights():
    strategy = HeteroFedAvg("same_shape")
    strategy.bind(["s", "l", "s"])
    init = {"s": {"w": torch.zeros(2)}, "l": {"w": torch.zeros(3)}}
    state = strategy.initialize(init, 2)
    results = [ClientResult(0, 0, {"w": torch.tensor([1.0, 1.0])}, 1), ClientResult(2, 1, {"w": torch.tensor([4.0, 0.0])}, 3)]
    new = strategy.aggregate_fit(0, results, state, None)
    assert torch.allclose(new["models"]["s"]["w"], torch.tensor([(1 + 12) / 4, 0.25]))  # sample-weighted (Eq. 21)
    assert torch.equal(new["models"]["l"]["w"], torch.zeros(3))  # no large client this round
    eq20 = HeteroFedAvg("same_shape", weighted=False)
    eq20.bind(["s", "l", "s"])
    assert torch.allclose(eq20.aggregate_fit(0, results, eq20.initialize(init, 2), None)["models"]["s"]["w"],
                          torch.tensor([2.5, 0.5]))


def test_bad_aggregation_and_feature_batches():
    with pytest.raises(ValueError, match="strategy.aggregation"):
        HeteroFedAvg("mean")
    with pytest.raises(ValueError, match="strategy.feature_batches"):
        FedIN(feature_batches=0)


# ----------------------------------------------------------------------------- Eq. 12 / 13
def test_eq12_projects_onto_half_space():
    g = torch.Generator().manual_seed(0)
    g_local = [torch.randn(4, 3, generator=g), torch.randn(5, generator=g)]
    g_in = [-2 * g_local[0] + torch.randn(4, 3, generator=g), -2 * g_local[1]]  # <G_IN, G_local> < 0
    z = corrected_in_gradient(g_in, g_local, "eq12")
    dot = lambda u, v: sum((a.double() * b.double()).sum() for a, b in zip(u, v))  # noqa: E731
    a, b = dot(g_local, g_local), dot(g_local, g_in)
    assert b < 0
    assert dot(z, g_local) >= -1e-9 * a and abs(dot(z, g_local)) < 1e-4  # on the boundary <Z, G_local> = 0
    for zi, gi, gl in zip(z, g_in, g_local):
        assert torch.allclose(zi, gi - (b / a).float() * gl, atol=1e-6)
    dist = dot([zi - gi for zi, gi in zip(z, g_in)], [zi - gi for zi, gi in zip(z, g_in)])
    for _ in range(20):  # no other feasible point is closer to G_IN
        cand = [zi + 0.3 * torch.randn(zi.shape, generator=g) for zi in z]
        if dot(cand, g_local) >= 0:
            assert dot([c - gi for c, gi in zip(cand, g_in)], [c - gi for c, gi in zip(cand, g_in)]) >= dist
    aligned = [gl.clone() for gl in g_local]
    assert all(torch.equal(a_, b_) for a_, b_ in zip(corrected_in_gradient(aligned, g_local, "eq12"), aligned))


def test_eq13_arithmetic_and_none():
    z = corrected_in_gradient([torch.tensor([1.0, 2.0])], [torch.tensor([4.0, -2.0])], "eq13", lam=1.0)
    assert torch.equal(z[0], torch.tensor([3.0, 1.0]))  # G_IN + (1/2) G_local
    z = corrected_in_gradient([torch.tensor([1.0])], [torch.tensor([4.0])], "eq13", lam=3.0)
    assert z[0].item() == 7.0
    assert torch.equal(corrected_in_gradient([torch.ones(2)], [torch.zeros(2)], "none")[0], torch.ones(2))
    with pytest.raises(ValueError, match="model.correction"):
        corrected_in_gradient([torch.ones(1)], [torch.ones(1)], "eq99")


def test_noise_scale():
    x = 3.0 * torch.randn(20000, generator=torch.Generator().manual_seed(1))
    noisy = add_feature_noise(x, 0.8, generator=torch.Generator().manual_seed(2))
    assert (noisy - x).std().item() == pytest.approx(0.8 * x.std().item(), rel=0.03)
    assert add_feature_noise(x, 0.0) is x
    with pytest.raises(ValueError, match="model.noise_k"):
        add_feature_noise(x, -0.1)
    with pytest.raises(ValueError, match="model.noise_k"):
        FedINModule(HeteroResNet("resnet10", 1, 10, 4, "cifar"), noise_k=-1)


# ----------------------------------------------------------------------------- IN training
def test_in_training_changes_only_intermediate_layers():
    """One local step of the same client, with and without server features: extractor and
    classifier end identical (the IN loss reaches only the intermediate layers); intermediate
    layers differ. (One step: after it, different intermediate weights change later gradients.)"""
    dm = Digits(num_clients=4, batch_size=1000)
    dm.setup("fit")
    seed_everything(0)
    net = HeteroResNet("resnet10", 1, 10, width=4, stem="cifar")
    start = {k: v.clone() for k, v in net.state_dict().items()}
    runner = LocalRunner(FedINModule(net, mu=0.1, correction="eq13"), dm, {"max_epochs": 1, "accelerator": "cpu"}, seed=0)
    g = torch.Generator().manual_seed(5)
    feats = FedINTask(torch.randn(16, 4, 8, 8, generator=g), torch.randn(16, 32, generator=g).abs(), torch.tensor([16]))
    plain = runner.fit(ClientTask(0, start, 0, {}), 0)
    with_in = runner.fit(ClientTask(0, start, 0, feats), 0)
    for k in start:
        same = torch.equal(plain.state[k], with_in.state[k])
        if k.startswith(("extractor.", "classifier.")):
            assert same, k
    assert any(not torch.equal(plain.state[k], with_in.state[k]) for k in start if k.startswith("intermediate."))
    up = with_in.payload
    n = len(dm.client_indices[0])
    assert up.s_in.shape == (n, 4, 8, 8) and up.s_out.shape == (n, 32)


# ----------------------------------------------------------------------------- runs
def test_fedin_bytes_up_include_feature_batches(tmp_path):
    archs = ["resnet10", "resnet14"]
    ups = {}
    for name, strategy, module in (("avg", HeteroFedAvg(), ClientModule), ("fedin", FedIN(), FedINModule)):
        seed_everything(0)
        trainer = FederatedTrainer(strategy=strategy, rounds=2, clients_per_round=3, local={"max_epochs": 1},
                                   log_dir=str(tmp_path), name=name, architectures=archs)
        trainer.fit(module(HeteroResNet("resnet10", 1, 10, width=4, stem="cifar")), Digits(num_clients=6, batch_size=16))
        ups[name] = [h["round/bytes_up"] for h in trainer.history]
        assert {f"global/test_acc/{a}" for a in archs} <= set(trainer.history[-1])
    extra = [f - a for f, a in zip(ups["fedin"], ups["avg"])]
    per_sample = 4 * (4 * 8 * 8 + 32)  # float32 s_in (4, 8, 8) + s_out (32,)
    assert all(e > 0 and e % per_sample == 0 for e in extra) and extra[0] == 3 * 16 * per_sample


def test_fedin_cli_two_rounds_mixed_architectures(run_cli, tmp_path):
    code, out, err = run_cli("fit", "--config", FEDIN_DIGITS, "--trainer.rounds", "2", "--trainer.eval_every", "1",
                             "--trainer.local.max_epochs", "1", "--model.net.width", "4")
    assert code == 0, err
    assert "FedIN finished 2 rounds" in out
    final = re.search(r"final test_acc ([0-9.]+)", out).group(1)
    code, out, err = run_cli("test", "--config", FEDIN_DIGITS, "--model.net.width", "4",
                             "--trainer.log_dir", str(tmp_path / "runs"), "--ckpt_path", "last")
    assert code == 0, err
    assert "test_acc/resnet26" in out and f"test_acc {final}" in out  # every architecture, and the same mean


@pytest.mark.parametrize("args,message", [
    (["--trainer.architectures", "[resnet10, resnet99]"],
     "flcore: error: trainer.architectures: must be names from ['resnet10', 'resnet14', 'resnet18', 'resnet22', 'resnet26'], got 'resnet99'"),
    (["--model.noise_k", "-0.5"], "model.noise_k: must be >= 0, got -0.5"),
    (["--trainer.strategy", "flcore.strategies.FedAvg"],
     "model.class_path: lightning_modules.FedINModule needs trainer.strategy.class_path flcore.strategies.FedIN"),
    (["--trainer.strategy", "flcore.strategies.FedAvg", "--model.class_path", "lightning_modules.ClientModule"],
     "trainer.strategy: FedAvg aggregates one architecture"),
    (["--trainer.client_architectures", "[resnet10, resnet14]"], "trainer.client_architectures: must give one architecture per client"),
])
def test_fedin_bad_input_one_line(run_cli, args, message):
    code, out, err = run_cli("fit", "--config", FEDIN_DIGITS, *args)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert message in last and "Traceback" not in err


def test_feature_shapes_must_agree_between_architectures():
    dm = Digits(num_clients=4)
    dm.setup("fit")
    modules = {"narrow": FedINModule(HeteroResNet("resnet10", 1, 10, 4, "cifar")),
               "wide": FedINModule(HeteroResNet("resnet14", 1, 10, 8, "cifar"))}
    with pytest.raises(ConfigError, match="model.net: FedIN exchanges features, but their shapes differ"):
        check_feature_shapes(modules, dm)


def test_heterogeneous_checkpoint_resume_matches(tmp_path):
    def run(rounds, ckpt=None, name="r"):
        seed_everything(0)
        trainer = FederatedTrainer(strategy=FedIN(), rounds=rounds, clients_per_round=3, local={"max_epochs": 1},
                                   log_dir=str(tmp_path), name=name, architectures=["resnet10", "resnet22"])
        trainer.fit(FedINModule(HeteroResNet("resnet10", 1, 10, 4, "cifar")), Digits(num_clients=6, partition=Dirichlet(1.0),
                                                                                   batch_size=16), ckpt_path=ckpt)
        return trainer.history

    full = run(3, name="full")
    run(2, name="part")
    resumed = run(3, ckpt="last", name="part")
    assert full[-1]["global/test_acc"] == resumed[-1]["global/test_acc"]
    assert full[-1]["global/test_loss"] == resumed[-1]["global/test_loss"]
