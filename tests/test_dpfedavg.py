"""DP-FedAvg: the clipping bound, the noise scale on a seeded draw, the accountant's epsilon, and
a target epsilon that ends the run cleanly (and stays ended on resume)."""

import json
import math

import numpy as np
import pytest
import torch
from lightning import seed_everything

from datamodules import Digits
from flcore import FederatedTrainer
from flcore.checkpoint import load_checkpoint
from flcore.errors import ConfigError
from flcore.messages import ClientResult
from flcore.strategies import DPFedAvg
from flcore.functional import clip_update, epsilon_spent, noise_multiplier_for_updates
from lightning_modules import ClientModule
from lightning_modules.models import CNN

pytest.importorskip("opacus")


def _result(cid, state):
    return ClientResult(cid=cid, slot=cid, state=state, num_samples=10)


def test_clipping_bound():
    update = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}  # norm 5
    clipped, norm = clip_update(update, 1.0)
    assert norm == pytest.approx(5.0)
    assert math.sqrt(sum(float(v.pow(2).sum()) for v in clipped.values())) == pytest.approx(1.0)
    assert clipped["a"].tolist() == pytest.approx([0.6, 0.0]) and clipped["b"].tolist() == pytest.approx([0.8])
    same, _ = clip_update(update, 10.0)
    assert all(torch.equal(same[k], update[k]) for k in update)


def test_aggregate_by_hand_without_noise():
    strategy = DPFedAvg(clip_norm=1.0, noise_multiplier=0.0)
    x = {"w": torch.zeros(2, dtype=torch.float64), "n": torch.tensor(7)}
    state = strategy.initialize(x, clients_per_round=4, num_clients=8)
    results = [_result(0, {"w": torch.tensor([2.0, 0.0], dtype=torch.float64), "n": torch.tensor(9)}),   # clipped to [1, 0]
               _result(1, {"w": torch.tensor([0.0, 0.5], dtype=torch.float64), "n": torch.tensor(9)})]   # kept
    new = strategy.aggregate_fit(0, results, state, np.random.default_rng(0))
    assert new["global"]["w"].tolist() == pytest.approx([0.25, 0.125])  # sum / K = 4 (two clients did not answer)
    assert new["global"]["n"].item() == 7  # integer buffers keep the global value
    assert new["dp"]["rounds"] == 1 and new["dp"]["unclipped"] == 0.25  # 1 of K = 4 unclipped
    assert strategy.round_metrics(new)["dp/epsilon"] == math.inf  # no noise, no privacy


def test_noise_is_sigma_c_over_k_on_a_seeded_draw():
    strategy = DPFedAvg(clip_norm=0.5, noise_multiplier=1.3)
    x = {"w": torch.zeros(200_000, dtype=torch.float64)}
    state = strategy.initialize(x, clients_per_round=4, num_clients=40)
    new = strategy.aggregate_fit(0, [_result(0, {"w": x["w"].clone()})], state, np.random.default_rng(7))
    generator = torch.Generator().manual_seed(int(np.random.default_rng(7).integers(2**62)))
    expected = torch.randn(200_000, generator=generator, dtype=torch.float64) * (1.3 * 0.5) / 4
    assert torch.equal(new["global"]["w"], expected)
    assert float(new["global"]["w"].std()) == pytest.approx(1.3 * 0.5 / 4, rel=0.01)


def test_epsilon_matches_the_accountants_own_computation():
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(30):
        accountant.step(noise_multiplier=1.1, sample_rate=0.05)
    assert epsilon_spent(1.1, 0.05, 30, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    assert epsilon_spent(1.1, 0.05, 0, 1e-5) == 0.0


def test_adaptive_clipping_follows_the_quantile_and_splits_the_noise():
    # Andrew et al. 2021, Thm. 1: z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)
    assert noise_multiplier_for_updates(1.0, 1.0) == pytest.approx((1 - 0.25) ** -0.5)
    with pytest.raises(ValueError, match=r"strategy.clip_count_stddev: must exceed noise_multiplier / 2"):
        noise_multiplier_for_updates(2.0, 1.0)
    strategy = DPFedAvg(clip_norm=1.0, noise_multiplier=0.5, adaptive_clipping=True, clip_count_stddev=1.0,
                        target_quantile=0.5, clip_lr=0.2)
    x = {"w": torch.zeros(3, dtype=torch.float64)}
    state = strategy.initialize(x, clients_per_round=100, num_clients=1000)
    small = [_result(i, {"w": torch.full((3,), 0.01, dtype=torch.float64)}) for i in range(100)]  # all unclipped
    new = strategy.aggregate_fit(0, small, state, np.random.default_rng(0))
    b = new["dp"]["unclipped"]
    assert b == pytest.approx(1.0, abs=0.05)  # 100 / 100 plus noise of std 1 / 100
    assert new["dp"]["clip_norm"] == pytest.approx(math.exp(-0.2 * (b - 0.5)))  # shrinks toward the median norm


def _trainer(tmp_path, **kwargs):
    return FederatedTrainer(strategy=DPFedAvg(clip_norm=1.0, noise_multiplier=1.0, **kwargs), rounds=5, clients_per_round=2,
                            local={"max_epochs": 1}, log_dir=str(tmp_path), name="dp", checkpoint_every=1)


def _fit(trainer, ckpt_path=None):
    seed_everything(0)
    return trainer.fit(ClientModule(CNN(1, 10, 8, channels=(4, 8), hidden=16)), Digits(num_clients=4, batch_size=32),
                       ckpt_path=ckpt_path)


@pytest.mark.slow
def test_target_epsilon_ends_the_run_cleanly(tmp_path):
    """q = 2 / 4, z = 1: epsilon 3.89 after one round, 5.38 after two, 6.48 after three; a target of
    6 allows exactly two rounds, logged per round; a resume trains nothing more."""
    trainer = _trainer(tmp_path, target_epsilon=6.0)
    _fit(trainer)
    assert [h["round"] for h in trainer.history] == [1, 2]
    assert [round(h["dp/epsilon"], 2) for h in trainer.history] == [3.89, 5.38]
    record = json.loads((trainer.run_dir / "results.json").read_text())
    assert record["status"] == "finished" and record["rounds_completed"] == 2
    assert record["final"]["dp/epsilon"] == pytest.approx(epsilon_spent(1.0, 0.5, 2, 1e-5))
    assert load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")["round"] == 2
    resumed = _trainer(tmp_path, target_epsilon=6.0)
    _fit(resumed, ckpt_path="last")
    assert len(resumed.history) == 2  # the budget is spent: no round runs


def test_a_target_below_one_round_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"strategy.target_epsilon: one round already spends epsilon 3.89 > 1"):
        _fit(_trainer(tmp_path, target_epsilon=1.0))


def test_bad_settings_are_one_line():
    with pytest.raises(ValueError, match=r"strategy.clip_norm: must be > 0, got 0"):
        DPFedAvg(clip_norm=0)
    with pytest.raises(ValueError, match=r"strategy.delta: must be in \(0, 1\), got 1"):
        DPFedAvg(delta=1)
