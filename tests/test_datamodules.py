import numpy as np
import pytest
import torch

import datamodules.vision as vision
from datamodules import CIFAR10, CIFAR100, IID, MNIST, DatasetNotFoundError, Digits, Dirichlet, FashionMNIST
from tests.fixtures import write_cifar10, write_cifar100, write_mnist_like


def test_digits_embedded_and_partitioned():
    dm = Digits(num_clients=10, partition=Dirichlet(0.5), batch_size=16, seed=1)
    dm.setup()
    assert dm.x_train.shape == (1437, 1, 8, 8) and dm.x_test.shape == (360, 1, 8, 8)
    assert sum(dm.client_sizes) == 1437
    dist = dm.label_distribution()
    assert dist.shape == (10, 10) and dist.sum() == 1437
    x, y = next(iter(dm.client_dataloader(3, generator=torch.Generator().manual_seed(0))))
    assert x.shape[1:] == (1, 8, 8) and x.shape[0] <= 16
    idx = set(dm.client_indices[3].tolist())
    # the batch is drawn from client 3's samples only
    xs = dm.x_train[sorted(idx)]
    assert all(any(torch.equal(xi, xj) for xj in xs) for xi in x)


def test_client_loader_order_fixed_by_generator():
    dm = Digits(num_clients=5, seed=0)
    dm.setup()
    a = [y for _, y in dm.client_dataloader(0, torch.Generator().manual_seed(5))]
    b = [y for _, y in dm.client_dataloader(0, torch.Generator().manual_seed(5))]
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("cls,folder", [(MNIST, "MNIST"), (FashionMNIST, "FashionMNIST")])
def test_idx_loaders(tmp_path, cls, folder):
    written = write_mnist_like(tmp_path / folder / "raw")
    dm = cls(root=str(tmp_path), num_clients=6, partition=IID())
    dm.setup()
    assert dm.x_train.shape == (60, 1, 28, 28) and dm.x_test.shape == (20, 1, 28, 28)
    x0 = written["train"][0][0].astype(np.float32) / 255.0
    expected = (x0 - dm.mean[0]) / dm.std[0]
    assert np.allclose(dm.x_train[0, 0].numpy(), expected, atol=1e-5)
    assert dm.y_train.tolist() == written["train"][1].tolist()


def test_fashion_mnist_uses_debian_package_files(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    write_mnist_like(debian, gz=True)
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST", debian)
    dm = FashionMNIST(root=str(tmp_path / "data"), num_clients=4)
    dm.setup()
    assert len(dm.y_train) == 60 and len(dm.y_test) == 20
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_fashion_mnist_unpack_is_atomic_and_completes_a_partial_folder(tmp_path, monkeypatch):
    """Runs started together on a fresh root each unpack the Debian files: every reader sees whole
    files, no temporary file is left, and a folder holding only some files is completed."""
    import gzip
    from concurrent.futures import ThreadPoolExecutor

    debian = tmp_path / "debian"
    write_mnist_like(debian, gz=True)
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST", debian)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: vision._unpack_debian_fashion_mnist(raw), range(8)))
    names = sorted(p.name for p in raw.iterdir())
    assert names == sorted(g.name[:-3] for g in debian.glob("*.gz"))  # no .part left
    for gz in debian.glob("*.gz"):
        assert (raw / gz.name[:-3]).read_bytes() == gzip.open(gz).read()
    (raw / "t10k-labels-idx1-ubyte").unlink()  # a folder with 3 of the 4 files
    dm = FashionMNIST(root=str(tmp_path / "data"), num_clients=4)
    dm.setup()
    assert len(dm.y_test) == 20


@pytest.fixture
def no_md5(monkeypatch):
    # Fixtures cannot match the real files' MD5 sums; check presence only in these tests.
    import os

    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_cifar10_pickles(tmp_path, no_md5):
    batches = write_cifar10(tmp_path)
    dm = CIFAR10(root=str(tmp_path), num_clients=5)
    dm.setup()
    assert dm.x_train.shape == (50, 3, 32, 32) and dm.x_test.shape == (10, 3, 32, 32)
    raw = batches["data_batch_1"][0][0].reshape(3, 32, 32).astype(np.float32) / 255.0
    expected = (raw - np.array(dm.mean)[:, None, None]) / np.array(dm.std)[:, None, None]
    assert np.allclose(dm.x_train[0].numpy(), expected, atol=1e-5)
    assert dm.y_train[:10].tolist() == batches["data_batch_1"][1]


def test_cifar100_pickles(tmp_path, no_md5):
    write_cifar100(tmp_path)
    dm = CIFAR100(root=str(tmp_path), num_clients=4)
    dm.setup()
    assert dm.num_classes == 100 and dm.x_train.shape == (40, 3, 32, 32)
    assert dm.y_train.tolist() == list(range(40))


@pytest.mark.parametrize("cls", [MNIST, CIFAR10, CIFAR100])
def test_missing_files_one_line_error(tmp_path, cls):
    dm = cls(root=str(tmp_path), num_clients=2)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup()
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path) in msg and "download" in msg


def test_partition_checksum_tracks_seed():
    a, b, c = (Digits(num_clients=5, seed=s) for s in (0, 0, 1))
    for d in (a, b, c):
        d.setup()
    assert a.partition_checksum() == b.partition_checksum() != c.partition_checksum()


def test_svhn_reads_genuine_mat_files(tmp_path):
    from datamodules import SVHN
    from tests.fixtures import write_svhn

    write_svhn(tmp_path, n_train=30, n_test=10)
    dm = SVHN(root=str(tmp_path), num_clients=3)
    dm.setup("fit")
    assert dm.x_train.shape == (30, 3, 32, 32) and dm.x_test.shape == (10, 3, 32, 32)
    assert dm.y_train.tolist()[:10] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # label 10 is digit 0
    assert sum(dm.client_sizes) == 30


def test_svhn_missing_files_one_line(tmp_path):
    from datamodules import SVHN, DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match=r"data.root: SVHN file train_32x32.mat not found"):
        SVHN(root=str(tmp_path)).setup("fit")


def test_a_partition_with_an_empty_client_is_refused_at_setup():
    """A client without data could never train (and a resume would meet it again): refused when
    the data is partitioned, naming the field."""
    from datamodules.partition import Partitioner

    class LeavesOneEmpty(Partitioner):
        def __call__(self, labels, num_clients, rng):
            parts = np.array_split(np.arange(len(labels)), num_clients - 1)
            return [*parts, np.zeros(0, dtype=np.int64)]

    dm = Digits(num_clients=5, partition=LeavesOneEmpty())
    with pytest.raises(ValueError, match=r"data.partition: 1 of 5 clients get no training samples \(clients \[4\]\)"):
        dm.setup()


def test_public_set_is_held_out_unlabelled_and_leaves_validation_unchanged():
    from datamodules import Digits

    plain, both = Digits(num_clients=5, val_size=100), Digits(num_clients=5, val_size=100, public_size=0.1)
    plain.setup(), both.setup()
    assert torch.equal(plain.x_val, both.x_val)  # carving a public set does not move the validation set
    x_all, _, _, _ = both.load()
    n = len(x_all)
    order = np.random.default_rng(both.val_seed).permutation(n)  # the documented draw: val, then public
    n_pub = round(0.1 * n)
    pub, keep = np.sort(order[100:100 + n_pub]), np.sort(order[100 + n_pub:])
    assert torch.equal(both.public_inputs(), x_all[pub])
    assert torch.equal(both.x_train, x_all[keep])  # the clients' pool is exactly what is left
    assert sorted(np.concatenate(both.client_indices).tolist()) == list(range(len(keep)))
    with pytest.raises(ValueError, match="data.public_size: no public set"):
        plain.public_inputs()
    with pytest.raises(ValueError, match="data.public_size"):
        Digits(public_size=-1)
