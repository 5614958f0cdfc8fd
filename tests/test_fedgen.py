import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flcore.strategies import ClientResult, FedGen
from flcore.functional import classifier_keys, teacher_weights
from lightning_modules import FedGenModule
from lightning_modules.fedgen import GeneratorTask, LabelCounts
from lightning_modules.models import CNN, VGG16, FeatureGenerator, ResNet20
from lightning_modules.models.generator import diversity_loss
from tests.conftest import QUICKSTART


def test_teacher_weights_hand_computed():
    counts = torch.tensor([[3, 0, 1], [1, 0, 1]])
    w = teacher_weights(counts)
    assert torch.allclose(w, torch.tensor([[0.75, 0.0, 0.5], [0.25, 0.0, 0.5]], dtype=torch.float64))


def test_diversity_loss_hand_computed():
    eps = torch.tensor([[0.0], [1.0]])
    feat = torch.tensor([[0.0], [2.0]])
    # pair distances: noise (squared) 1, features (abs) 2, off-diagonal only: mean over 4 = 1
    assert diversity_loss(eps, feat).item() == pytest.approx(math.exp(-1.0))


@pytest.mark.parametrize("net,expected", [(CNN(1, 10, 8), "fc2"), (ResNet20(), "linear"), (VGG16(), "fc")])
def test_classifier_keys(net, expected):
    assert classifier_keys(net.state_dict()) == (f"{expected}.weight", f"{expected}.bias")


def test_generator_training_lowers_the_ensemble_loss():
    torch.manual_seed(0)
    s = FedGen(generator_steps=60, generator_batch=64, diversity_weight=0.0, generator_lr=1e-2)
    heads = [torch.randn(4, 8) for _ in range(3)]
    uploads = [ClientResult(k, k, {"fc.weight": w, "fc.bias": torch.zeros(4)}, 10,
                            payload=LabelCounts(torch.tensor([5, 5, 0, 5]))) for k, w in enumerate(heads)]
    state = s.initialize({"fc.weight": torch.zeros(4, 8), "fc.bias": torch.zeros(4)}, 3)
    gen = FeatureGenerator(4, 8, s.noise_dim, s.hidden)
    gen.load_state_dict(state["generator"])
    losses = s.train_generator(gen, s._optimizer(gen), uploads, np.random.default_rng(0))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    new = s.aggregate_fit(0, uploads, state, np.random.default_rng(0))
    assert new["generator_trained"] and not state["generator_trained"]
    task = s.configure_fit(1, [0], new, None)[0]
    assert isinstance(task.payload, GeneratorTask) and task.payload.generator is new["generator"]


def test_client_loss_hand_computed():
    torch.manual_seed(0)
    mod = FedGenModule(CNN(1, 4, 8, channels=(2, 4), hidden=6), generative_alpha=2.0, generative_beta=3.0, decay=0.5)
    gen = mod.generator
    b = torch.randn(6)
    with torch.no_grad():  # a generator that always outputs b
        gen.out.weight.zero_()
        gen.out.bias.copy_(b)
    mod.current_round = 1  # set by the local runner from ClientTask.rnd
    mod.configure_client(GeneratorTask(gen.state_dict()))  # alpha_t = 1, beta_t = 1.5
    x, y = torch.randn(5, 1, 8, 8), torch.full((5,), 2)
    mod.train()
    loss = mod.batch_loss((x, y))
    logits = mod.net(x)
    head_b = mod.net.classifier(b[None].expand(5, -1))
    expected = (F.cross_entropy(logits, y) + 1.0 * F.cross_entropy(head_b, y)
                + 1.5 * F.kl_div(F.log_softmax(logits, 1), F.softmax(head_b, 1), reduction="batchmean"))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert mod.client_upload().counts.tolist() == [0, 0, 5, 0]


def test_without_generator_it_is_cross_entropy():
    mod = FedGenModule(CNN(1, 4, 8))
    mod.configure_client({})
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 3])
    assert mod.batch_loss((x, y)).item() == pytest.approx(F.cross_entropy(mod.net(x), y).item(), rel=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="feature/classifier split"):
        FedGenModule(torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="decay"):
        FedGenModule(CNN(1, 10, 8), decay=0.0)
    with pytest.raises(ValueError, match="generator_steps"):
        FedGen(generator_steps=0)


def test_fedgen_cli_run_counts_the_generator(run_cli, tmp_path):
    from tests.test_cli import _scalars

    code, _, err = run_cli("fit", "--config", QUICKSTART, "--trainer.rounds", "2", "--trainer.local.max_epochs", "1",
                           "--trainer.eval_every", "1", "--trainer.strategy.class_path", "flcore.strategies.FedGen",
                           "--model.class_path", "lightning_modules.FedGenModule")
    assert code == 0, err
    run = sorted((tmp_path / "runs").glob("quickstart/version_*"))[-1]
    down = [v for _, v in _scalars(run, "round/bytes_down")]
    gen_bytes = sum(t.numel() * t.element_size() for t in FeatureGenerator(10, 512).state_dict().values())
    assert down[1] - down[0] == pytest.approx(5 * gen_bytes)  # 5 clients receive the generator from round 2
