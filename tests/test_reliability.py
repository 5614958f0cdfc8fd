"""Checkpoint/resume, atomic writes, client failures, interrupts."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from lightning import seed_everything

import flcore.checkpoint as ckpt_mod
from datamodules import Digits
from flcore import FederatedTrainer
from flcore.checkpoint import load_checkpoint, save_checkpoint
from flcore.errors import ClientFailureError, ConfigError, RunInterrupted
from flcore.strategies import FedAvg, FedCross, FedMR
from lightning_modules import ClientModule
from lightning_modules.models import CNN
from tests.conftest import QUICKSTART, ROOT

RUN = ["fit", "--config", QUICKSTART, "--trainer.rounds", "4", "--trainer.clients_per_round", "3",
       "--trainer.local.max_epochs", "1", "--trainer.eval_every", "1", "--trainer.checkpoint_every", "1",
       "--trainer.keep_checkpoints", "0"]

# A child process that SIGKILLs itself at a chosen moment, then the real CLI.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import flcore.local, flcore.checkpoint
    mode, n = sys.argv[1], int(sys.argv[2])
    calls = [0]
    if mode == "fit":  # killed inside the n-th local update, mid-round
        orig = flcore.local.seed_local_rng  # called once at the start of every local update
        def seed(s):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(s)
        flcore.local.seed_local_rng = seed
    else:  # killed half-way through writing the n-th checkpoint file
        orig_save = flcore.checkpoint.torch.save
        def save(obj, f, *a, **k):
            if isinstance(obj, dict) and "strategy_state" in obj:  # checkpoint files only
                calls[0] += 1
            if calls[0] == n and isinstance(obj, dict) and "strategy_state" in obj:
                f.write(b"PK partial checkpoint bytes")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return orig_save(obj, f, *a, **k)
        flcore.checkpoint.torch.save = save
    from flcore.cli import main
    main(sys.argv[3:])
""")


def _cli(args, log_dir, prefix=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, *prefix, *args, "--trainer.log_dir", str(log_dir)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _final(log_dir):
    ck = load_checkpoint(sorted(Path(log_dir).glob("*/version_*/checkpoints/last.ckpt"))[-1])
    state = ck["strategy_state"]
    models = state["models"] if "models" in state else [state["global"]]
    curve = [(h["round"], h.get("global/test_acc"), h.get("clients/train_loss")) for h in ck["history"]]
    return ck["round"], models, curve


STRATEGY = {
    "fedcross": ["--trainer.strategy.class_path", "flcore.strategies.FedCross"],
    "fedavg": ["--trainer.strategy.class_path", "flcore.strategies.FedAvg"],
    "fedmr": ["--trainer.strategy.class_path", "flcore.strategies.FedMR"],
}
KILL_POINTS = [  # (strategy, mode, n): local update 5 = round 2, client 2; checkpoint file 5 = round 3's last.ckpt
    ("fedcross", "fit", 5), ("fedcross", "fit", 9), ("fedcross", "save", 5), ("fedavg", "fit", 7), ("fedmr", "fit", 4),
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = {}
    for name in {k[0] for k in KILL_POINTS}:
        d = tmp_path_factory.mktemp(f"full_{name}")
        proc = _cli(["-m", "flcore", *RUN, *STRATEGY[name]], d)
        assert proc.returncode == 0, proc.stderr
        out[name] = _final(d)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy,mode,n", KILL_POINTS, ids=[f"{s}-{m}{n}" for s, m, n in KILL_POINTS])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, uninterrupted, strategy, mode, n):
    killed = _cli([*RUN, *STRATEGY[strategy]], tmp_path, prefix=("-c", KILLER, mode, str(n)))
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(sorted(tmp_path.glob("*/version_*/checkpoints/last.ckpt"))[-1])["round"] < 4
    resumed = _cli(["-m", "flcore", *RUN, *STRATEGY[strategy], "--ckpt_path", "last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    rounds, models, curve = _final(tmp_path)
    ref_rounds, ref_models, ref_curve = uninterrupted[strategy]
    assert rounds == ref_rounds == 4
    assert curve == ref_curve
    assert _tensorboard_steps(tmp_path, "global/test_acc") == [1, 2, 3, 4]  # rounds redone are not logged twice
    assert len(models) == len(ref_models)
    for m, r in zip(models, ref_models):
        assert all(torch.equal(m[k], r[k]) for k in r)


def _tensorboard_steps(log_dir, tag):
    """The steps of ``tag`` as TensorBoard shows them (it drops events purged by a resume)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = sorted(Path(log_dir).glob("*/version_*"))[-1]
    acc = EventAccumulator(str(run))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def _digits_trainer(tmp_path, rounds, **kw):
    seed_everything(0)
    return FederatedTrainer(strategy=FedAvg(), rounds=rounds, clients_per_round=2, local={"max_epochs": 1},
                            log_dir=str(tmp_path), name="r", **kw)


def _digits_fit(trainer, ckpt_path=None):
    return trainer.fit(ClientModule(CNN(1, 10, 8, channels=(4, 8), hidden=16)), Digits(num_clients=4), ckpt_path=ckpt_path)


def test_resume_never_picks_an_older_run_or_rewrites_a_finished_one(tmp_path, monkeypatch):
    _digits_fit(_digits_trainer(tmp_path, 2))  # version_0: finished
    finished = (tmp_path / "r" / "version_0" / "results.json").read_text()
    with pytest.raises(ConfigError, match=r"ckpt_path: .*version_0.* is a finished run \(2 rounds, trainer.rounds=2\)"):
        _digits_fit(_digits_trainer(tmp_path, 2), ckpt_path="last")
    # version_1 crashes in its first round, before any checkpoint
    monkeypatch.setattr("flcore.trainer.run_round", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        _digits_fit(_digits_trainer(tmp_path, 3))
    monkeypatch.undo()
    assert (tmp_path / "r" / "version_1").is_dir()
    with pytest.raises(ConfigError, match=r"the newest run .*version_1 stopped before its first checkpoint"):
        _digits_fit(_digits_trainer(tmp_path, 3), ckpt_path="last")
    assert (tmp_path / "r" / "version_0" / "results.json").read_text() == finished  # never touched


def test_corrupt_last_ckpt_falls_back_to_the_newest_intact_round(tmp_path):
    trainer = _digits_trainer(tmp_path, 3, checkpoint_every=1, keep_checkpoints=0, max_time_s=None)
    out = _digits_fit(trainer)
    ckpts = tmp_path / "r" / "version_0" / "checkpoints"
    run_id = load_checkpoint(ckpts / "last.ckpt")["run_id"]
    (ckpts / "last.ckpt").write_bytes(b"PK truncated")
    (ckpts / "round_00003.ckpt").write_bytes(b"also broken")
    (ckpts / ".last.ckpt.x.tmp").write_bytes(b"left by a killed writer")
    more = _digits_trainer(tmp_path, 4)
    with pytest.warns(UserWarning, match=r"last.ckpt is not a readable flcore checkpoint .*resuming from round_00002.ckpt"):
        _digits_fit(more, ckpt_path="last")
    assert [h["round"] for h in more.history] == [1, 2, 3, 4] and out["run_dir"] == str(more.run_dir)
    assert load_checkpoint(ckpts / "last.ckpt")["run_id"] == run_id == more.run_id  # the same run, continued
    assert not list(ckpts.glob("*.tmp"))  # the stale temporary file is gone


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    _digits_fit(_digits_trainer(tmp_path, 2, checkpoint_every=1))
    run = tmp_path / "r" / "version_0"
    record = run / "results.json"
    record.write_text(record.read_text().replace('"run_id": "', '"run_id": "other-'))
    with pytest.raises(ConfigError, match="resume refuses to mix runs"):
        _digits_fit(_digits_trainer(tmp_path, 3), ckpt_path="last")


def test_checkpoint_interval_in_seconds(tmp_path, monkeypatch):
    """``checkpoint_interval_s`` writes a checkpoint once that much wall time has passed since the
    previous one, whatever ``checkpoint_every`` says."""
    import itertools

    clock = itertools.count(0, 100)  # every perf_counter call advances 100 s
    monkeypatch.setattr("flcore.trainer.time.perf_counter", lambda: float(next(clock)))
    trainer = _digits_trainer(tmp_path, 3, keep_checkpoints=0, checkpoint_interval_s=150.0)
    _digits_fit(trainer)
    names = sorted(p.name for p in (tmp_path / "r" / "version_0" / "checkpoints").glob("round_*.ckpt"))
    assert names == ["round_00001.ckpt", "round_00002.ckpt", "round_00003.ckpt"]
    trainer = _digits_trainer(tmp_path / "b", 3, keep_checkpoints=0, checkpoint_interval_s=None)
    _digits_fit(trainer)
    assert [p.name for p in (tmp_path / "b" / "r" / "version_0" / "checkpoints").glob("round_*.ckpt")] == ["round_00003.ckpt"]


def test_atomic_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "round_00001.ckpt"
    save_checkpoint({"strategy_state": {"w": torch.ones(3)}, "round": 1}, target)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"strategy_state": {"w": torch.zeros(3)}, "round": 2}, tmp_path / "checkpoints" / "round_00002.ckpt")
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["round"] == 1 and torch.equal(last["strategy_state"]["w"], torch.ones(3))
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    assert not (tmp_path / "checkpoints" / "round_00002.ckpt").exists()


def test_keep_last_n_checkpoints(tmp_path):
    for r in range(1, 6):
        save_checkpoint({"strategy_state": {}, "round": r}, tmp_path / f"round_{r:05d}.ckpt", keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("round_*.ckpt")) == ["round_00004.ckpt", "round_00005.ckpt"]


def test_truncated_checkpoint_one_line_error(tmp_path):
    good = tmp_path / "good.ckpt"
    save_checkpoint({"strategy_state": {"w": torch.randn(1000)}, "round": 1}, good)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good.read_bytes()[:500])
    with pytest.raises(ConfigError) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"strategy_state": {}, "x": Evil()}, path)
    with pytest.raises(ConfigError, match="not a readable flcore checkpoint"):
        load_checkpoint(path)


def test_resume_refuses_a_different_experiment_and_allows_more_rounds(run_cli, tmp_path):
    base = ["fit", "--config", QUICKSTART, "--trainer.rounds", "1", "--trainer.local.max_epochs", "1"]
    assert run_cli(*base)[0] == 0
    code, _, err = run_cli(*base, "--ckpt_path", "last")  # nothing left to do: a finished run is never rewritten
    assert code == 2 and "is a finished run (1 rounds, trainer.rounds=1)" in err
    more = [*base, "--trainer.rounds", "2"]
    code, _, err = run_cli(*more, "--trainer.strategy.init_args.alpha", "0.9", "--ckpt_path", "last")
    assert code == 2 and "trainer.strategy" in err and "refused" in err
    code, _, err = run_cli(*more, "--seed_everything", "3", "--ckpt_path", "last")
    assert code == 2 and "seed_everything" in err
    code, _, err = run_cli(*more, "--data.init_args.batch_size", "7", "--ckpt_path", "last")
    assert code == 2 and "data" in err and "refused" in err
    code, out, err = run_cli("fit", "--config", QUICKSTART, "--trainer.rounds", "2", "--trainer.local.max_epochs", "1",
                             "--trainer.eval_every", "1", "--ckpt_path", "last")
    assert code == 0, err
    assert "finished 2 rounds" in out


# ---------------------------------------------------------------- client failures
class FaultyDigits(Digits):
    """Client data that crashes (``raise``) or holds NaN (``nan``) for chosen clients."""

    def __init__(self, faults, **kw):
        super().__init__(**kw)
        self.faults = faults

    def client_batches(self, cid, generator=None):
        kind = self.faults.get(cid)
        if kind == "raise":
            raise RuntimeError(f"client {cid} storage is unreadable")
        source = super().client_batches(cid, generator)
        if kind == "nan":
            source.x = source.x.clone()
            source.x[source.indices] = float("nan")
        return source


def _fit(strategy, faults, tmp_path, policy="drop", rounds=2, k=4):
    seed_everything(0)
    trainer = FederatedTrainer(strategy=strategy, rounds=rounds, clients_per_round=k, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name="faulty", on_client_failure=policy)
    dm = FaultyDigits(faults, num_clients=4, batch_size=32)
    return trainer, trainer.fit(ClientModule(CNN(1, 10, 8)), dm)


@pytest.mark.parametrize("strategy", [FedAvg(), FedCross(alpha=0.9), FedMR()], ids=["fedavg", "fedcross", "fedmr"])
@pytest.mark.parametrize("kind", ["raise", "nan"])
def test_failed_clients_are_dropped(tmp_path, strategy, kind):
    with pytest.warns(UserWarning, match="dropped 1 failed client"):
        trainer, summary = _fit(strategy, {2: kind}, tmp_path)
    assert [h["round/failed_clients"] for h in trainer.history] == [1.0, 1.0]
    state = load_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "last.ckpt")["strategy_state"]
    models = state["models"] if "models" in state else [state["global"]]
    assert all(torch.isfinite(v).all() for m in models for v in m.values() if v.is_floating_point())
    assert summary["final_test_acc"] > 0.1


def test_fedcross_failed_slot_keeps_its_model(tmp_path, monkeypatch):
    from flcore.strategies.multimodel import MultiModelStrategy

    seen = []
    orig = MultiModelStrategy.aggregate_fit

    def spy(self, rnd, results, state, rng):
        new = orig(self, rnd, results, state, rng)
        seen.append(({r.slot for r in results}, state["models"], new["models"]))
        return new

    monkeypatch.setattr(MultiModelStrategy, "aggregate_fit", spy)
    monkeypatch.setattr(FedCross, "combine", lambda self, rnd, uploaded, rng: uploaded)  # isolate the slot logic
    with pytest.warns(UserWarning):
        _fit(FedCross(), {1: "raise"}, tmp_path, rounds=1)
    slots, before, after = seen[0]
    (failed,) = set(range(4)) - slots
    # the failed slot keeps its previous model (a copy: aggregation may overwrite what it owns)
    assert all(torch.equal(after[failed][k], before[failed][k]) for k in before[failed])
    for s in slots:
        assert not torch.equal(after[s]["fc2.weight"], before[s]["fc2.weight"])


def test_every_client_failing_stops_with_checkpoint(tmp_path):
    with pytest.raises(ClientFailureError) as info:
        _fit(FedAvg(), {0: "raise", 1: "nan", 2: "raise", 3: "raise"}, tmp_path)
    msg = str(info.value)
    assert "round 1" in msg and "every client failed" in msg and "client 1: non-finite" in msg
    assert load_checkpoint(next(tmp_path.glob("faulty/version_*/checkpoints/last.ckpt")))["round"] == 0


def test_raise_policy_stops_on_first_failure(tmp_path):
    with pytest.raises(ClientFailureError, match="1 client"):
        _fit(FedAvg(), {3: "raise"}, tmp_path, policy="raise")


def test_sigterm_checkpoints_last_completed_round(tmp_path, monkeypatch):
    import flcore.local

    calls = [0]
    orig = flcore.local.seed_local_rng  # called once at the start of every local update

    def seed_then_sigterm(seed):
        calls[0] += 1
        if calls[0] == 6:  # round 2, second client
            os.kill(os.getpid(), signal.SIGTERM)
        return orig(seed)

    monkeypatch.setattr(flcore.local, "seed_local_rng", seed_then_sigterm)
    with pytest.raises(RunInterrupted) as info:
        _fit(FedAvg(), {}, tmp_path, rounds=3)
    assert info.value.signum == signal.SIGTERM and "round 1" in str(info.value)
    assert load_checkpoint(next(tmp_path.glob("faulty/version_*/checkpoints/last.ckpt")))["round"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _nan_bias(state, rnd):
    if rnd == 1:
        state["global"]["fc2.bias"] = state["global"]["fc2.bias"].clone().fill_(float("nan"))


def _overflowing_weights(state, rnd):
    state["global"]["fc2.weight"] = state["global"]["fc2.weight"].sign() * 3e38  # finite, but logits overflow


@pytest.mark.parametrize("tamper, message, last_good", [
    (_nan_bias, r"round 2: the global model diverged \(non-finite global/fc2.bias\)", 1),
    (_overflowing_weights, r"round 1: the global model diverged \(test loss (nan|inf)\)", 0),
], ids=["nan_in_the_state", "non_finite_test_loss"])
def test_a_diverged_global_model_stops_the_run_naming_the_round(tmp_path, tamper, message, last_good):
    """A NaN in the server state, or finite weights whose test loss is not finite, end the run
    with one line naming the round (not a finished run with ``test_loss nan``); the last good
    round is checkpointed and the record says 'failed'."""
    import json

    from flcore.errors import DivergedError

    class Tampered(FedAvg):
        def aggregate_fit(self, rnd, results, state, rng):
            new = super().aggregate_fit(rnd, results, state, rng)
            tamper(new, rnd)
            return new

    trainer = FederatedTrainer(strategy=Tampered(), rounds=3, clients_per_round=2, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name="diverged")
    with pytest.raises(DivergedError, match=message + rf".*last good state \(round {last_good}\) saved"):
        trainer.fit(ClientModule(CNN(1, 10, 8)), Digits(num_clients=4, batch_size=32))
    assert load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")["round"] == last_good
    assert json.loads((trainer.run_dir / "results.json").read_text())["status"] == "failed"
