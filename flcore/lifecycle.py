"""A run's lifecycle around the round loop: what it writes into its folder (config, hyperparameters,
partition picture, summary), the resume rules, and reading checkpoints of earlier versions.

Functions of their arguments (the trainer passes itself or what they need), so the round loop in
:mod:`flcore.trainer` stays the round loop.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger

from flcore.checkpoint import load_resume_checkpoint, resolve_ckpt_path, save_checkpoint
from flcore.client_store import checkpoint_manifest, open_store
from flcore.dispatched import ParkedModels
from flcore.config_record import flatten
from flcore.errors import ConfigError
from flcore.evaluation import client_accuracy_stats, evaluate_clients
from flcore.results import select_best, write_metrics_csv, write_results_json
from flcore.metric_names import TEST_ACC

__all__ = ["client_states", "hparams", "write_config", "experiment_fields", "check_resume", "draw_partition",
           "save_run", "write_run_results", "resume_point", "initial_state", "open_run_folder",
           "record_round", "finish_run",
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


def save_run(trainer, completed_rounds: int, state: dict[str, Any], datamodule, version) -> Path:
    """Checkpoint ``trainer``'s run after ``completed_rounds`` rounds (atomically, as
    ``checkpoints/round_<n>.ckpt`` and ``last.ckpt``; the oldest beyond ``keep_checkpoints``
    removed, with the client states no checkpoint names any more). Returns the round's path."""
    payload = {
        "round": completed_rounds,
        "run_id": trainer.run_id,
        "strategy_state": state,
        "client_store": trainer.client_store.snapshot(),
        "sampler": trainer.sampler.state_dict(),
        "history": trainer.history,
        "partition_checksum": datamodule.partition_checksum(),
        "version": version,
        "experiment": experiment_fields(trainer.run_config) if trainer.run_config is not None else None,
        "wall_time_s": trainer._wall_total(),
    }
    path = save_checkpoint(payload, trainer.run_dir / "checkpoints" / f"round_{completed_rounds:05d}.ckpt",
                           keep_last=trainer.keep_checkpoints)
    trainer.client_store.collect_garbage([checkpoint_manifest(p) for p in path.parent.glob("round_*.ckpt")])
    return path


def write_run_results(trainer, seed: int, status: str) -> dict[str, Any]:
    """Write ``trainer``'s ``results.json`` (:func:`flcore.results.write_results_json`) with
    ``status`` (``finished``, ``out_of_time``, ``interrupted`` or ``failed``); returns the record."""
    return write_results_json(trainer.run_dir / "results.json", history=trainer.history, config=trainer.run_config,
                              seed=seed, status=status, wall_time_s=trainer._wall_total(),
                              report_best_test=trainer.report_best_test, rounds_planned=trainer.rounds,
                              run_id=trainer.run_id)


def resume_point(trainer, ckpt_path: str | None, datamodule) -> tuple[int, dict | None, int | None, dict | None]:
    """Where ``trainer``'s run starts: ``(completed rounds, strategy state, run-folder version,
    checkpoint)``, all ``(0, None, None, None)`` for a new run. A resume (``ckpt_path``, ``"last"``
    for the newest under ``log_dir/name``) restores the run id, the history and the wall time of
    the earlier sessions into ``trainer``.

    Raises:
        ConfigError: no such checkpoint, or one that does not belong to this config or data
            (:func:`check_resume`).
    """
    trainer.run_id = uuid.uuid4().hex[:12]
    trainer._wall_before, trainer._t0 = 0.0, None
    if not ckpt_path:
        return 0, None, None, None
    path = resolve_ckpt_path(ckpt_path, Path(trainer.log_dir) / trainer.name)
    ckpt = load_resume_checkpoint(path)
    check_resume(ckpt, trainer.rounds, trainer.run_config, datamodule, path)
    trainer.run_id = ckpt.get("run_id") or trainer.run_id
    trainer.history = list(ckpt.get("history", []))
    trainer._wall_before = float(ckpt.get("wall_time_s", 0.0))
    return ckpt["round"], trainer.strategy.upgrade_state(ckpt["strategy_state"]), ckpt.get("version"), ckpt


def initial_state(trainer, runner, datamodule) -> dict[str, Any]:
    """The strategy's state at round 0, from the freshly built nets (after the data's own
    initialisation of them, e.g. Sent140's GloVe embeddings), through
    :meth:`Strategy.initialize_family <flcore.strategies.Strategy.initialize_family>`: one state
    per architecture, ``{None: state}`` in a homogeneous run.

    Raises:
        ConfigError: the data cannot initialise the net.
    """
    try:
        for module in runner.modules.values():
            datamodule.prepare_net(module.net)
    except (ValueError, OSError) as err:
        raise ConfigError(str(err)) from None
    init = {a: {k: v.detach().to("cpu", copy=True) for k, v in m.net.state_dict().items()}
            for a, m in runner.modules.items()}  # {None: state} in a homogeneous run: a family of one
    return trainer.strategy.initialize_family(init, trainer.clients_per_round, num_clients=datamodule.num_clients)


def open_run_folder(trainer, start: int, version: int | None, ckpt: dict | None, seed: int, datamodule):
    """Open the run folder ``log_dir/name/version_N`` (a resume reopens its own and drops the
    TensorBoard events of rounds after its checkpoint, which are redone), its client-state store
    and parked-model folder; a new run logs its hyperparameters and draws its partition. Writes
    ``config.yaml`` and the data's artifacts. Returns the TensorBoard logger."""
    tb_kwargs = {"purge_step": start + 1} if start else {}
    logger = TensorBoardLogger(trainer.log_dir, name=trainer.name, version=version, default_hp_metric=False,
                               **tb_kwargs)
    trainer.run_dir = Path(logger.log_dir)
    trainer.client_store = open_store(trainer.run_dir, trainer.client_state_mb, ckpt, start)
    trainer._parked = ParkedModels(trainer.run_dir / ".dispatched")
    if start == 0:
        logger.log_hyperparams(hparams(trainer.strategy, trainer.rounds, trainer.clients_per_round, trainer.local, seed,
                                       datamodule, trainer.run_config))
    write_config(trainer.run_dir, trainer.run_config)
    datamodule.save_artifacts(trainer.run_dir)  # e.g. Sent140's vocabulary
    if start == 0:
        draw_partition(trainer.run_dir, datamodule, logger)
    return logger


def record_round(trainer, runner, logger, completed: int, state: dict[str, Any], metrics: dict[str, float],
                 last: bool) -> None:
    """The records of the round that completed ``completed`` rounds: the per-client evaluation
    when due (every ``client_eval_every`` rounds and the ``last``), then the history,
    TensorBoard and ``metrics.csv``. Adds the client figures to ``metrics``."""
    every = trainer.client_eval_every
    if every and (completed % every == 0 or completed == trainer.rounds or last):
        accs = evaluate_clients(runner, trainer.strategy.global_models(state), trainer._client_arch, trainer.client_test_size,
                                dict(trainer.client_store.items("bn")))
        metrics.update(client_accuracy_stats(accs))
        logger.experiment.add_histogram("clients/test_acc", accs, global_step=completed)
    trainer.history.append({"round": completed, **metrics})
    logger.log_metrics(metrics, step=completed)
    write_metrics_csv(trainer.run_dir / "metrics.csv", trainer.history)


def finish_run(trainer, logger, seed: int, status: str, datamodule) -> None:
    """Close a run that ended without an error: ``results.json`` with ``status``, the final
    metrics on TensorBoard's HPARAMS tab, the logger finalised."""
    record = write_run_results(trainer, seed, status)
    best_val = record["test_acc_at_best_val"]
    logger.log_hyperparams(hparams(trainer.strategy, trainer.rounds, trainer.clients_per_round, trainer.local, seed,
                                   datamodule, trainer.run_config),
                           metrics={"hp/final_test_acc": (record["final"] or {}).get(TEST_ACC, math.nan),
                                    "hp/test_acc_at_best_val": best_val if best_val is not None else math.nan})
    logger.finalize("success")
