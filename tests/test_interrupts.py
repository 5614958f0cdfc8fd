"""SIGINT / SIGTERM stop a run at the next safe point, wherever they arrive, and the resumed run
ends bit for bit where an uninterrupted run ends."""

import os
import signal

import pytest
import torch
from lightning import seed_everything

import flcore.local
import flcore.lifecycle
import flcore.round
from datamodules import Digits
from flcore import FederatedTrainer
from flcore import interrupts
from flcore.checkpoint import load_checkpoint
from flcore.errors import RunInterrupted
from flcore.strategies import FedCross
from lightning_modules import ClientModule
from lightning_modules.models import CNN


def _trainer(tmp_path, name):
    return FederatedTrainer(strategy=FedCross(alpha=0.9), rounds=3, clients_per_round=3, local={"max_epochs": 2},
                            log_dir=str(tmp_path), name=name, checkpoint_every=1, checkpoint_interval_s=None)


def _fit(trainer, ckpt_path=None):
    seed_everything(0)
    return trainer.fit(ClientModule(CNN(1, 10, 8, channels=(4, 8), hidden=16)), Digits(num_clients=5, batch_size=32),
                       ckpt_path=ckpt_path)


def _final(trainer):
    return load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")["strategy_state"]


def _send_once(sig, calls, when):
    """A side effect that sends ``sig`` to this process on the ``when``-th call."""
    def side_effect():
        calls[0] += 1
        if calls[0] == when:
            os.kill(os.getpid(), sig)
    return side_effect


#: where the signal arrives -> (object, attribute wrapped, call number that sends it (negative: after
#: the call returns), the signal, rounds completed before the stop). Local training stops the round
#: (its clients are redone on resume); aggregation, evaluation and checkpoints finish it first.
POINTS = {
    "local_training": (flcore.local, "seed_local_rng", 5, signal.SIGINT, 1),       # round 2, second client
    "aggregation": (FedCross, "aggregate_fit", 2, signal.SIGTERM, 2),                 # round 2's aggregation
    "evaluation": (flcore.round, "evaluate_global", 2, signal.SIGINT, 2),         # round 2's test
    "checkpoint_write": (flcore.lifecycle, "save_checkpoint", 2, signal.SIGTERM, 2),    # during round 2's checkpoint
    "after_checkpoint": (flcore.lifecycle, "save_checkpoint", -2, signal.SIGINT, 2),    # just after it
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    trainer = _trainer(tmp_path_factory.mktemp("reference"), "reference")
    _fit(trainer)
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(POINTS))
def test_signal_stops_cleanly_and_resumes_bit_identically(tmp_path, monkeypatch, reference, point):
    owner, attr, when, sig, completed = POINTS[point]
    original = getattr(owner, attr)
    calls = [0]
    send = _send_once(sig, calls, abs(when))

    def wrapped(*args, **kwargs):
        if when > 0:
            send()
        out = original(*args, **kwargs)
        if when < 0:
            send()
        return out

    monkeypatch.setattr(owner, attr, wrapped)
    stopped = _trainer(tmp_path, "stopped")
    with pytest.raises(RunInterrupted) as info:
        _fit(stopped)
    assert info.value.signum == sig and signal.Signals(sig).name in str(info.value)
    assert f"round {completed}" in str(info.value)
    assert load_checkpoint(stopped.run_dir / "checkpoints" / "last.ckpt")["round"] == completed
    assert interrupts.requested() is None and signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)
    monkeypatch.setattr(owner, attr, original)
    resumed = _trainer(tmp_path, "stopped")
    _fit(resumed, ckpt_path="last")
    a, b = _final(reference), _final(resumed)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a["models"], b["models"]) for k in x)
    keys = ("global/test_acc", "global/test_loss", "clients/train_loss")
    assert [[h.get(k) for k in keys] for h in reference.history] == [[h.get(k) for k in keys] for h in resumed.history]


def test_a_request_is_a_flag_until_a_safe_point():
    """The handler never raises (it may run inside a weakref callback, where an exception is
    swallowed); check() raises at the safe point, once a stop was requested."""
    with interrupts.stop_on_signals():
        interrupts.check()  # nothing pending
        os.kill(os.getpid(), signal.SIGINT)  # no exception here
        os.kill(os.getpid(), signal.SIGTERM)  # the first request counts
        assert interrupts.requested() == signal.SIGINT
        with pytest.raises(RunInterrupted, match="interrupted by SIGINT"):
            interrupts.check()
    assert interrupts.requested() is None


@pytest.mark.slow
def test_signal_while_the_process_pool_works_stops_the_round(tmp_path, monkeypatch):
    """The parent polls for a stop request while its workers train: the run stops in round 1
    without waiting for the round, checkpoints round 0 and closes the pool."""
    import flcore.executors.process_pool as pool_module
    from flcore.executors import ProcessPoolExecutor

    original, calls = pool_module.wait, [0]

    def wait_then_signal(futures, timeout=None):
        calls[0] += 1
        if calls[0] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(futures, timeout=timeout)

    monkeypatch.setattr(pool_module, "wait", wait_then_signal)
    executor = ProcessPoolExecutor(num_workers=1)
    trainer = FederatedTrainer(strategy=FedCross(alpha=0.9), rounds=2, clients_per_round=3, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name="pool", executor=executor)
    with pytest.raises(RunInterrupted, match=r"SIGTERM; last good state \(round 0\)"):
        _fit(trainer)
    assert executor._pool is None  # closed however the run ended
