"""Heterogeneous-model baselines: InclusiveFL (and HeteroFL / FedRolex when present)."""

import re

import numpy as np
import pytest
import torch

from flcore.strategies import ClientResult, InclusiveFL
from flcore.functional import block_of
from lightning_modules.fednova import FedNovaUpload
from lightning_modules.terms import ScaffoldUpload
from lightning_modules.fedgen import GeneratorTask, LabelCounts


def _inclusive(beta=0.5, local_top=True):
    s = InclusiveFL(beta=beta, local_top=local_top)
    s.bind(["small", "large"])
    init = {"small": {"f.layer1.0.w": torch.zeros(2), "cls.w": torch.zeros(1)},
            "large": {"f.layer1.0.w": torch.zeros(2), "f.layer1.1.w": torch.zeros(2), "cls.w": torch.zeros(1)}}
    return s, s.initialize(init, 2)


def _two_arch_results():
    """The small client (1 sample) trained block layer1.0; the large one (3 samples) also layer1.1."""
    return [ClientResult(0, 0, {"f.layer1.0.w": torch.tensor([1.0, 1.0]), "cls.w": torch.tensor([1.0])}, 1),
            ClientResult(1, 1, {"f.layer1.0.w": torch.tensor([2.0, 0.0]), "f.layer1.1.w": torch.tensor([4.0, 2.0]),
                                "cls.w": torch.tensor([4.0])}, 3)]


def test_block_of():
    assert block_of("intermediate.layer3.1.conv1.weight") == ("intermediate.layer3", 1, "conv1.weight")
    assert block_of("classifier.weight") is None


def test_inclusivefl_momentum_distillation_hand_computed():
    s, state = _inclusive(beta=0.5, local_top=True)
    new = s.aggregate_fit(0, _two_arch_results(), state, None)["models"]
    # small top block layer1.0: (1 - 0.5) * [1, 1] + 0.5 * mean([2, 0], [4, 2]) = [2, 1]; local (not shared)
    assert torch.allclose(new["small"]["f.layer1.0.w"], torch.tensor([2.0, 1.0]))
    assert torch.allclose(new["large"]["f.layer1.0.w"], torch.tensor([2.0, 0.0]))  # large keeps its own
    assert torch.allclose(new["large"]["f.layer1.1.w"], torch.tensor([4.0, 2.0]))
    # the classifier is shared: sample-weighted over architectures (1 * 1 + 3 * 4) / 4
    assert new["small"]["cls.w"].item() == pytest.approx(3.25) and new["large"]["cls.w"].item() == pytest.approx(3.25)


def test_inclusivefl_without_local_top_shares_the_distilled_block():
    s, state = _inclusive(beta=0.5, local_top=False)
    new = s.aggregate_fit(0, _two_arch_results(), state, None)["models"]
    want = (1 * torch.tensor([2.0, 1.0]) + 3 * torch.tensor([2.0, 0.0])) / 4  # [2, 0.25]
    assert torch.allclose(new["small"]["f.layer1.0.w"], want) and torch.allclose(new["large"]["f.layer1.0.w"], want)


def test_inclusivefl_beta_range():
    with pytest.raises(ValueError, match="strategy.beta"):
        InclusiveFL(beta=1.5)


def test_inclusivefl_runs_on_mixed_architectures(tmp_path):
    from lightning import seed_everything

    from datamodules import Digits
    from flcore import FederatedTrainer
    from lightning_modules import ClientModule
    from lightning_modules.models import HeteroResNet

    seed_everything(0)
    trainer = FederatedTrainer(strategy=InclusiveFL(), rounds=2, clients_per_round=4, local={"max_epochs": 1},
                               log_dir=str(tmp_path), architectures=["resnet10", "resnet14", "resnet26"])
    summary = trainer.fit(ClientModule(HeteroResNet("resnet10", 1, 10, width=4, stem="cifar")),
                          Digits(num_clients=6, batch_size=16))
    assert {"global/test_acc/resnet10", "global/test_acc/resnet26"} <= set(trainer.history[-1])
    assert 0 < summary["final_test_acc"] <= 1


# ----------------------------------------------------------------------------- HeteroFL / FedRolex
from flcore.strategies import FedRolex, HeteroFL  # noqa: E402
from flcore.functional import aggregate_slices, extract_submodel, slice_indices  # noqa: E402


def test_slice_indices_leading_and_rolling():
    assert slice_indices(4, 2).tolist() == [0, 1]
    assert slice_indices(4, 2, offset=3).tolist() == [3, 0]  # FedRolex window wraps around
    assert slice_indices(4, 4, offset=3).tolist() == [0, 1, 2, 3]  # the full width is never rolled
    with pytest.raises(ValueError, match="sub-model size"):
        slice_indices(4, 5)


def _tiny_global():
    """A width-4 model: conv (out 4, in 3), BN (4), classifier (10 classes, in 4)."""
    return {"conv.weight": torch.arange(12.0).view(4, 3, 1, 1), "bn.weight": torch.arange(4.0),
            "fc.weight": torch.arange(40.0).view(10, 4)}


def test_extract_submodel_slices_hidden_dims_only():
    full = _tiny_global()
    shapes = {"conv.weight": (2, 3, 1, 1), "bn.weight": (2,), "fc.weight": (10, 2)}
    sub = extract_submodel(full, shapes)
    assert torch.equal(sub["conv.weight"], full["conv.weight"][:2])  # input (image) channels whole
    assert torch.equal(sub["bn.weight"], torch.tensor([0.0, 1.0]))
    assert torch.equal(sub["fc.weight"], full["fc.weight"][:, :2])  # classes whole, inputs sliced
    rolled = extract_submodel(full, shapes, offset=3)
    assert torch.equal(rolled["bn.weight"], torch.tensor([3.0, 0.0]))
    assert torch.equal(rolled["fc.weight"], full["fc.weight"][:, [3, 0]])
    assert torch.equal(rolled["conv.weight"], full["conv.weight"][[3, 0]])


def test_aggregate_slices_hand_computed():
    full = {"bn.weight": torch.zeros(4), "fc.weight": torch.zeros(2, 4)}
    wide = {"bn.weight": torch.ones(4), "fc.weight": torch.ones(2, 4)}
    narrow = {"bn.weight": torch.full((2,), 3.0), "fc.weight": torch.full((2, 2), 5.0)}
    out = aggregate_slices(full, [wide, narrow], [None, None])
    assert out["bn.weight"].tolist() == [2.0, 2.0, 1.0, 1.0]  # (1 + 3) / 2 where both trained
    assert out["fc.weight"].tolist() == [[3.0, 3.0, 1.0, 1.0]] * 2
    rolled = aggregate_slices(full, [wide, narrow], [3, 3])  # narrow covered channels 3 and 0
    assert rolled["bn.weight"].tolist() == [2.0, 1.0, 1.0, 2.0]
    lonely = aggregate_slices({"bn.weight": torch.full((4,), 7.0)}, [{"bn.weight": torch.zeros(2)}], [None])
    assert lonely["bn.weight"].tolist() == [0.0, 0.0, 7.0, 7.0]  # entries no client trained keep their value


@pytest.mark.parametrize("strategy", [HeteroFL, FedRolex])
def test_width_family_runs_heterofl_and_fedrolex(tmp_path, strategy):
    from lightning import seed_everything

    from datamodules import Digits
    from flcore import FederatedTrainer
    from lightning_modules import ClientModule
    from lightning_modules.models import WidthScaledResNet

    seed_everything(0)
    net = WidthScaledResNet("resnet10", 1, 10, width=2, stem="cifar", rates=(1.0, 0.5))
    trainer = FederatedTrainer(strategy=strategy(), rounds=2, clients_per_round=4, local={"max_epochs": 1},
                               log_dir=str(tmp_path), architectures=["w1", "w0.5"])
    summary = trainer.fit(ClientModule(net), Digits(num_clients=6, batch_size=16))
    assert {"global/test_acc/w1", "global/test_acc/w0.5"} <= set(trainer.history[-1])
    assert 0 < summary["final_test_acc"] <= 1
    sub = net.with_architecture("w0.5").state_dict()
    assert sub["intermediate.layer4.0.conv1.weight"].shape == (8, 4, 3, 3)  # width 1: stages 1, 2, 4, 8
    assert not any("running_mean" in k for k in sub)  # static BatchNorm keeps no statistics


def test_width_ratio_out_of_range_is_one_line(run_cli):
    from lightning_modules.models import WidthScaledResNet

    with pytest.raises(ValueError, match=r"model.net.rates: width ratios must be in \(0, 1\]"):
        WidthScaledResNet(rates=(1.0, 1.5))
    from tests.conftest import ROOT

    code, out, err = run_cli("fit", "--config", f"{ROOT}/configs/heterofl_fmnist.yaml",
                             "--model.init_args.net.init_args.rates", "[1.0, 0.0]")
    assert code == 2
    assert "model.net.rates: width ratios must be in (0, 1], got [1.0, 0.0]" in err.strip().splitlines()[-1]


def test_moon_and_fedprox_run_with_layerwise_aggregation(tmp_path):
    """The paper's heterogeneous baselines: MOON / FedProx objectives on HeteroFedAvg."""
    from lightning import seed_everything

    from datamodules import Digits
    from flcore import FederatedTrainer
    from flcore.strategies import HeteroFedAvg
    from lightning_modules import FedProxModule, MoonModule
    from lightning_modules.models import HeteroResNet

    for name, module in (("moon", MoonModule(HeteroResNet("resnet10", 1, 10, 4, "cifar"), projection_dim=8)),
                         ("prox", FedProxModule(HeteroResNet("resnet10", 1, 10, 4, "cifar"), mu=0.1))):
        seed_everything(0)
        trainer = FederatedTrainer(strategy=HeteroFedAvg(), rounds=2, clients_per_round=6, local={"max_epochs": 1},
                                   log_dir=str(tmp_path), name=name, architectures=["resnet10", "resnet22"])
        trainer.fit(module, Digits(num_clients=6, batch_size=16))
        assert trainer.history[-1]["round/failed_clients"] == 0
        assert "global/test_acc/resnet22" in trainer.history[-1]


def _random_results(keys_per_client, seed=0, payload=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for cid, keys in enumerate(keys_per_client):
        state = {k: torch.randn(3, generator=g) for k in keys}
        extra = payload(cid, keys, g) if payload else {}
        out.append(ClientResult(cid, cid, state, num_samples=cid + 2, payload=extra))
    return out


def test_fednova_and_scaffold_on_one_named_architecture_equal_the_homogeneous_run():
    """A family of one named architecture (``trainer.architectures: [only]``) aggregates as the
    unnamed family of a homogeneous run (a flat state_dict, no bind)."""
    import numpy as np

    from flcore.strategies import FedNova, Scaffold

    keys = ["a", "b"]
    init = {"a": torch.zeros(3), "b": torch.ones(3)}
    nova_payload = lambda cid, ks, g: FedNovaUpload(1, 3.0 + cid, tuple(ks))  # noqa: E731
    scaf_payload = lambda cid, ks, g: ScaffoldUpload({k: torch.randn(3, generator=g) for k in ks})  # noqa: E731
    for homo, hetero, payload in ((FedNova(), FedNova(), nova_payload),
                                  (Scaffold(global_lr=0.7), Scaffold(global_lr=0.7), scaf_payload)):
        hetero.bind(["only"] * 3)
        s_homo = homo.initialize(init, 3, num_clients=3)
        s_het = hetero.initialize({"only": init}, 3, num_clients=3)
        res = _random_results([keys] * 3, payload=payload)
        a = homo.aggregate_fit(0, res, s_homo, np.random.default_rng(0))
        b = hetero.aggregate_fit(0, _random_results([keys] * 3, payload=payload), s_het, np.random.default_rng(0))
        for k in keys:
            assert torch.allclose(a["global"][k], b["global"][k], atol=1e-6)
            if "c" in a:
                assert torch.allclose(a["c"][k], b["c"][k], atol=1e-6)


def test_hetero_scaffold_control_variate_per_key_owners():
    from flcore.strategies import Scaffold

    s = Scaffold()
    s.bind(["small", "large", "large"])  # key "b" is owned by 2 of the 3 clients
    state = s.initialize({"small": {"a": torch.zeros(1)}, "large": {"a": torch.zeros(1), "b": torch.zeros(1)}}, 2)
    res = [ClientResult(0, 0, {"a": torch.ones(1)}, 1, payload=ScaffoldUpload({"a": torch.tensor([3.0])})),
           ClientResult(1, 1, {"a": torch.ones(1), "b": torch.ones(1)}, 1,
                        payload=ScaffoldUpload({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}))]
    new = s.aggregate_fit(0, res, state, None)
    assert new["c"]["a"].item() == pytest.approx(6.0 / 3) and new["c"]["b"].item() == pytest.approx(4.0 / 2)
    tasks = s.configure_fit(1, [0, 1], new, None)
    assert sorted(tasks[0].payload.c) == ["a"] and sorted(tasks[1].payload.c) == ["a", "b"]


def test_scaffold_and_fednova_objectives_run_on_mixed_architectures(tmp_path):
    from lightning import seed_everything

    from datamodules import Digits
    from flcore import FederatedTrainer
    from flcore.strategies import FedNova, Scaffold
    from lightning_modules import FedNovaModule, ScaffoldModule
    from lightning_modules.models import HeteroResNet

    for name, strategy, module in (("scaffold", Scaffold(), ScaffoldModule),
                                   ("fednova", FedNova(), FedNovaModule)):
        seed_everything(0)
        trainer = FederatedTrainer(strategy=strategy, rounds=2, clients_per_round=3, local={"max_epochs": 1},
                                   log_dir=str(tmp_path), name=name, architectures=["resnet10", "resnet14"])
        trainer.fit(module(HeteroResNet("resnet10", 1, 10, 4, "cifar")), Digits(num_clients=6, batch_size=16))
        assert trainer.history[-1]["round/failed_clients"] == 0 and "global/test_acc/resnet14" in trainer.history[-1]


# ----------------------------------------------------------------------------- InCo Aggregation
from flcore.strategies import HeteroFedGen, InCo, ScaleFL  # noqa: E402
from flcore.functional import cross_layer_update, inco_reference_key  # noqa: E402

from tests.conftest import ROOT  # noqa: E402

HETERO_DIGITS = f"{ROOT}/configs/hetero_digits.yaml"


def test_inco_cross_layer_update_hand_computed():
    g0 = torch.tensor([[0.03, 0.0], [0.0, 0.04]]).reshape(1, 1, 2, 2)  # |g0| = 0.05
    g = torch.tensor([[0.03, 0.0], [0.0, -0.04]]).reshape(1, 1, 2, 2)  # |g| = 0.05, <g0, g> = -0.0007
    # sigma = |-0.0007| / 0.0025 = 0.28; g' = (g / 0.05 + 0.28 g0 / 0.05) * 0.05 = g + 0.28 g0
    want = torch.tensor([[0.0384, 0.0], [0.0, -0.0288]]).reshape(1, 1, 2, 2)
    assert torch.allclose(cross_layer_update(g, g0), want, atol=1e-6)


def test_inco_cross_layer_update_bounds_sigma_and_clips_per_kernel():
    g0 = torch.zeros(2, 1, 1, 2)
    g0[0, 0, 0] = torch.tensor([0.01, 0.0])    # kernel 0: tiny shallow update along g -> sigma = 4 / 0.01 -> 5
    g0[1, 0, 0] = torch.tensor([0.0, 1.0])     # kernel 1: orthogonal -> sigma = 0
    g = torch.zeros(2, 1, 1, 2)
    g[0, 0, 0] = torch.tensor([0.04, 0.0])
    g[1, 0, 0] = torch.tensor([0.06, 0.0])
    out = cross_layer_update(g, g0)
    # kernel 0: (e1 + 5 e1) * (0.04 + 0.01) / 2 = 0.15 e1 -> clipped to 0.1
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.1, 0.0]))
    # kernel 1: (e1 + 0) * (0.06 + 1) / 2 = 0.53 e1 -> clipped to 0.1; no mixing of the orthogonal g0
    assert torch.allclose(out[1, 0, 0], torch.tensor([0.1, 0.0]))
    assert torch.allclose(cross_layer_update(g, g0, clamp_max=5, clip=1.0)[1, 0, 0], torch.tensor([0.53, 0.0]))
    with pytest.raises(ValueError, match="4-D updates of one shape"):
        cross_layer_update(g, torch.zeros(2, 1, 2, 2))


def test_inco_reference_layers_of_the_family():
    from lightning_modules.models import HeteroResNet

    state = HeteroResNet("resnet26", 1, 10, width=4, stem="cifar").state_dict()
    pairs = {k: inco_reference_key(k, state) for k in state}
    mixed = {k: r for k, r in pairs.items() if r}
    assert mixed["intermediate.layer3.2.conv1.weight"] == "intermediate.layer3.0.conv2.weight"
    assert mixed["intermediate.layer1.1.conv2.weight"] == "intermediate.layer1.0.conv2.weight"
    assert len(mixed) == 4 * 2 * 2  # 4 stages x blocks 1, 2 x two convolutions
    assert all(state[k].shape == state[r].shape for k, r in mixed.items())
    assert not any(".0." in k.split("layer")[1][:3] or "bn" in k or "shortcut" in k for k in mixed)


def test_inco_aggregation_hand_computed():
    s = InCo()
    s.bind(["small", "large"])
    z = torch.zeros(1, 1, 2, 2)
    init = {"small": {"f.layer1.0.conv2.weight": z, "f.layer1.0.bn2.num_batches_tracked": torch.tensor(0)},
            "large": {"f.layer1.0.conv2.weight": z, "f.layer1.0.bn2.num_batches_tracked": torch.tensor(0),
                      "f.layer1.1.conv1.weight": z, "f.layer1.1.bn1.weight": torch.ones(1)}}
    state = s.initialize(init, 2)
    g0 = torch.tensor([[0.03, 0.0], [0.0, 0.04]]).reshape(1, 1, 2, 2)
    g = torch.tensor([[0.03, 0.0], [0.0, -0.04]]).reshape(1, 1, 2, 2)
    results = [ClientResult(0, 0, {"f.layer1.0.conv2.weight": 2 * g0, "f.layer1.0.bn2.num_batches_tracked": torch.tensor(4)}, 10),
               ClientResult(1, 1, {"f.layer1.0.conv2.weight": torch.zeros_like(g0),
                                   "f.layer1.0.bn2.num_batches_tracked": torch.tensor(8),
                                   "f.layer1.1.conv1.weight": g, "f.layer1.1.bn1.weight": torch.tensor([3.0])}, 1)]
    new = s.aggregate_fit(0, results, state, None)["global"]
    assert torch.allclose(new["f.layer1.0.conv2.weight"], g0)  # unweighted mean of (2 g0, 0), not sample-weighted
    assert torch.allclose(new["f.layer1.1.conv1.weight"], g + 0.28 * g0, atol=1e-6)  # mixed with the block-0 update
    assert new["f.layer1.1.bn1.weight"].item() == 3.0  # BN entries are averaged, never mixed
    assert new["f.layer1.0.bn2.num_batches_tracked"].item() == 6
    with pytest.raises(ValueError, match="strategy.clip"):
        InCo(clip=0)
    with pytest.raises(ValueError, match="trainer.architectures: ScaleFL's global model is the full level 'e4w1'"):
        ScaleFL().validate_architectures(["e4w0.9", "e1w0.6"])


# ----------------------------------------------------------------------------- FedGen on a model family
def test_hetero_fedgen_trains_one_generator_on_every_architectures_head():
    from lightning_modules.models import HeteroResNet

    s = HeteroFedGen(generator_steps=3)
    s.bind(["resnet10", "resnet26"])
    init = {a: HeteroResNet(a, 1, 10, width=4, stem="cifar").state_dict() for a in ("resnet10", "resnet26")}
    state = s.initialize(init, 2)
    assert not state["generator_trained"] and s.configure_fit(0, [0, 1], state, None)[1].payload == {}
    counts = [torch.tensor([5] + [0] * 9), torch.tensor([0] * 9 + [5])]
    results = [ClientResult(c, c, {k: v.clone() for k, v in init[a].items()}, 5, payload=LabelCounts(counts[c]))
               for c, a in enumerate(("resnet10", "resnet26"))]
    new = s.aggregate_fit(0, results, state, np.random.default_rng(0))
    assert new["generator_trained"]
    assert any(not torch.equal(v, state["generator"][k]) for k, v in new["generator"].items())
    tasks = s.configure_fit(1, [0, 1], new, None)
    assert [t.arch for t in tasks] == ["resnet10", "resnet26"]
    assert all(t.payload == GeneratorTask(new["generator"]) and t.payload.generator is new["generator"] for t in tasks)
    assert "intermediate.layer4.2.conv1.weight" in tasks[1].state and "intermediate.layer4.2.conv1.weight" not in tasks[0].state


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["--trainer.strategy", "flcore.strategies.InCo"],
    ["--trainer.strategy", "flcore.strategies.HeteroFedGen", "--model.class_path", "lightning_modules.FedGenModule"],
])
def test_new_hetero_baselines_cli_two_rounds_on_digits(run_cli, args):
    code, out, err = run_cli("fit", "--config", HETERO_DIGITS, "--trainer.rounds", "2", "--trainer.eval_every", "1",
                             "--trainer.local.max_epochs", "1", "--model.init_args.net.init_args.width", "4", *args)
    assert code == 0, err
    acc = float(re.search(r"final test_acc ([0-9.]+)", out).group(1))
    assert 0 < acc <= 1


# ----------------------------------------------------------------------------- ScaleFL
import math  # noqa: E402

from lightning_modules import ScaleFLModule  # noqa: E402
from lightning_modules.models import ScaleFLResNet  # noqa: E402
from lightning_modules.scalefl import exit_loss  # noqa: E402

SCALEFL_DIGITS = f"{ROOT}/configs/scalefl_digits.yaml"


def test_scalefl_exit_loss_hand_computed():
    outs = [torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])]  # softmax: [.5, .5] and [.75, .25]
    y = torch.tensor([0])
    ce1, ce2 = math.log(2.0), math.log(4.0 / 3.0)
    # weights 1, 2 over n (n + 1) / 2 = 3; no distillation
    assert exit_loss(outs, y, kd_gamma=0.0).item() == pytest.approx((ce1 + 2 * ce2) / 3)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(teacher || shallow exit), T = 1
    assert exit_loss(outs, y, kd_gamma=0.5, temperature=1.0).item() == pytest.approx((ce1 + 0.5 * kl + 2 * ce2) / 3)
    # T = 2 softens both and multiplies by T^2
    t_soft = torch.softmax(outs[1] / 2, 1)[0]
    kl2 = float((t_soft * (t_soft / 0.5).log()).sum())
    assert exit_loss(outs, y, kd_gamma=0.5, temperature=2.0).item() == pytest.approx((ce1 + 0.5 * 4 * kl2 + 2 * ce2) / 3)
    assert exit_loss(outs[1:], y, kd_gamma=0.5).item() == pytest.approx(ce2)  # one exit: cross-entropy only


def test_scalefl_levels_are_width_and_depth_slices_of_the_full_model():
    from lightning_modules.models import HeteroResNet

    kw = dict(arch="resnet18", in_channels=1, num_classes=10, width=8, stem="cifar")
    full = ScaleFLResNet(**kw).state_dict()
    for level, exits in (("e4w0.9", 4), ("e3w0.8", 3), ("e2w0.7", 2), ("e1w0.6", 1)):
        m = ScaleFLResNet(**kw, level=level)
        assert len(m.exit_logits(torch.randn(2, 1, 8, 8))) == exits and m(torch.randn(2, 1, 8, 8)).shape == (2, 10)
        sub = m.state_dict()
        assert set(sub) <= set(full)  # a depth split: a subset of the entries
        assert all(all(s <= f for s, f in zip(sub[k].shape, full[k].shape)) for k in sub)
        assert any(k.startswith(f"intermediate.layer{exits}.") for k in sub)
        assert not any(k.startswith(f"intermediate.layer{exits + 1}.") for k in sub)
        assert ("classifier.weight" in sub) == (exits == 4)
        assert sub["extractor.0.weight"].shape[0] == round(8 * m.rate)
    with pytest.raises(ValueError, match="model.net.exits: one level must be the full model"):
        ScaleFLResNet(**kw, rates=(0.5, 1.0), exits=(4, 3))
    with pytest.raises(ValueError, match="ScaleFL needs a network with early exits"):
        ScaleFLModule(HeteroResNet("resnet10", 1, 10, width=2, stem="cifar"))


def test_scalefl_aggregation_slices_and_counts():
    kw = dict(arch="resnet10", in_channels=1, num_classes=3, width=2, stem="cifar", rates=(1.0, 0.5), exits=(4, 1),
              exit_convs=1)
    levels = {lv: ScaleFLResNet(**kw, level=lv).state_dict() for lv in ("e4w1", "e1w0.5")}
    s = ScaleFL(dynamic=False)
    s.bind(["e4w1", "e1w0.5"])
    state = s.initialize(levels, 2)
    tasks = s.configure_fit(7, [0, 1], state, np.random.default_rng(0))
    assert [t.arch for t in tasks] == ["e4w1", "e1w0.5"] and all(t.payload == {} for t in tasks)
    small = tasks[1].state
    assert torch.equal(small["extractor.0.weight"], state["global"]["extractor.0.weight"][:1])  # leading channel
    full_up = {k: torch.full_like(v, 2.0) if v.is_floating_point() else v for k, v in tasks[0].state.items()}
    small_up = {k: torch.full_like(v, 4.0) if v.is_floating_point() else v for k, v in small.items()}
    new = s.aggregate_fit(7, [ClientResult(0, 0, full_up, 100), ClientResult(1, 1, small_up, 1)], state, None)["global"]
    w = new["extractor.0.weight"]
    assert torch.all(w[:1] == 3.0) and torch.all(w[1:] == 2.0)  # unweighted mean where both clients hold it
    fc = new["exits.0.fc.weight"]  # (3, 2): the small client trained input channel 0 only
    assert torch.all(fc[:, :1] == 3.0) and torch.all(fc[:, 1:] == 2.0)
    assert torch.all(new["intermediate.layer4.0.conv1.weight"] == 2.0)  # deep entries: the full client alone


def test_scalefl_distillation_starts_at_the_configured_round():
    m = ScaleFLModule(ScaleFLResNet("resnet10", 1, 10, width=2, stem="cifar", rates=(1.0,), exits=(4,), exit_convs=1),
                      kd_gamma=0.1, kd_start_round=3)
    m.current_round = 2  # set by the local runner from ClientTask.rnd
    m.configure_client({})
    assert m._gamma == 0.0
    m.current_round = 3
    m.configure_client({})
    assert m._gamma == 0.1


@pytest.mark.slow
def test_scalefl_cli_two_rounds_on_digits(run_cli, tmp_path):
    code, out, err = run_cli("fit", "--config", SCALEFL_DIGITS, "--trainer.rounds", "2", "--trainer.eval_every", "1",
                             "--trainer.local.max_epochs", "1", "--model.init_args.net.init_args.width", "4")
    assert code == 0, err
    header = next((tmp_path / "runs").glob("scalefl_digits/version_*/metrics.csv")).read_text().splitlines()[0]
    assert all(f"global/test_acc/{lv}" in header for lv in ("e4w1", "e4w0.9", "e3w0.8", "e2w0.7", "e1w0.6"))
    acc = float(re.search(r"final test_acc ([0-9.]+)", out).group(1))
    assert 0 < acc <= 1


# ----------------------------------------------------------------------------- FedET
from flcore.strategies import FedET  # noqa: E402
from flcore.functional import ensemble_targets  # noqa: E402


def test_fedet_ensemble_targets_hand_computed():
    # sample 0: A = [.9, .1] (confident), B = [.4, .6] (unsure, disagrees); sample 1: both say class 1
    p = torch.tensor([[[0.9, 0.1], [0.2, 0.8]],
                      [[0.4, 0.6], [0.3, 0.7]]]).log()
    labels, diversity, has = ensemble_targets(p)
    var_a, var_b = math.log(9.0) ** 2 / 2, math.log(0.4 / 0.6) ** 2 / 2  # unbiased variance over 2 classes
    cons = (var_a * p[0, 0] + var_b * p[1, 0]) / (var_a + var_b)
    assert labels.tolist() == [int(cons.argmax()), 1] == [0, 1]
    assert has.tolist() == [True, False]
    assert torch.allclose(diversity[0], p[1, 0])  # only B disagrees on sample 0: its log-probabilities
    assert torch.equal(diversity[1], torch.zeros(2))  # everyone agrees: no diversity target


def _fedet_round(**kw):
    from lightning_modules.models import HeteroResNet

    archs = ["resnet10", "resnet14"]
    nets = {a: HeteroResNet(a, 1, 3, width=2, stem="cifar") for a in archs}
    s = FedET(**kw)
    s.bind(archs)
    s.bind_server(nets, torch.randn(20, 1, 8, 8))
    state = s.initialize({a: n.state_dict() for a, n in nets.items()}, 2)
    ups = []
    for c, a in enumerate(archs):
        st = {k: v.clone() for k, v in s.configure_fit(0, [c], state, None)[0].state.items()}
        st["classifier.weight"] += c + 1.0
        ups.append(ClientResult(c, c, st, 10))
    return s, state, ups


def test_fedet_server_model_takes_the_mean_head_and_shares_it():
    s, state, ups = _fedet_round(distill_steps=1, distill_lr=1e-12)
    assert state["server_arch"] == "resnet14" and list(state["edge"]) == ["resnet10"]  # the larger member serves
    new = s.aggregate_fit(0, ups, state, np.random.default_rng(0))
    mean_head = (ups[0].state["classifier.weight"] + ups[1].state["classifier.weight"]) / 2
    assert torch.allclose(new["server"]["classifier.weight"], mean_head, atol=1e-6)
    assert torch.equal(new["edge"]["resnet10"]["classifier.weight"], new["server"]["classifier.weight"])
    # the server model's own (non-head) weights come from its architecture's clients
    key = "intermediate.layer4.1.conv1.weight"
    assert torch.allclose(new["server"][key], ups[1].state[key], atol=1e-6)
    assert set(s.global_models(new)) == {"resnet10", "resnet14"} and s.global_model(new) is new["server"]


def test_fedet_distillation_fits_the_consensus():
    s, state, ups = _fedet_round(distill_steps=60, distill_lr=0.5, diversity_weight=0.0)
    logp = torch.stack([s._log_probs(s.client_arch[r.cid], r.state) for r in ups])
    labels, _, _ = ensemble_targets(logp)
    new = s.aggregate_fit(0, ups, state, np.random.default_rng(0))
    net = s._nets["resnet14"]
    net.load_state_dict(new["server"])
    net.train()  # static batches of the public set: the server model learnt the consensus labels
    with torch.no_grad():
        acc = (net(s._public).argmax(1) == labels).float().mean().item()
    assert acc >= 0.9


def test_fedet_needs_a_public_set_and_a_known_server_arch(run_cli):
    code, _, err = run_cli("fit", "--config", HETERO_DIGITS, "--trainer.strategy", "flcore.strategies.FedET")
    assert code == 2 and "data.public_size: FedET distils on unlabelled server-held data" in err.strip().splitlines()[-1]
    code, _, err = run_cli("fit", "--config", HETERO_DIGITS, "--trainer.strategy", "flcore.strategies.FedET",
                           "--trainer.strategy.init_args.server_arch", "resnet99", "--data.init_args.public_size", "0.1")
    assert code == 2 and "strategy.server_arch: must be one of trainer.architectures" in err.strip().splitlines()[-1]


@pytest.mark.slow
def test_fedet_cli_two_rounds_on_digits(run_cli):
    code, out, err = run_cli("fit", "--config", HETERO_DIGITS, "--trainer.strategy", "flcore.strategies.FedET",
                             "--trainer.strategy.init_args.distill_steps", "4", "--data.init_args.public_size", "0.1",
                             "--trainer.rounds", "2", "--trainer.eval_every", "1", "--trainer.local.max_epochs", "1",
                             "--model.init_args.net.init_args.width", "4")
    assert code == 0, err
    assert 0 < float(re.search(r"final test_acc ([0-9.]+)", out).group(1)) <= 1
