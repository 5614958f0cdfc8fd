"""Per-sample training augmentation on the in-memory fast path (``data.augment``): each sample
draws its own parameters, the draws are seeded by the client's data stream alone, and a run with
augmentation is reproducible and executor-independent."""

from pathlib import Path

import pytest
import torch
from lightning import seed_everything
from torchvision.transforms import v2

from datamodules import Digits
from datamodules.base import augment_samples
from flcore import FederatedTrainer
from flcore.checkpoint import load_checkpoint
from flcore.executors import ProcessPoolExecutor
from flcore.strategies import FedAvg
from lightning_modules import ClientModule
from lightning_modules.models import CNN
from tests.conftest import assert_same_tree

FLIP = v2.RandomHorizontalFlip(p=0.5)
CROP_FLIP = v2.Compose([v2.RandomCrop(8, padding=1), v2.RandomHorizontalFlip()])


def _epochs(dm, cid=0, seed=0, n=2):
    source = dm.client_batches(cid, torch.Generator().manual_seed(seed))
    return [torch.cat([x for x, _ in next(iter(source))]) for _ in range(n)], source


def test_each_sample_draws_its_own_flip():
    x = torch.arange(40 * 8 * 8, dtype=torch.float32).view(40, 1, 8, 8)
    out = augment_samples(x, FLIP, seed=3)
    flipped = [torch.equal(o, s.flip(-1)) for o, s in zip(out, x)]
    kept = [torch.equal(o, s) for o, s in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))  # each sample: itself or its mirror image
    assert 5 < sum(flipped) < 35  # a whole-batch transform would flip all 40 or none
    assert torch.equal(out, augment_samples(x, FLIP, seed=3))
    assert not torch.equal(out, augment_samples(x, FLIP, seed=4))


def test_augmentation_is_seeded_by_the_data_stream_alone():
    dm = Digits(num_clients=4, augment=CROP_FLIP)
    dm.setup()
    torch.manual_seed(1)
    first, _ = _epochs(dm)
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(3))  # torch's own generator untouched by the augmentation
    torch.manual_seed(99)  # another global state (dropout, other clients) changes nothing
    again, _ = _epochs(dm)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # a fresh draw every local epoch
    plain = Digits(num_clients=4)
    plain.setup()
    source = plain.client_batches(0, torch.Generator().manual_seed(0))
    labels = torch.cat([y for _, y in next(iter(source))])
    augmented = dm.client_batches(0, torch.Generator().manual_seed(0))
    assert torch.equal(labels, torch.cat([y for _, y in next(iter(augmented))]))  # same samples, same order
    loader = dm.client_dataloader(0, torch.Generator().manual_seed(0))
    assert not torch.equal(torch.cat([x for x, _ in loader]),
                           torch.cat([x for x, _ in plain.client_dataloader(0, torch.Generator().manual_seed(0))]))
    assert torch.equal(dm.x_test, plain.x_test)  # evaluation data never augmented


def test_a_non_callable_augment_is_refused():
    with pytest.raises(ValueError, match=r"^data.augment: must be a callable transform .* got int$"):
        Digits(augment=3)


def _run(tmp_path, name, augment, executor=None):
    seed_everything(0)
    run = FederatedTrainer(strategy=FedAvg(), rounds=2, clients_per_round=3, eval_every=2, local={"max_epochs": 2},
                           log_dir=str(tmp_path), name=name, executor=executor)
    summary = run.fit(ClientModule(CNN(1, 10, 8, channels=(4, 8), hidden=16)),
                      Digits(num_clients=6, batch_size=40, augment=augment))
    return load_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "last.ckpt")["strategy_state"]


def test_a_run_with_augmentation_repeats_and_matches_across_executors(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 1-thread workers' kernels
    try:
        sequential = _run(tmp_path, "a", CROP_FLIP)
        assert_same_tree(sequential, _run(tmp_path, "b", CROP_FLIP))
        assert_same_tree(sequential, _run(tmp_path, "pool", CROP_FLIP, ProcessPoolExecutor(2, threads_per_worker=1)))
        plain = _run(tmp_path, "plain", None)
    finally:
        torch.set_num_threads(threads)
    assert any(not torch.equal(plain["global"][k], sequential["global"][k]) for k in plain["global"])


def test_yaml_builds_a_torchvision_pipeline(run_cli):
    code, out, err = run_cli("fit", "--config", "configs/quickstart.yaml", "--data.init_args.augment",
                             '{"class_path": "torchvision.transforms.v2.RandomHorizontalFlip"}', "--print_config")
    assert code == 0, err
    assert "class_path: torchvision.transforms.v2.RandomHorizontalFlip" in out
