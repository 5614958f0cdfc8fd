"""A user's own data (datamodules/wrap.py): a torch Dataset, a lazy dataset that reads files, a
plain LightningDataModule and a Hugging Face dataset become federated datamodules with no
subclassing; they give the same run as the in-memory fast path bit for bit, read each epoch
afresh from the dataset, and are refused in one line when they cannot be used."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import seed_everything
from torch.utils.data import TensorDataset

from datamodules import Dirichlet, FederatedDataModule, FlwrPartitioner, FromDataModule, FromDatasets
from flcore import FederatedTrainer
from flcore.checkpoint import load_checkpoint
from flcore.errors import ConfigError
from flcore.strategies import FedAvg, FedCross, FedMR, FedProx
from lightning_modules import ClientModule
from lightning_modules.models import CNN
from tests.conftest import assert_same_tree
from tests.user_code import DigitsMLP
from tests.user_data import NpyFolder, PlainDigits, digits_arrays, hf_digits, write_npy_folder

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "own_module"
SPLIT = dict(num_clients=3, partition=Dirichlet(beta=0.5), batch_size=40, seed=0)


class ArrayDigits(FederatedDataModule):
    """The same digits split, as an in-memory datamodule (the fast path)."""

    num_classes, input_shape = 10, (1, 8, 8)

    def load(self):
        (x, y), (xt, yt) = digits_arrays("train"), digits_arrays("test")
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt), torch.from_numpy(yt)


def _tensors(split):
    return TensorDataset(*map(torch.from_numpy, digits_arrays(split)))


def _fit(tmp_path, data, module=None,  # module: a factory, called after seeding
         strategy=None, name="run", rounds=2, **trainer):
    seed_everything(0)
    module = module() if module is not None else DigitsMLP(hidden=8, lr=0.2)
    run = FederatedTrainer(strategy=strategy or FedAvg(), rounds=rounds, clients_per_round=3, eval_every=1,
                           local={"max_epochs": 2}, log_dir=str(tmp_path), name=name, **trainer)
    summary = run.fit(module, data)
    return summary, load_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "last.ckpt")["strategy_state"]


@pytest.mark.parametrize("module", [lambda: ClientModule(CNN(1, 10, 8, channels=(4, 8), hidden=16)),
                                    lambda: DigitsMLP(hidden=8, lr=0.2)], ids=["shipped", "user"])
def test_a_dataset_gives_the_in_memory_run_bit_for_bit(tmp_path, module):
    fast, fast_state = _fit(tmp_path, ArrayDigits(**SPLIT), module, name="fast", client_eval_every=2)
    wrapped, state = _fit(tmp_path, FromDatasets(_tensors("train"), _tensors("test"), **SPLIT), module,
                          name="wrapped", client_eval_every=2)
    assert_same_tree(fast_state, state)
    assert fast["final"]["global/test_acc"] == wrapped["final"]["global/test_acc"]
    assert fast["final"]["clients/test_acc_mean"] == wrapped["final"]["clients/test_acc_mean"]


def test_the_split_is_the_partitioners_split_of_the_datasets_labels():
    data = FromDatasets(_tensors("train"), _tensors("test"), num_clients=5, partition=Dirichlet(beta=0.3), seed=4,
                        val_size=100, public_size=50)
    data.setup()
    reference = ArrayDigits(num_clients=5, partition=Dirichlet(beta=0.3), seed=4, val_size=100, public_size=50)
    reference.setup()
    assert [c.tolist() for c in data.client_indices] == [c.tolist() for c in reference.client_indices]
    assert np.array_equal(data.label_distribution(), reference.label_distribution())
    assert torch.equal(data.x_public, reference.x_public) and data.has_val
    x, y = next(iter(data.val_dataloader()))
    assert torch.equal(x, reference.x_val[:len(x)]) and torch.equal(y, reference.y_val[:len(y)])
    assert data.num_classes == 10 and data.input_shape == (1, 8, 8)


def test_a_lazy_file_dataset_is_read_every_epoch_and_repeats_under_a_seed(tmp_path):
    train, test = write_npy_folder(tmp_path, "train"), write_npy_folder(tmp_path, "test")

    def data():
        return FromDatasets(NpyFolder(str(train), noise=0.05), NpyFolder(str(test)), **SPLIT)

    first_data = data()
    first, state = _fit(tmp_path, first_data, name="a")
    sizes = first_data.client_sizes
    kept = [n - 1 if n > 40 and n % 40 == 1 else n for n in sizes]
    # labels come from the attribute (no read); every round each client reads its samples once per
    # local epoch (2 rounds x 2 epochs): the data are never held in memory
    assert first_data.train_set.dataset.reads == 2 * 2 * sum(kept)
    again, same = _fit(tmp_path, data(), name="b")
    assert_same_tree(state, same)  # the augmentation noise is seeded per client and round
    _, clean = _fit(tmp_path, FromDatasets(NpyFolder(str(train)), NpyFolder(str(test)), **SPLIT), name="c")
    assert not torch.equal(clean["global"]["model.1.weight"], state["global"]["model.1.weight"])  # it ran
    assert first["final"]["global/test_acc"] > 0.2  # 10 classes: above chance after 2 rounds


def test_a_plain_lightning_datamodule_equals_its_datasets(tmp_path):
    plain, state = _fit(tmp_path, FromDataModule(PlainDigits(batch_size=7), **SPLIT), strategy=FedProx(mu=0.1),
                        name="dm")
    _, reference = _fit(tmp_path, FromDatasets(_tensors("train"), _tensors("test"), **SPLIT),
                        strategy=FedProx(mu=0.1), name="ds")
    assert_same_tree(state, reference)  # flcore's batch size and order replace the datamodule's own


@pytest.mark.parametrize("strategy", [FedCross, FedMR])
def test_fedcross_and_fedmr_train_on_a_wrapped_datamodule(tmp_path, strategy):
    summary, _ = _fit(tmp_path, FromDataModule(PlainDigits(), **SPLIT), strategy=strategy(), rounds=4)
    assert summary["final"]["global/test_acc"] > 0.3


def test_a_hugging_face_dataset_with_a_flower_partitioner(tmp_path):
    pytest.importorskip("flwr_datasets")
    flower = FlwrPartitioner("flwr_datasets.partitioner.DirichletPartitioner",
                             {"alpha": 0.5, "partition_by": "label", "min_partition_size": 5})
    hf = FromDatasets(hf_digits("train"), hf_digits("test"), input_key="image", num_clients=3, partition=flower,
                      batch_size=40)
    summary, state = _fit(tmp_path, hf, name="hf")
    ref = FromDatasets(_tensors("train"), _tensors("test"), num_clients=3, partition=flower, batch_size=40)
    _, reference = _fit(tmp_path, ref, name="ref")
    assert [c.tolist() for c in hf.client_indices] == [c.tolist() for c in ref.client_indices]
    assert_same_tree(state, reference)


def test_yaml_runs_a_plain_datamodule_and_refuses_it_unwrapped(run_cli, tmp_path):
    config = str(EXAMPLE / "fedavg_own_data.yaml")
    code, out, err = run_cli("fit", "--config", config, "--trainer.rounds", "2", "--trainer.eval_every", "2")
    assert code == 0, err
    record = json.loads(next((tmp_path / "runs").glob("*/version_*/results.json")).read_text())
    assert record["config"]["data"]["class_path"] == "datamodules.FromDataModule"
    assert record["config"]["data"]["init_args"]["datamodule"]["class_path"] == "my_data.DigitsDataModule"
    code, out, err = run_cli("fit", "--config", config, "--data", "my_data.DigitsDataModule")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("flcore: error: data: DigitsDataModule is a plain LightningDataModule with no "
                           "partition into clients; wrap it: datamodules.FromDataModule")


class _Strings(TensorDataset):
    def __getitem__(self, i):
        return "an image", 0


@pytest.mark.parametrize("data, message", [
    (lambda: PlainDigits(), "data: PlainDigits is a plain LightningDataModule with no partition into clients"),
    (lambda: _tensors("train"), "data: TensorDataset is not a datamodule; use datamodules.FromDatasets"),
    (lambda: FromDatasets(_tensors("train"), _tensors("test"), num_classes=5, **SPLIT),
     "data.num_classes: 5 does not cover label 9"),
    (lambda: FromDatasets(_tensors("train"), _Strings(torch.zeros(3)), **SPLIT),
     "data: item 0 has an input of type str; give the dataset a transform (or set data.transform) that returns "
     "a tensor"),
    (lambda: FromDatasets(_tensors("train"), TensorDataset(torch.zeros(0), torch.zeros(0)), **SPLIT),
     "data: the test dataset is empty"),
])
def test_unusable_data_is_refused_in_one_line_before_training(tmp_path, data, message):
    trainer = FederatedTrainer(rounds=1, clients_per_round=2, log_dir=str(tmp_path), name="bad")
    with pytest.raises(ConfigError) as err:
        trainer.fit(DigitsMLP(), data())
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "bad").exists()


def test_negative_workers_are_refused():
    with pytest.raises(ValueError, match=r"data.num_workers: must be >= 0, got -1"):
        FromDatasets(_tensors("train"), _tensors("test"), num_workers=-1)
