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
]


@pytest.mark.parametrize("args,needle", INVALID, ids=[f"{i:02d}-{a[0].split('.')[-1]}" for i, (a, _) in enumerate(INVALID)])
def test_invalid_config_stops_with_one_line(run_cli, tmp_path, args, needle):
    code, out, err = run_cli("fit", "--config", QUICKSTART, *args)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Seed set")]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("flcore: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not list((tmp_path / "runs").glob("**/events.out.*"))  # nothing trained or logged


def test_table_is_large_enough():
    assert len(INVALID) >= 25
