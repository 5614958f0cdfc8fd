"""The invalid-configuration table: each entry must stop before any training with exit status 2
and one line naming the field (and, where the field has a closed set, the allowed values)."""

import pytest

from tests.conftest import QUICKSTART

FEDCROSS = ["--trainer.strategy.class_path", "flcore.strategies.FedCross"]
FEDMR = ["--trainer.strategy.class_path", "flcore.strategies.FedMR"]
S = "--trainer.strategy.init_args."
D = "--data.init_args."
P = "--data.init_args.partition."
N = "--model.init_args.net."

INVALID = [
    # trainer
    (["--trainer.rounds", "0"], "trainer.rounds"),
    (["--trainer.rounds", "many"], "trainer.rounds"),
    (["--trainer.clients_per_round", "21"], "trainer.clients_per_round"),
    (["--trainer.clients_per_round", "0"], "trainer.clients_per_round"),
    (["--trainer.eval_every", "0"], "trainer.eval_every"),
    (["--trainer.checkpoint_every", "-1"], "trainer.checkpoint_every"),
    (["--trainer.keep_checkpoints", "-2"], "trainer.keep_checkpoints"),
    (["--trainer.max_time_s", "-5"], "trainer.max_time_s"),
    (["--trainer.on_client_failure", "ignore"], "['drop', 'raise']"),
    (["--trainer.local.max_epochs", "0"], "trainer.local.max_epochs"),
    (["--trainer.nosuchfield", "3"], "nosuchfield"),
    # strategies
    (["--trainer.strategy.class_path", "flcore.strategies.NoSuch"], "flcore.strategies.fedavg.FedAvg"),
    (FEDCROSS + [S + "alpha", "1.0"], "strategy.alpha"),
    (FEDCROSS + [S + "alpha", "0.3"], "strategy.alpha"),
    (FEDCROSS + ["--trainer.clients_per_round", "1"], "trainer.clients_per_round"),
    (FEDMR + ["--trainer.clients_per_round", "1"], "trainer.clients_per_round"),
    (FEDCROSS + [S + "selection", "random"], "lowest_similarity"),
    (FEDCROSS + [S + "similarity", "euclidean"], "layerwise"),
    (FEDCROSS + [S + "propeller_rounds", "5", S + "num_propellers", "5"], "strategy.num_propellers"),
    (FEDCROSS + [S + "num_propellers", "0"], "strategy.num_propellers"),
    (FEDCROSS + [S + "first_stage_rounds", "-1"], "strategy.first_stage_rounds"),
    (FEDCROSS + [S + "dynamic_alpha_rounds", "-2"], "strategy.dynamic_alpha_rounds"),
    (FEDCROSS + [S + "propeller_rounds", "-1"], "strategy.propeller_rounds"),
    (FEDMR + [S + "unit", "layer"], "['key', 'module']"),
    (FEDMR + [S + "first_stage_rounds", "-3"], "strategy.first_stage_rounds"),
    (["--trainer.sampler.class_path", "flcore.samplers.NoSuch"], "trainer.sampler"),
    (["--trainer.strategy.class_path", "flcore.strategies.Scaffold", "--model.class_path",
      "lightning_modules.ScaffoldModule", "--trainer.local.precision", "16-mixed"], "trainer.local.precision"),
    (["--trainer.strategy.class_path", "flcore.strategies.Scaffold", S + "global_lr", "0"], "strategy.global_lr"),
    # strategy <-> local objective pairing (a mismatched pair would run silently as another method)
    (["--trainer.strategy.class_path", "flcore.strategies.Scaffold"], "needs model.class_path lightning_modules.ScaffoldModule"),
    (["--trainer.strategy.class_path", "flcore.strategies.FedProx"], "needs model.class_path lightning_modules.FedProxModule"),
    (["--trainer.strategy.class_path", "flcore.strategies.FedNova"], "needs model.class_path lightning_modules.FedNovaModule"),
    (["--trainer.strategy.class_path", "flcore.strategies.Moon"], "needs model.class_path lightning_modules.MoonModule"),
    (["--trainer.strategy.class_path", "flcore.strategies.FedGen"], "needs model.class_path lightning_modules.FedGenModule"),
    (["--model.class_path", "lightning_modules.ScaffoldModule"], "model.class_path: lightning_modules.ScaffoldModule needs"),
    (["--model.class_path", "lightning_modules.MoonModule"], "needs trainer.strategy.class_path flcore.strategies.Moon"),
    (["--model.class_path", "lightning_modules.FedNovaModule"], "needs trainer.strategy.class_path flcore.strategies.FedNova"),
    (["--model.class_path", "lightning_modules.FedProxModule"], "needs trainer.strategy.class_path flcore.strategies.FedProx"),
    (["--trainer.strategy.class_path", "flcore.strategies.FedAvg", "--model.class_path", "lightning_modules.FedGenModule"],
     "needs trainer.strategy.class_path flcore.strategies.FedGen"),
    # model
    (["--model.class_path", "lightning_modules.FedProxModule", "--model.init_args.mu", "-0.1"], "model.mu"),
    (["--model.class_path", "lightning_modules.MoonModule", "--model.init_args.temperature", "0"], "model.temperature"),
    (["--model.class_path", "lightning_modules.MoonModule", "--model.init_args.mu", "-1"], "model.mu"),
    (["--model.init_args.net.class_path", "nosuch.Net"], "model.net"),
    ([N + "init_args.num_classes", "7"], "model.net.num_classes"),
    ([N + "init_args.in_channels", "3"], "model.net"),
    ([N + "init_args.image_size", "30"], "image_size"),
    (["--model.init_args.optimizer.class_path", "torch.optim.NoSuch"], "model.optimizer"),
    (["--model.class_path", "lightning_modules.NoSuch"], "model"),
    (["--model.class_path", "lightning_modules.FedGenModule", N + "class_path", "torch.nn.Identity"],
     "feature/classifier split"),
    # trainer.local: checked against lightning.Trainer and this machine
    (["--trainer.local.nosuch", "1"], "trainer.local.nosuch: not a lightning.Trainer argument; allowed: accelerator"),
    (["--trainer.local.devices", "2"], "trainer.local.devices: each local update runs in one process on one device"),
    (["--trainer.local.devices", "0"], "trainer.local.devices"),
    (["--trainer.local.num_nodes", "2"], "trainer.local.num_nodes: must be 1"),
    (["--trainer.local.strategy", "ddp"], "trainer.local.strategy: must be one of ['auto', 'single_device']"),
    (["--trainer.local.accelerator", "tpu"], "trainer.local.accelerator: 'tpu' is not available on this machine"),
    (["--trainer.local.precision", "bogus"], "trainer.local.precision: must be one of"),
    (["--trainer.local.accumulate_grad_batches", "0"], "trainer.local.accumulate_grad_batches: must be an integer >= 1"),
    (["--trainer.local.limit_train_batches", "0"], "trainer.local.limit_train_batches: set by flcore"),
    (["--trainer.local.max_steps", "10"], "trainer.local.max_steps: set by flcore"),
    (["--trainer.local.logger", "true"], "trainer.local.logger: set by flcore"),
    (["--trainer.local.gradient_clip_val", "-1"], "trainer.local.gradient_clip_val: must be a number >= 0"),
    (["--trainer.local.gradient_clip_algorithm", "max"], "trainer.local.gradient_clip_algorithm: must be one of ['norm', 'value']"),
    (["--trainer.local.profiler", "nosuch"], "trainer.local: lightning.Trainer refuses these settings"),
    (["--trainer.local.max_epochs", "-1"], "trainer.local.max_epochs"),
    # more trainer fields
    (["--trainer.checkpoint_interval_s", "0"], "trainer.checkpoint_interval_s: must be > 0 seconds or null"),
    (["--trainer.client_eval_every", "-1"], "trainer.client_eval_every"),
    (["--trainer.client_test_size", "0"], "trainer.client_test_size"),
    (["--trainer.rounds", "1.5"], "trainer.rounds"),
    (["--trainer.report_best_test", "maybe"], "trainer.report_best_test"),
    (["--trainer.log_dir", "/proc/flcore-cannot-write-here"], "trainer.log_dir: /proc/flcore-cannot-write-here is not a writable folder"),
    (["--trainer.executor.class_path", "flcore.executors.ProcessPoolExecutor", "--trainer.executor.init_args.num_workers", "0"],
     "trainer.executor.num_workers"),
    (["--trainer.executor.class_path", "flcore.executors.RayExecutor", "--trainer.executor.init_args.address", "127.0.0.1:1",
      "--trainer.executor.init_args.connect_timeout_s", "2"], "trainer.executor.address: cannot reach Ray at 127.0.0.1:1"),
    (["--trainer.executor.class_path", "flcore.executors.RayExecutor", "--trainer.executor.init_args.address", "nohost"],
     "trainer.executor.address: must be null, 'auto', 'host:port' or 'ray://host:port'"),
    (["--trainer.architectures", "[resnet10]"], "model.net: CNN is not a model family"),
    (["--seed_everything", "abc"], "seed_everything"),
    # optimizer hyper-parameters (torch's own check, run once before training)
    (["--model.init_args.optimizer.init_args.lr", "-0.1"], "model.optimizer: Invalid learning rate: -0.1"),
    (["--model.init_args.optimizer.init_args.momentum", "-0.5"], "model.optimizer: Invalid momentum value: -0.5"),
    (["--model.init_args.channels_last", "maybe"], "model.channels_last"),
    # data values
    ([D + "eval_batch_size", "0"], "data.eval_batch_size: must be >= 1"),
    ([D + "val_size", "-1"], "data.val_size"),
    ([D + "val_size", "2000"], "data.val_size"),
    ([D + "public_size", "-1"], "data.public_size"),
    ([D + "val_size", "800", D + "public_size", "990"], "data.public_size: 990 leaves no training samples (637 available) for 20 clients"),
    ([D + "num_clients", "1000", P + "init_args.min_size", "0", P + "init_args.beta", "0.01"],
     "data.partition: 732 of 1000 clients get no training samples"),
    ([N + "class_path", "lightning_modules.models.ResNet20", N + "init_args.in_channels", "1", D + "batch_size", "1"],
     "data.batch_size: 1 cannot train the BatchNorm layers"),
    ([P + "class_path", "datamodules.ClassesPerClient", P + "init_args.k", "0"], "partition.k"),
    ([P + "class_path", "datamodules.QuantitySkew", P + "init_args.distribution", "zipf"], "['dirichlet', 'power_law']"),
    (["--data.class_path", "datamodules.CIFAR10", D + "root", "/tmp/flcore-no-network-data", D + "download", "true"],
     "data.download: could not download CIFAR10"),
    # data
    (["--data.class_path", "datamodules.NoSuch"], "data"),
    ([P + "class_path", "datamodules.NoSuch"], "data.partition"),
    ([P + "init_args.beta", "0"], "partition.beta"),
    ([P + "init_args.beta", "-0.5"], "partition.beta"),
    ([P + "init_args.min_size", "-1"], "partition.min_size"),
    ([P + "class_path", "datamodules.Shards", P + "init_args.shards_per_client", "0"], "partition.shards_per_client"),
    ([D + "num_clients", "5000"], "num_clients"),
    ([D + "num_clients", "0"], "data.num_clients"),
    ([D + "batch_size", "0"], "data.batch_size"),
    (["--data.class_path", "datamodules.CIFAR10", D + "root", "/nonexistent/flcore-data"], "data.root"),
    (["--data.class_path", "datamodules.MNIST", D + "root", "/nonexistent/flcore-data"], "data.root"),
    # seeds and widths out of range
    (["--seed_everything", "-1"], "seed_everything: must be an integer in [0, 4294967295]"),
    (["--seed_everything", "4294967296"], "seed_everything: must be an integer in [0, 4294967295]"),
    (["--model.net.hidden", "0"], "model.net.hidden: must be an integer >= 1, got 0"),
    (["--model.net.hidden", "-3"], "model.net.hidden: must be an integer >= 1, got -3"),
    (["--model.net.channels", "[16, 0]"], "model.net.channels: must be an integer >= 1"),
    (["--model.net.num_classes", "0"], "model.net.num_classes: must be an integer >= 1"),
]


@pytest.mark.parametrize("args,needle", INVALID, ids=[f"{i:02d}-{a[0].split('.')[-1]}" for i, (a, _) in enumerate(INVALID)])
def test_invalid_config_stops_with_one_line(run_cli, tmp_path, args, needle):
    code, out, err = run_cli("fit", "--config", QUICKSTART, *args)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Seed set")]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("flcore: error: ") and needle in lines[0], lines[0]
    assert not list((tmp_path / "runs").rglob("version_*")), "a run folder was written before the error"


def test_the_table_covers_at_least_80_bad_inputs():
    assert len(INVALID) + len(BAD_YAML) >= 80


BAD_YAML = [
    ("trainer:\n  rounds: 3\n  rounds: 4\n", "line 3, column 3: duplicate key 'rounds' (first on line 2)"),
    ("trainer:\n  rounds: [3\n  name: x\n", "line 3, column 7: expected ',' or ']', but got ':'"),
    ("trainer:\n\trounds: 3\n", "line 2, column 1: found character '\\t' that cannot start any token"),
    ("model: {a: 1\n", "expected ',' or '}'"),
]


@pytest.mark.parametrize("text,needle", BAD_YAML, ids=["duplicate", "flow", "tab", "brace"])
def test_bad_yaml_names_file_line_and_reason(run_cli, tmp_path, text, needle):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    code, out, err = run_cli("fit", "--config", QUICKSTART, "--config", str(bad))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"flcore: error: --config {bad}: ") and needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not list((tmp_path / "runs").glob("**/events.out.*"))  # nothing trained or logged


def test_table_is_large_enough():
    assert len(INVALID) >= 25
