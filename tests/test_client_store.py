"""The client-state store: memory budget, spill and read-back, round staging, manifests, garbage
collection, and runs through it (same results under any budget, checkpoints that name files,
bit-identical resume after kill -9 anywhere, checkpoints from before the store)."""

import signal
import textwrap
from pathlib import Path

import pytest
import torch
from lightning import seed_everything

from datamodules import Digits
from flcore import FederatedTrainer
from flcore.checkpoint import load_checkpoint, save_checkpoint
from flcore.client_store import ClientStateStore, checkpoint_client_states, checkpoint_manifest
from flcore.errors import ConfigError
from flcore.strategies import Scaffold
from lightning_modules import ScaffoldModule
from lightning_modules.models import CNN
from tests.conftest import assert_same_tree
from tests.test_reliability import _cli, _tensorboard_steps


def _entry(value: float, n: int = 256) -> dict:
    """One client state of ``n`` float32 values (1 KiB for n = 256)."""
    return {"c_i": {"w": torch.full((n,), float(value))}}


def _round(store, version, entries):
    store.begin(version)
    for cid, value in entries.items():
        store.stage("module", cid, _entry(value))
    store.commit()


def test_budget_spills_least_recently_used_and_reads_back(tmp_path):
    store = ClientStateStore(tmp_path, budget_mb=2.5 / 1024)  # room for two 1 KiB entries
    _round(store, 1, {0: 0.0, 1: 1.0, 2: 2.0})
    assert store.resident_bytes <= 2 * 1024 and store.spills == 1
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["module_0_v1.pt"]  # the oldest went to disk
    assert torch.equal(store.get("module", 0)["c_i"]["w"], torch.zeros(256)) and store.loads == 1
    # reading 0 back made room by spilling 1 (then the oldest); 2 is the oldest now and spills next
    assert {p.name for p in tmp_path.glob("*.pt")} == {"module_0_v1.pt", "module_1_v1.pt"}
    _round(store, 2, {3: 3.0})
    assert {p.name for p in tmp_path.glob("*.pt")} == {"module_0_v1.pt", "module_1_v1.pt", "module_2_v1.pt"}
    assert [store.get("module", c)["c_i"]["w"][0].item() for c in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert store.get("module", 9) is None and len(store) == 4 and store.cids("module") == [0, 1, 2, 3]


def test_staged_entries_replace_committed_ones_only_at_commit(tmp_path):
    store = ClientStateStore(tmp_path, budget_mb=0)  # everything but the entry in use goes to disk
    _round(store, 1, {0: 1.0, 1: 1.0})
    store.begin(2)
    store.stage("module", 0, _entry(2.0))
    store.stage("module", 1, _entry(2.0))
    assert store.get("module", 0)["c_i"]["w"][0].item() == 1.0  # still round 1's while round 2 runs
    store.discard()  # round 2 did not complete
    assert [store.get("module", c)["c_i"]["w"][0].item() for c in (0, 1)] == [1.0, 1.0]
    _round(store, 2, {1: 2.0})
    assert [store.get("module", c)["c_i"]["w"][0].item() for c in (0, 1)] == [1.0, 2.0]
    with pytest.raises(RuntimeError, match="no round is open"):
        store.stage("module", 0, _entry(0.0))


def test_snapshot_manifest_restore_and_garbage_collection(tmp_path):
    store = ClientStateStore(tmp_path, budget_mb=None)  # no budget: files only for snapshots
    _round(store, 1, {0: 1.0, 1: 1.0})
    assert not list(tmp_path.glob("*.pt"))
    first = store.snapshot()
    assert first == {"format": 1, "entries": {"module": {0: 1, 1: 1}}}
    _round(store, 2, {1: 2.0})
    second = store.snapshot()
    assert second["entries"]["module"] == {0: 1, 1: 2}
    names = lambda: sorted(p.name for p in tmp_path.glob("*.pt"))  # noqa: E731
    assert names() == ["module_0_v1.pt", "module_1_v1.pt", "module_1_v2.pt"]
    assert store.collect_garbage([first, second]) == 0  # both checkpoints remain: all three are named
    assert store.collect_garbage([second]) == 1 and names() == ["module_0_v1.pt", "module_1_v2.pt"]
    back = ClientStateStore(tmp_path, budget_mb=None)
    back.restore(second)
    assert back.to_dict()["module"][1]["c_i"]["w"][0].item() == 2.0
    (tmp_path / "module_0_v1.pt").unlink()
    with pytest.raises(FileNotFoundError, match="module_0_v1.pt named by the checkpoint is missing"):
        ClientStateStore(tmp_path).restore(second)
    with pytest.raises(RuntimeError, match="a round is in progress"):
        store.begin(3)
        store.stage("module", 5, _entry(0.0))
        store.snapshot()


def test_negative_budget_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="trainer.client_state_mb: must be >= 0"):
        ClientStateStore(tmp_path, budget_mb=-1)
    trainer = FederatedTrainer(strategy=Scaffold(), client_state_mb=-5, log_dir=str(tmp_path), clients_per_round=2)
    with pytest.raises(ConfigError, match=r"trainer.client_state_mb: must be a number of MiB >= 0 or null"):
        trainer._check(_module(), Digits(num_clients=4, batch_size=50))


# ---------------------------------------------------------------- runs through the store
def _module():
    seed_everything(0)
    return ScaffoldModule(CNN(1, 10, 8, channels=(4, 8), hidden=16))


def _scaffold(tmp_path, name, budget, rounds=4, **kw):
    trainer = FederatedTrainer(strategy=Scaffold(), rounds=rounds, clients_per_round=3, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name=name, client_state_mb=budget, checkpoint_every=1,
                               keep_checkpoints=2, **kw)
    trainer.fit(_module(), datamodule=Digits(num_clients=5, batch_size=50, seed=0))
    ckpt = load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")
    return trainer, ckpt


def test_any_budget_gives_the_same_run_and_checkpoints_name_files(tmp_path):
    free, ckpt_free = _scaffold(tmp_path, "free", None)
    tight, ckpt_tight = _scaffold(tmp_path, "tight", 0)
    assert tight.client_store.spills > 0 and tight.client_store.loads > 0  # it did go through the disk
    assert [h.get("global/test_acc") for h in free.history] == [h.get("global/test_acc") for h in tight.history]
    assert_same_tree(ckpt_free["strategy_state"], ckpt_tight["strategy_state"])
    states = checkpoint_client_states(ckpt_tight, tight.run_dir)
    assert_same_tree(checkpoint_client_states(ckpt_free, free.run_dir), states)
    assert sorted(states["module"]) == sorted(ckpt_tight["client_store"]["entries"]["module"])
    assert "client_states" not in ckpt_tight  # named, not copied
    # garbage collection: exactly the files the two remaining checkpoints name
    named = set()
    for path in (tight.run_dir / "checkpoints").glob("round_*.ckpt"):
        for cid, v in checkpoint_manifest(path)["entries"]["module"].items():
            named.add(f"module_{cid}_v{v}.pt")
    assert {p.name for p in (tight.run_dir / "client_state").glob("*.pt")} == named
    assert len(list((tight.run_dir / "checkpoints").glob("round_*.ckpt"))) == 2


def _resume_from(old: dict, path, tmp_path):
    """Write checkpoint ``old`` to ``path`` and resume the 4-round SCAFFOLD run of :func:`_scaffold`
    from it: the trainer and its last checkpoint."""
    save_checkpoint(old, path)
    trainer = FederatedTrainer(strategy=Scaffold(), rounds=4, clients_per_round=3, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name="half", client_state_mb=0, checkpoint_every=1,
                               keep_checkpoints=2)
    trainer.fit(_module(), datamodule=Digits(num_clients=5, batch_size=50, seed=0), ckpt_path=str(path))
    return trainer, load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")


def test_checkpoints_from_before_the_store_resume(tmp_path):
    """A checkpoint holding the client states inline (as flcore wrote them before the store)
    resumes into the store and continues exactly like the run that never stopped."""
    full, ckpt_full = _scaffold(tmp_path, "full", 0)
    half, _ = _scaffold(tmp_path, "half", 0, rounds=2)
    old = load_checkpoint(half.run_dir / "checkpoints" / "round_00002.ckpt")
    inline = checkpoint_client_states(old, half.run_dir)
    del old["client_store"]
    old["client_states"], old["client_bn"] = inline["module"], inline["bn"]
    trainer, ckpt = _resume_from(old, tmp_path / "legacy" / "round_00002.ckpt", tmp_path)
    assert_same_tree(ckpt_full["strategy_state"], ckpt["strategy_state"])
    assert_same_tree(checkpoint_client_states(ckpt_full, full.run_dir), checkpoint_client_states(ckpt, trainer.run_dir))


def test_one_model_scaffold_checkpoints_resume(tmp_path):
    """A SCAFFOLD checkpoint in the one-model layout that flcore wrote before one class served
    homogeneous and heterogeneous runs (``{"global", "c", "num_clients"}``, no ``arch_keys``)
    resumes as a family of one and continues exactly like the run that never stopped."""
    full, ckpt_full = _scaffold(tmp_path, "full", 0)
    half, _ = _scaffold(tmp_path, "half", 0, rounds=2)
    old = load_checkpoint(half.run_dir / "checkpoints" / "round_00002.ckpt")
    state = old["strategy_state"]
    assert state["arch_keys"] == {None: list(state["global"])}
    old["strategy_state"] = {"global": state["global"], "c": state["c"], "num_clients": 5}
    _, ckpt = _resume_from(old, half.run_dir / "checkpoints" / "round_00002.ckpt", tmp_path)
    assert_same_tree(ckpt_full["strategy_state"], ckpt["strategy_state"])


# ---------------------------------------------------------------- kill -9, then resume
RUN = ["fit", "--config", "configs/quickstart.yaml", "--trainer.rounds", "4", "--trainer.clients_per_round", "3",
       "--trainer.local.max_epochs", "1", "--trainer.eval_every", "1", "--trainer.checkpoint_every", "1",
       "--trainer.keep_checkpoints", "2", "--trainer.client_eval_every", "0",
       "--trainer.strategy", "flcore.strategies.Scaffold", "--model.class_path", "lightning_modules.ScaffoldModule",
       "--data.init_args.num_clients", "5", "--trainer.client_state_mb", "0"]

# A child that SIGKILLs itself right after the n-th store file is in place ("store": between a
# client's state write and the checkpoint that names it) or inside the n-th local update ("fit").
KILLER = textwrap.dedent("""
    import os, signal, sys
    import flcore.client_store, flcore.local
    mode, n = sys.argv[1], int(sys.argv[2])
    calls = [0]
    def count():
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    if mode == "store":
        orig_write = flcore.client_store.ClientStateStore._write
        def write(self, *a):
            orig_write(self, *a)
            count()
        flcore.client_store.ClientStateStore._write = write
    else:
        orig_seed = flcore.local.seed_local_rng
        def seed(s):
            count()
            return orig_seed(s)
        flcore.local.seed_local_rng = seed
    from flcore.cli import main
    main(sys.argv[3:])
""")


def _final(log_dir):
    run = sorted(Path(log_dir).glob("*/version_*"))[-1]
    ck = load_checkpoint(run / "checkpoints" / "last.ckpt")
    return ck, checkpoint_client_states(ck, run)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("scaffold_full")
    proc = _cli(["-m", "flcore", *RUN], d)
    assert proc.returncode == 0, proc.stderr
    return _final(d)


@pytest.mark.slow
@pytest.mark.parametrize("mode,n", [("store", 4), ("store", 9), ("fit", 8)])
def test_sigkill_with_the_store_then_resume_is_bit_identical(tmp_path, reference, mode, n):
    killed = _cli(RUN, tmp_path, prefix=("-c", KILLER, mode, str(n)))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert load_checkpoint(sorted(tmp_path.glob("*/version_*/checkpoints/last.ckpt"))[-1])["round"] < 4
    resumed = _cli(["-m", "flcore", *RUN, "--ckpt_path", "last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ck, states = _final(tmp_path)
    ref_ck, ref_states = reference
    curve = lambda c: [(h["round"], h.get("global/test_acc"), h.get("clients/train_loss")) for h in c["history"]]  # noqa: E731
    assert ck["round"] == 4 and curve(ck) == curve(ref_ck)
    assert_same_tree(ref_ck["strategy_state"], ck["strategy_state"])
    assert_same_tree(ref_states, states)
    assert _tensorboard_steps(tmp_path, "global/test_acc") == [1, 2, 3, 4]


def test_resume_with_a_missing_state_file_is_one_line(tmp_path):
    trainer, ckpt = _scaffold(tmp_path, "gone", 0, rounds=2)
    cid, version = next(iter(ckpt["client_store"]["entries"]["module"].items()))  # a file the last checkpoint names
    (trainer.run_dir / "client_state" / f"module_{cid}_v{version}.pt").unlink()
    again = FederatedTrainer(strategy=Scaffold(), rounds=3, clients_per_round=3, local={"max_epochs": 1},
                             log_dir=str(tmp_path), name="gone", client_state_mb=0)
    with pytest.raises(ConfigError, match=r"ckpt_path: client state .*module_\d+_v\d+\.pt named by the checkpoint is missing"):
        again.fit(_module(), datamodule=Digits(num_clients=5, batch_size=50, seed=0), ckpt_path="last")
