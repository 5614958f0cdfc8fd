"""Streaming aggregation: a strategy's accumulator equals its ``aggregate_fit`` (bit for bit when
every task returned, to rounding when some failed), and the trainer folds each result in as soon
as its client is done, unless something needs the whole list."""

import numpy as np
import pytest
import torch

from datamodules import Digits
from flcore import FederatedTrainer
from flcore.functional import RunningMix, mix
from flcore.messages import ClientResult
from flcore.samplers import ClusteredSampler
from flcore.server_opt import ServerAdam
from flcore.strategies import FedAvg, FedMedian, FedProx, Moon, Scaffold
from lightning_modules import ClientModule
from lightning_modules.models import CNN
from lightning_modules.terms import ScaffoldUpload
from tests.conftest import assert_same_tree


def _results(k: int, seed: int = 0, delta_c: bool = False) -> list[ClientResult]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(k):
        state = {"w": torch.randn(7, 3, generator=g), "n": torch.randint(0, 9, (), generator=g),
                 "h": torch.randn(4, generator=g).half()}
        payload = ScaffoldUpload({"w": torch.randn(7, 3, generator=g)}) if delta_c else {}
        out.append(ClientResult(cid=i, slot=i, state=state, num_samples=10 + 3 * i, payload=payload))
    return out


def test_running_mix_is_mix_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.int64):
        ts = [(torch.randn(50, generator=g) * 10).to(dtype) for _ in range(5)]
        ws = [0.1, 0.3, 0.2, 0.15, 0.25]
        acc = RunningMix()
        for t, w in zip(ts, ws):
            acc.add(t, w)
        assert torch.equal(acc.result(), mix(ts, ws)), dtype
    with pytest.raises(ValueError, match="nothing was added"):
        RunningMix().result()


@pytest.mark.parametrize("strategy", [FedAvg(), FedProx(), Moon(), Scaffold(global_lr=0.5),
                                      FedAvg(server_optimizer=ServerAdam(lr=0.1))], ids=lambda s: type(s).__name__)
def test_accumulator_equals_aggregate_fit(strategy):
    k = 5
    scaffold = isinstance(strategy, Scaffold)
    init = {"w": torch.zeros(7, 3), "n": torch.tensor(0), "h": torch.zeros(4).half()}
    state = strategy.initialize(init, k, num_clients=20)
    if scaffold:  # a control variate from an earlier round
        state = strategy.aggregate_fit(0, _results(k, 9, True), state, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    want = strategy.aggregate_fit(1, _results(k, delta_c=scaffold), state, rng)
    results = _results(k, delta_c=scaffold)
    acc = strategy.accumulator(1, state, [1.0 if scaffold else r.weight for r in results])
    for r in results:
        acc.add(r)
        assert r.state == {}  # taken: the round does not hold it any more
    assert_same_tree(acc.finish(1, results, state, rng), want)
    # a failed client: the expected weights include it, the sums are renormalised
    results = _results(k, delta_c=scaffold)
    acc = strategy.accumulator(1, state, [1.0 if scaffold else r.weight for r in results])
    kept = [r for r in results if r.cid != 2]
    want = strategy.aggregate_fit(1, _results(k, delta_c=scaffold)[:2] + _results(k, delta_c=scaffold)[3:], state, rng)
    for r in kept:
        acc.add(r)
    got = acc.finish(1, kept, state, rng)
    assert torch.allclose(got["global"]["w"], want["global"]["w"], atol=1e-6)
    assert torch.equal(got["global"]["n"], want["global"]["n"])


def test_strategies_with_their_own_aggregation_and_two_tasks_take_the_whole_list():
    state = FedAvg().initialize({"w": torch.zeros(2)}, 3)
    assert FedMedian().accumulator(0, state, [1.0] * 3) is None  # overrides aggregate_fit
    assert FedAvg().accumulator(0, state, [1.0, 2.0]) is None   # mix's two-model shortcut
    assert FedAvg().accumulator(0, state, [1.0] * 3) is not None


def _count_streamed(tmp_path, monkeypatch, **kw):
    calls = {"list": 0}
    original = FedAvg.aggregate_fit

    def spy(self, *a, **k):
        calls["list"] += 1
        return original(self, *a, **k)

    monkeypatch.setattr(FedAvg, "aggregate_fit", spy)
    monkeypatch.setattr("flcore.trainer.FedAvg", FedAvg)
    trainer = FederatedTrainer(strategy=FedAvg(), rounds=2, clients_per_round=3, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name="s", **kw)
    torch.manual_seed(0)
    trainer.fit(ClientModule(CNN(1, 10, 8, channels=(4, 8), hidden=16)), Digits(num_clients=4, batch_size=50))
    return calls["list"], trainer.history


def test_trainer_streams_unless_the_whole_list_is_needed(tmp_path, monkeypatch):
    streamed, history = _count_streamed(tmp_path / "a", monkeypatch)
    assert streamed == 0 and history[-1]["round/bytes_up"] > 0  # every round folded; uploads still counted
    assert _count_streamed(tmp_path / "b", monkeypatch, model_stats_every=1)[0] == 2  # drift needs every model
    assert _count_streamed(tmp_path / "c", monkeypatch, sampler=ClusteredSampler())[0] == 2  # so does the sampler
