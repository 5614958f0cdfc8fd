import os
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import QUICKSTART, ROOT

FAST = ["--config", QUICKSTART, "--trainer.rounds", "2", "--trainer.eval_every", "1",
        "--trainer.local.max_epochs", "1"]


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _run_dir(root: Path) -> Path:
    dirs = sorted(root.glob("quickstart/version_*"))
    assert dirs, f"no run directory under {root}"
    return dirs[-1]


def _models(run: Path) -> list[dict]:
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["strategy_state"]
    return state["models"] if "models" in state else [state["global"]]


def test_quickstart_two_rounds_writes_tensorboard_and_checkpoint(run_cli, tmp_path):
    code, out, err = run_cli("fit", *FAST)
    assert code == 0, err
    assert "finished 2 rounds" in out and "final test_acc" in out
    run = _run_dir(tmp_path / "runs")
    steps = [s for s, _ in _scalars(run, "global/test_acc")]
    assert steps == [1, 2]
    for tag in ("global/test_loss", "clients/train_loss", "round/wall_time_s", "round/samples_per_s",
                "round/bytes_up", "round/bytes_down"):
        assert len(_scalars(run, tag)) == 2, tag
    assert (run / "config.yaml").is_file() and (run / "hparams.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_same_seed_same_metrics_and_weights(run_cli, tmp_path):
    a_root, b_root = tmp_path / "a", tmp_path / "b"
    for root in (a_root, b_root):
        code, _, err = run_cli("fit", *FAST, "--trainer.log_dir", str(root))
        assert code == 0, err
    a, b = _run_dir(a_root), _run_dir(b_root)
    for tag in ("global/test_acc", "global/test_loss", "clients/train_loss"):
        assert _scalars(a, tag) == _scalars(b, tag)
    ma, mb = _models(a), _models(b)
    assert len(ma) == len(mb) > 0
    assert all(torch.equal(x[k], y[k]) for x, y in zip(ma, mb) for k in x)


def test_other_seed_other_metrics(run_cli, tmp_path):
    run_cli("fit", *FAST, "--trainer.log_dir", str(tmp_path / "a"))
    run_cli("fit", *FAST, "--trainer.log_dir", str(tmp_path / "b"), "--seed_everything", "1")
    a, b = _run_dir(tmp_path / "a"), _run_dir(tmp_path / "b")
    assert _scalars(a, "clients/train_loss") != _scalars(b, "clients/train_loss")


def test_test_subcommand_evaluates_the_checkpoint(run_cli, tmp_path):
    code, _, err = run_cli("fit", *FAST)
    assert code == 0, err
    run = _run_dir(tmp_path / "runs")
    final_acc = _scalars(run, "global/test_acc")[-1][1]
    code, out, err = run_cli("test", "--config", QUICKSTART, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert code == 0, err
    assert "round 2" in out
    reported = float(out.split("test_acc")[1].split()[0])
    assert reported == pytest.approx(final_acc, abs=1e-4)


def test_print_config_shows_resolved_settings(run_cli):
    code, out, _ = run_cli("fit", "--config", QUICKSTART, "--print_config")
    assert code in (0, None)
    assert "clients_per_round: 5" in out and "class_path: datamodules.Digits" in out
    assert "beta: 0.5" in out


def test_missing_checkpoint_is_one_line(run_cli, tmp_path):
    code, _, err = run_cli("test", "--config", QUICKSTART, "--ckpt_path", str(tmp_path / "nope.ckpt"))
    assert code == 2 and "ckpt_path" in err and "Traceback" not in err


def test_corrupted_checkpoint_is_one_line(run_cli, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    code, _, err = run_cli("test", "--config", QUICKSTART, "--ckpt_path", str(bad))
    assert code == 2 and str(bad) in err and "Traceback" not in err


STRATEGIES = [
    ["--trainer.strategy.class_path", "flcore.strategies.FedAvg"],
    ["--trainer.strategy.class_path", "flcore.strategies.FedCross", "--trainer.strategy.init_args.alpha", "0.9"],
    ["--trainer.strategy.class_path", "flcore.strategies.FedCross", "--trainer.strategy.init_args.selection",
     "in_order", "--trainer.strategy.init_args.propeller_rounds", "1", "--trainer.strategy.init_args.num_propellers", "3"],
    ["--trainer.strategy.class_path", "flcore.strategies.FedMR"],
    ["--trainer.strategy.class_path", "flcore.strategies.FedMR", "--trainer.strategy.init_args.unit", "module",
     "--trainer.strategy.init_args.first_stage_rounds", "1"],
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=["fedavg", "fedcross", "fedcross-pm", "fedmr", "fedmr-module"])
def test_each_strategy_end_to_end_deterministic(run_cli, tmp_path, strategy):
    finals = []
    for root in ("a", "b"):
        code, out, err = run_cli("fit", *FAST, *strategy, "--trainer.log_dir", str(tmp_path / root))
        assert code == 0, err
        run = _run_dir(tmp_path / root)
        acc = _scalars(run, "global/test_acc")
        assert [s for s, _ in acc] == [1, 2] and 0.0 <= acc[-1][1] <= 1.0
        finals.append((acc, _models(run)))
    (acc_a, models_a), (acc_b, models_b) = finals
    assert acc_a == acc_b
    assert all(torch.equal(ma[k], mb[k]) for ma, mb in zip(models_a, models_b) for k in ma)


def test_quickstart_is_fedcross():
    import yaml

    cfg = yaml.safe_load(open(QUICKSTART))
    assert cfg["trainer"]["strategy"]["class_path"] == "flcore.strategies.FedCross"


@pytest.mark.parametrize("config", sorted(p.name for p in (Path(ROOT) / "configs").glob("*.yaml")))
def test_every_shipped_config_parses(run_cli, config):
    code, out, err = run_cli("fit", "--config", str(Path(ROOT) / "configs" / config), "--print_config")
    assert code == 0, err
    assert "trainer:" in out and "model:" in out and "data:" in out


def test_help_lists_every_subcommand_and_version_prints(run_cli):
    from flcore import __version__

    for args in ([], ["--help"]):
        code, out, _ = run_cli(*args)
        assert code == 0 and all(f"  {sub} " in out for sub in ("fit", "validate", "test", "sweep", "report"))
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"flcore {__version__}"
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    assert f'version = "{__version__}"' in pyproject
