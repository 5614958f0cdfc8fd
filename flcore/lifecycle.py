"""A run's lifecycle around the round loop: what it writes into its folder (config, hyperparameters,
partition picture, summary), the resume rules, and reading checkpoints of earlier versions.

Pure functions of their arguments (the trainer passes what they need), so the round loop in
:mod:`flcore.trainer` stays the round loop.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from flcore.config_record import flatten
from flcore.errors import ConfigError
from flcore.results import select_best
from flcore.metric_names import TEST_ACC

__all__ = ["client_states", "hparams", "write_config", "experiment_fields", "check_resume", "draw_partition",
           "summarize_run"]


def client_states(ckpt: dict[str, Any]) -> dict[str, dict[int, Any]]:
    """The client states of a checkpoint: ``{"module": {cid: state}, "bn": {cid: entries}}``.
    Checkpoints written before client state became the trainer's kept it inside the strategy
    state (``strategy_state["clients"]``): moved here."""
    bn = dict(ckpt.get("client_bn", {}))
    if "client_states" in ckpt:
        return {"module": dict(ckpt["client_states"]), "bn": bn}
    state = ckpt.get("strategy_state")
    return {"module": dict(state.pop("clients", {})) if isinstance(state, dict) else {}, "bn": bn}


def hparams(strategy, rounds: int, clients_per_round: int, local: dict[str, Any], seed: int,
            datamodule, run_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's TensorBoard hyperparameters (``hparams.yaml``): seed, strategy and its scalar
    settings, rounds, clients per round and in all, local epochs, batch size, dataset and
    partition settings, and the model's (its class, net, optimizer, learning rate, mu, ...: the
    scalar leaves of ``run_config["model"]``, e.g. ``model.optimizer.lr``)."""
    hp: dict[str, Any] = {
        "seed": seed, "strategy": type(strategy).__name__, "rounds": rounds,
        "clients_per_round": clients_per_round, "num_clients": datamodule.num_clients,
        "local_epochs": local.get("max_epochs", 5), "batch_size": datamodule.batch_size,
        "dataset": type(datamodule).__name__, "partition": type(datamodule.partition).__name__,
    }
    hp.update({f"strategy.{k}": v for k, v in vars(strategy).items() if isinstance(v, (int, float, str, bool))})
    hp.update({f"partition.{k}": v for k, v in vars(datamodule.partition).items() if isinstance(v, (int, float))})
    if run_config and isinstance(run_config.get("model"), dict):
        hp.update(flatten("model", run_config["model"]))
    return hp


def write_config(run_dir: Path, run_config: dict[str, Any] | None) -> None:
    """``config.yaml`` in the run folder (the resolved config), when there is one."""
    if run_config is None:
        return
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))


def experiment_fields(run_config: dict[str, Any] | None) -> dict[str, Any]:
    """The config fields that define the experiment (a resume must not change them). The data's
    location may change (``root``, ``download``, ``eval_batch_size``); nothing else may."""
    cfg = run_config or {}
    trainer = cfg.get("trainer", {}) or {}
    data = dict(cfg.get("data") or {})
    data["init_args"] = {k: v for k, v in (data.get("init_args") or {}).items()
                         if k not in ("root", "download", "eval_batch_size")}
    return {"seed_everything": cfg.get("seed_everything"), "model": cfg.get("model"), "data": data,
            "trainer.strategy": trainer.get("strategy"), "trainer.clients_per_round": trainer.get("clients_per_round"),
            "trainer.local": trainer.get("local"), "trainer.architectures": trainer.get("architectures"),
            "trainer.client_architectures": trainer.get("client_architectures"),
            "trainer.bn_policy": trainer.get("bn_policy", "average")}


def check_resume(ckpt: dict[str, Any], rounds: int, run_config: dict[str, Any] | None, datamodule, path: Path) -> None:
    """Refuse a resume that would rewrite a finished run, mix runs, or change the experiment.

    Raises:
        ConfigError: naming ``ckpt_path`` and what differs.
    """
    if ckpt["round"] >= rounds:
        raise ConfigError(f"ckpt_path: {path} is a finished run ({ckpt['round']} rounds, trainer.rounds={rounds}); "
                          f"raise trainer.rounds to continue it, or run without --ckpt_path to start a new run")
    record = path.parent.parent / "results.json"
    if ckpt.get("run_id") and record.is_file():
        try:
            other = json.loads(record.read_text()).get("run_id")
        except (OSError, ValueError):
            other = None
        if other and other != ckpt["run_id"]:
            raise ConfigError(f"ckpt_path: {path} belongs to run {ckpt['run_id']}, but its folder holds run {other}; "
                              f"resume refuses to mix runs")
    if ckpt.get("partition_checksum") not in (None, datamodule.partition_checksum()):
        raise ConfigError("ckpt_path: the checkpoint was made with a different data partition")
    old = ckpt.get("experiment")
    if old is None or run_config is None:
        return
    new = experiment_fields(run_config)
    # a field an older checkpoint does not record had its default then (new fields are added with one)
    differ = sorted(k for k in new if k in old and new[k] != old[k])
    if differ:
        raise ConfigError(f"ckpt_path: resuming with a different experiment is refused; fields differ: {', '.join(differ)}")


def draw_partition(run_dir: Path, datamodule, logger) -> None:
    """``partition.png`` (label-distribution bubble chart) in the run folder and TensorBoard's
    images, when matplotlib is installed (an optional extra)."""
    try:
        from datamodules.plot import plot_label_distribution
    except ImportError:
        return
    try:
        part = datamodule.partition
        args = ", ".join(f"{k}={v}" for k, v in vars(part).items() if isinstance(v, (int, float, str))
                         and not k.startswith("max_"))
        fig = plot_label_distribution(datamodule.label_distribution(),
                                      title=f"{type(datamodule).__name__}: {type(part).__name__}({args}), "
                                            f"{datamodule.num_clients} clients")
    except ImportError:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(run_dir / "partition.png", dpi=100)
    logger.experiment.add_figure("data/partition", fig, global_step=0, close=True)


def summarize_run(history: list[dict[str, float]], wall: float, run_dir: Path | None, strategy_name: str,
                  report_best_test: bool) -> dict[str, Any]:
    """The run's outcome, also printed as one line: ``final`` (last evaluation),
    ``final_test_acc``, ``test_acc_at_best_val`` and ``best_val_round`` (``None`` without a
    validation set), ``best_test_acc`` and ``best_round`` (the papers' test-selected figure),
    ``wall_time_s`` (seconds of this sitting), ``run_dir``."""
    evals = [h for h in history if TEST_ACC in h]
    final = evals[-1] if evals else {}
    top = select_best(history, TEST_ACC) or {}
    best_val = select_best(history)
    summary = {
        "final": final,
        "final_test_acc": final.get(TEST_ACC, math.nan),
        "test_acc_at_best_val": best_val[TEST_ACC] if best_val else None,
        "best_val_round": best_val["round"] if best_val else None,
        "best_test_acc": top.get(TEST_ACC, math.nan),
        "best_round": top.get("round", 0),
        "wall_time_s": wall,
        "run_dir": str(run_dir),
    }
    parts = [f"final test_acc {summary['final_test_acc']:.4f}"]
    if best_val:
        parts.append(f"test_acc at best val {best_val['global/test_acc']:.4f} (round {best_val['round']})")
    if report_best_test:
        parts.append(f"best test_acc (selected on test, papers' protocol) {summary['best_test_acc']:.4f} "
                     f"(round {summary['best_round']})")
    print(f"flcore: {strategy_name} finished {len(history)} rounds in {wall:.1f} s: "
          f"{', '.join(parts)}; logs in {run_dir}")
    return summary
