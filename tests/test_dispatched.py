"""Dispatched models parked on disk while their clients train (flcore.dispatched)."""

import os
import signal

import pytest
import torch

from flcore.checkpoint import load_checkpoint
from flcore.dispatched import ParkedModels
from flcore.errors import RunInterrupted
from flcore.messages import ClientResult
from flcore.strategies import FedCross
from tests.conftest import assert_same_tree
from tests.test_reliability import _fit


def _model(seed):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "n": torch.tensor(seed)}


def _result(slot, state):
    return ClientResult(cid=slot, slot=slot, state=state, num_samples=1)


def test_park_drops_the_tensors_and_restore_brings_them_back_bit_for_bit(tmp_path):
    parked = ParkedModels(tmp_path / ".dispatched")
    models = {0: _model(0), 1: _model(1)}
    saved = {s: {k: v.clone() for k, v in m.items()} for s, m in models.items()}
    for slot, model in models.items():
        parked.park(slot, model)
    assert all(v.is_meta for m in models.values() for v in m.values())  # no memory held
    assert {k: (v.shape, v.dtype) for k, v in models[0].items()} == {k: (v.shape, v.dtype) for k, v in saved[0].items()}
    assert sorted(p.name for p in (tmp_path / ".dispatched").iterdir()) == ["slot_0.pt", "slot_1.pt"]

    trained = _model(7)
    result = _result(0, trained)
    parked.lend(result, models[0])
    assert result.state is models[0] and all(models[0][k] is trained[k] for k in trained)  # no copy
    parked.restore(unlent_only=True)  # slot 1's client failed: its model is back, slot 0 keeps its result
    assert_same_tree(models[1], saved[1])
    assert models[0]["w"] is trained["w"]
    assert not (tmp_path / ".dispatched" / "slot_1.pt").exists()

    parked.restore()  # the round did not complete: slot 0's old model is back too
    assert_same_tree(models[0], saved[0])
    assert not parked and not list((tmp_path / ".dispatched").iterdir())


def test_release_forgets_the_parked_copies(tmp_path):
    parked = ParkedModels(tmp_path)
    model = _model(0)
    parked.lend(_result(0, _model(1)), model)  # parks and lends at once
    assert (tmp_path / "slot_0.pt").exists()
    parked.release()
    assert not parked and not (tmp_path / "slot_0.pt").exists()
    assert_same_tree(model, _model(1))
    parked.restore()  # nothing parked: nothing changes
    assert_same_tree(model, _model(1))


def test_only_unshared_states_of_a_strategy_that_allows_it_are_reusable():
    from flcore.messages import ClientTask
    from flcore.strategies import FedAvg

    own = [ClientTask(cid=i, state=_model(i), slot=i) for i in range(3)]
    assert ParkedModels.reusable(FedCross(), own, True, False).keys() == {0, 1, 2}
    assert ParkedModels.reusable(FedAvg(), own, True, False) == {}  # FedAvg reads what it sent
    assert ParkedModels.reusable(FedCross(), own, False, False) == {}  # clients in other processes
    assert ParkedModels.reusable(FedCross(), own, True, True) == {}  # model statistics compare with it
    init = _model(0)
    shared = [ClientTask(cid=i, state=init, slot=i) for i in range(3)]
    reuse = ParkedModels.reusable(FedCross(), shared, True, False)
    assert reuse.keys() == {2}  # the last task's, once every other result exists
    assert ParkedModels.may_lend(reuse, 2, 3, 3) and not ParkedModels.may_lend(reuse, 2, 2, 3)


def _spy_training(monkeypatch, seen):
    """Record, at the start of every local update, which slots are parked and whether their
    models hold memory."""
    import flcore.local

    orig = flcore.local.seed_local_rng

    def spy(seed):
        live = [t for t in dispatched_instances if t]
        seen.append({slot: all(v.is_meta for v in m.values()) for p in live for slot, (m, _) in p._parked.items()
                     if slot not in p._lent})
        return orig(seed)

    dispatched_instances = []
    orig_init = ParkedModels.__init__

    def init(self, folder):
        orig_init(self, folder)
        dispatched_instances.append(self)

    monkeypatch.setattr(ParkedModels, "__init__", init)
    monkeypatch.setattr(flcore.local, "seed_local_rng", spy)


def test_the_model_of_the_client_in_training_is_on_disk(tmp_path, monkeypatch):
    seen = []
    _spy_training(monkeypatch, seen)
    _fit(FedCross(), {}, tmp_path, rounds=2, k=4)
    assert len(seen) == 8
    assert seen[:3] == [{}, {}, {}]  # round 1: one initial model that every client needs
    assert len(seen[3]) == 1 and all(seen[3].values())  # ... until the last client trains
    assert all(len(s) == 1 and all(s.values()) for s in seen[4:])  # round 2: each slot's own model


def test_a_failed_slot_gets_its_parked_model_back(tmp_path, monkeypatch):
    from flcore.strategies.multimodel import MultiModelStrategy

    seen = []
    orig = MultiModelStrategy.aggregate_fit

    def spy(self, rnd, results, state, rng):
        before = [{k: v.clone() for k, v in m.items()} for m in state["models"]]  # restored, none on meta
        seen.append(({r.slot for r in results}, before, orig(self, rnd, results, state, rng)["models"]))
        return {**state, "models": seen[-1][2]}

    monkeypatch.setattr(MultiModelStrategy, "aggregate_fit", spy)
    monkeypatch.setattr(FedCross, "combine", lambda self, rnd, uploaded, rng: uploaded)
    with pytest.warns(UserWarning, match="dropped 1 failed client"):
        _fit(FedCross(), {1: "raise"}, tmp_path, rounds=2)
    slots, before, after = seen[1]  # round 2: every slot was parked when its client started
    (failed,) = set(range(4)) - slots
    assert_same_tree(after[failed], before[failed])
    assert not any(v.is_meta for m in after for v in m.values())


def test_an_interrupt_mid_round_checkpoints_the_last_completed_round(tmp_path, monkeypatch):
    import flcore.local

    _, done = _fit(FedCross(), {}, tmp_path / "one", rounds=1)
    reference = load_checkpoint(os.path.join(done["run_dir"], "checkpoints", "last.ckpt"))["strategy_state"]
    calls = [0]
    orig = flcore.local.seed_local_rng

    def seed_then_sigterm(seed):
        calls[0] += 1
        if calls[0] == 7:  # round 2, third client: two slots lent, one parked
            os.kill(os.getpid(), signal.SIGTERM)
        return orig(seed)

    monkeypatch.setattr(flcore.local, "seed_local_rng", seed_then_sigterm)
    with pytest.raises(RunInterrupted, match="round 1"):
        _fit(FedCross(), {}, tmp_path / "cut", rounds=3)
    ckpt = load_checkpoint(next((tmp_path / "cut").glob("faulty/version_*/checkpoints/last.ckpt")))
    assert ckpt["round"] == 1
    assert_same_tree(ckpt["strategy_state"], reference)
