"""Robust aggregation: one poisoned client breaks FedAvg, and each robust rule holds."""

import numpy as np
import pytest
import torch

from flcore.functional.robust import coordinate_median, krum_scores, krum_select, multi_krum, trimmed_mean
from flcore.messages import ClientResult
from flcore.strategies import FedAvg, FedMedian, FedTrimmedAvg, Krum

TARGET = {"w": torch.linspace(-1.0, 1.0, 50), "b": torch.tensor([0.5]), "bn.num_batches_tracked": torch.tensor(10)}


def _honest(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"w": TARGET["w"] + 0.01 * torch.randn(50, generator=g), "b": TARGET["b"] + 0.01 * torch.randn(1, generator=g),
             "bn.num_batches_tracked": torch.tensor(10 + i % 2)} for i in range(n)]


POISONS = {"huge": lambda s: {**s, "w": s["w"] * 1e6, "b": s["b"] + 1e6},
           "sign_flipped": lambda s: {**s, "w": -100.0 * s["w"], "b": -100.0 * s["b"]}}


def _results(states, sizes=None):
    sizes = sizes or [100] * len(states)
    return [ClientResult(cid=i, slot=i, state=s, num_samples=n) for i, (s, n) in enumerate(zip(states, sizes))]


def _error(state):
    return max(float((state["w"] - TARGET["w"]).abs().max()), float((state["b"] - TARGET["b"]).abs().max()))


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_one_poisoned_client_breaks_fedavg_and_not_the_robust_rules(poison):
    honest = _honest(6)
    states = honest + [POISONS[poison](honest[0])]
    sizes = [100] * 6 + [1000]  # the attacker also claims ten times the data
    start = {"global": {k: torch.zeros_like(v) for k, v in TARGET.items()}}
    errors = {}
    for strategy in (FedAvg(), FedMedian(), FedTrimmedAvg(beta=0.2), Krum(num_malicious=1), Krum(num_malicious=1, num_selected=3)):
        state = strategy.initialize(start["global"], 7)
        new = strategy.aggregate_fit(0, _results(states, sizes), state, np.random.default_rng(0))
        name = type(strategy).__name__ + (f"/m={strategy.num_selected}" if isinstance(strategy, Krum) else "")
        errors[name] = _error(new["global"])
        assert new["global"]["bn.num_batches_tracked"].dtype == torch.int64
    assert errors["FedAvg"] > 50  # broken
    assert all(e < 0.05 for name, e in errors.items() if name != "FedAvg"), errors  # within the honest spread


def test_median_and_trimmed_mean_by_hand():
    states = [{"w": torch.tensor([1.0, -3.0]), "n": torch.tensor(1)}, {"w": torch.tensor([2.0, 7.0]), "n": torch.tensor(2)},
              {"w": torch.tensor([9.0, 0.0]), "n": torch.tensor(4)}, {"w": torch.tensor([4.0, 1.0]), "n": torch.tensor(3)}]
    med = coordinate_median(states)
    assert med["w"].tolist() == [3.0, 0.5] and med["n"].item() == 2  # (2 + 4) / 2, (0 + 1) / 2; round(2.5) = 2
    assert trimmed_mean(states, 0.25)["w"].tolist() == [3.0, 0.5]  # drops one at each end
    assert trimmed_mean(states, 0.0)["w"].tolist() == [4.0, 1.25]  # the plain mean
    with pytest.raises(ValueError, match=r"strategy.beta: must be in \[0, 0.5\), got 0.5"):
        trimmed_mean(states, 0.5)


def test_krum_by_hand_and_its_limits():
    states = [{"w": torch.tensor([x, 0.0])} for x in (0.0, 1.0, 3.0, 10.0, 11.0)]
    # f = 1: n - f - 2 = 2 nearest: 0 -> 1 + 9 = 10; 1 -> 1 + 4 = 5; 3 -> 4 + 9 = 13; 10 -> 1 + 49 = 50; 11 -> 1 + 64 = 65
    assert krum_scores(states, 1).tolist() == [10.0, 5.0, 13.0, 50.0, 65.0]
    assert krum_select(states, 1, 2) == [1, 0]
    assert multi_krum(states, 1, 3)["w"].tolist() == pytest.approx([4 / 3, 0.0])
    with pytest.raises(ValueError, match=r"Krum needs clients_per_round > 2 f \+ 2 and f >= 0; got 5 clients and f = 2"):
        krum_scores(states, 2)
    with pytest.raises(ValueError, match=r"trainer.clients_per_round > 2 f \+ 2; got clients_per_round = 4 and f = 1"):
        Krum(num_malicious=1).validate(100, 4)
    with pytest.raises(ValueError, match="strategy.num_selected: must be >= 1"):
        Krum(num_selected=0)


def test_krum_round_with_too_few_results_degrades():
    strategy = Krum(num_malicious=2)
    state = strategy.initialize({"w": torch.zeros(2)}, 7)
    two = strategy.aggregate_fit(0, _results([{"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([3.0, 3.0])}]),
                                 state, np.random.default_rng(0))
    assert two["global"]["w"].tolist() == [2.0, 2.0]  # the median of two
    four = strategy.aggregate_fit(0, _results([{"w": torch.tensor([float(x), 0.0])} for x in (0, 1, 2, 50)]),
                                  state, np.random.default_rng(0))  # f limited to (4 - 3) // 2 = 0
    assert four["global"]["w"].tolist() == [1.0, 0.0]
