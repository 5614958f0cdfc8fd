"""Heterogeneous-model baselines: InclusiveFL (and HeteroFL / FedRolex when present)."""

import pytest
import torch

from flcore.strategies import ClientResult, InclusiveFL
from flcore.strategies.inclusivefl import block_of


def _inclusive(beta=0.5, local_top=True):
    s = InclusiveFL(beta=beta, local_top=local_top)
    s.bind(["small", "large"])
    init = {"small": {"f.layer1.0.w": torch.zeros(2), "cls.w": torch.zeros(1)},
            "large": {"f.layer1.0.w": torch.zeros(2), "f.layer1.1.w": torch.zeros(2), "cls.w": torch.zeros(1)}}
    return s, s.initialize(init, 2)


def test_block_of():
    assert block_of("intermediate.layer3.1.conv1.weight") == ("intermediate.layer3", 1, "conv1.weight")
    assert block_of("classifier.weight") is None


def test_inclusivefl_momentum_distillation_hand_computed():
    s, state = _inclusive(beta=0.5, local_top=True)
    results = [ClientResult(0, 0, {"f.layer1.0.w": torch.tensor([1.0, 1.0]), "cls.w": torch.tensor([1.0])}, 1),
               ClientResult(1, 1, {"f.layer1.0.w": torch.tensor([2.0, 0.0]), "f.layer1.1.w": torch.tensor([4.0, 2.0]),
                                   "cls.w": torch.tensor([4.0])}, 3)]
    new = s.aggregate_fit(0, results, state, None)["models"]
    # small top block layer1.0: (1 - 0.5) * [1, 1] + 0.5 * mean([2, 0], [4, 2]) = [2, 1]; local (not shared)
    assert torch.allclose(new["small"]["f.layer1.0.w"], torch.tensor([2.0, 1.0]))
    assert torch.allclose(new["large"]["f.layer1.0.w"], torch.tensor([2.0, 0.0]))  # large keeps its own
    assert torch.allclose(new["large"]["f.layer1.1.w"], torch.tensor([4.0, 2.0]))
    # the classifier is shared: sample-weighted over architectures (1 * 1 + 3 * 4) / 4
    assert new["small"]["cls.w"].item() == pytest.approx(3.25) and new["large"]["cls.w"].item() == pytest.approx(3.25)


def test_inclusivefl_without_local_top_shares_the_distilled_block():
    s, state = _inclusive(beta=0.5, local_top=False)
    results = [ClientResult(0, 0, {"f.layer1.0.w": torch.tensor([1.0, 1.0]), "cls.w": torch.tensor([1.0])}, 1),
               ClientResult(1, 1, {"f.layer1.0.w": torch.tensor([2.0, 0.0]), "f.layer1.1.w": torch.tensor([4.0, 2.0]),
                                   "cls.w": torch.tensor([4.0])}, 3)]
    new = s.aggregate_fit(0, results, state, None)["models"]
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
