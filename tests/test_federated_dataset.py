"""Hugging Face data through Flower's FederatedDataset (``datamodules.FromFederatedDataset``), on
local parquet files holding the digits as PNG images (the genuine ``datasets.Image`` encoding), so
it runs offline: the rows Flower loads and shuffles are split by flcore's partitioners and train
bit for bit as the same rows given to ``FromDatasets``."""

import json

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

pytest.importorskip("flwr_datasets")  # the 'flwr' extra; make install includes it

import datasets  # noqa: E402
from PIL import Image  # noqa: E402

from datamodules import FlwrPartitioner, FromDatasets, FromFederatedDataset  # noqa: E402
from tests.conftest import assert_same_tree  # noqa: E402
from tests.test_user_data import _fit  # noqa: E402
from tests.user_data import digits_arrays  # noqa: E402

TO_TENSOR = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
SPLIT = dict(num_clients=3, batch_size=40, transform=TO_TENSOR,
             partition=FlwrPartitioner("flwr_datasets.partitioner.DirichletPartitioner",
                                       {"alpha": 0.5, "min_partition_size": 5}))


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits_parquet")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    files = {}
    for split in ("train", "test"):
        x, y = digits_arrays(split)
        images = [Image.fromarray(np.round(a[0] * 255).astype(np.uint8)) for a in x]
        files[split] = str(root / f"{split}.parquet")
        datasets.Dataset.from_dict({"image": images, "label": y.tolist()}, features=features).to_parquet(files[split])
    return {"data_files": files, "cache_dir": str(root / "cache")}  # datasets.load_dataset's arguments


def test_flower_loaded_rows_train_as_the_same_rows_given_directly(tmp_path, parquet):
    fds = FromFederatedDataset("parquet", load_kwargs=parquet, **SPLIT)
    summary, state = _fit(tmp_path, fds, name="fds")
    rows = datasets.load_dataset("parquet", **parquet).shuffle(seed=42)  # Flower's default shuffle
    direct = FromDatasets(rows["train"], rows["test"], input_key="image", **SPLIT)
    _, reference = _fit(tmp_path, direct, name="direct")
    assert [c.tolist() for c in fds.client_indices] == [c.tolist() for c in direct.client_indices]
    assert_same_tree(state, reference)
    x, y = digits_arrays("train")  # the decoded images are the digits, reordered by the shuffle
    pixels = torch.stack([fds.train_set[i][0] for i in range(len(y))])
    assert pixels.shape == (1400, 1, 8, 8)
    assert np.allclose(np.sort(pixels.sum((1, 2, 3)).numpy()),
                       np.sort((np.round(x * 255) / 255).sum((1, 2, 3))), atol=1e-4)
    assert sorted(fds.train_labels.tolist()) == sorted(y.tolist())
    assert fds.train_labels.tolist() != y.tolist()  # shuffled as Flower shuffles


def test_a_missing_split_is_one_line_naming_the_field(parquet):
    dm = FromFederatedDataset("parquet", test_split="validation", load_kwargs=parquet, **SPLIT)
    with pytest.raises(ValueError, match=r"^data.test_split: The given split: 'validation' is not present in the "
                                         r"dataset's splits: .*'train', 'test'"):
        dm.setup()


def test_pil_rows_without_a_transform_are_refused_at_setup(parquet):
    dm = FromFederatedDataset("parquet", load_kwargs=parquet, num_clients=3)
    with pytest.raises(TypeError, match=r"input of type PngImageFile; give the dataset a transform "
                                        r"\(or set data.transform\)"):
        dm.setup()


def test_yaml_runs_a_federated_dataset(run_cli, tmp_path, parquet):
    config = tmp_path / "fds.yaml"
    config.write_text(json.dumps({
        "data": {"class_path": "datamodules.FromFederatedDataset", "init_args": {
            "dataset": "parquet", "load_kwargs": parquet, "num_clients": 5, "batch_size": 40,
            "transform": {"class_path": "torchvision.transforms.v2.Compose", "init_args": {"transforms": [
                {"class_path": "torchvision.transforms.v2.ToImage"},
                {"class_path": "torchvision.transforms.v2.ToDtype",
                 "init_args": {"dtype": "torch.float32", "scale": True}}]}},
            "partition": {"class_path": "datamodules.FlwrPartitioner", "init_args": {
                "class_path": "flwr_datasets.partitioner.ShardPartitioner",
                "init_args": {"num_shards_per_partition": 4}}}}}}))
    code, out, err = run_cli("fit", "--config", "configs/quickstart.yaml", "--config", str(config),
                             "--trainer.rounds", "2", "--trainer.clients_per_round", "3", "--trainer.eval_every", "2")
    assert code == 0, err
    record = json.loads(next((tmp_path / "runs").glob("*/version_*/results.json")).read_text())
    assert record["config"]["data"]["class_path"] == "datamodules.FromFederatedDataset"
    assert record["rounds_completed"] == 2
