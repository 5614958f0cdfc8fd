"""Tiny datasets written in their genuine on-disk formats."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """IDX file (LeCun's MNIST format): magic 0x0000 | dtype 0x08 (ubyte) | ndim, big-endian dims."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist_like(raw: Path, n_train=60, n_test=20, seed=0, gz=False):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte", x, gz)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y, gz)
        out[split] = (x, y)
    return out


def write_cifar10(root: Path, per_batch=10, n_test=10, seed=0):
    """cifar-10-batches-py: data_batch_1..5 and test_batch pickles ({'data': N x 3072 uint8,
    'labels': list}) and batches.meta ({'label_names': [...]})."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f, protocol=2)
        batches[name] = (data, labels)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return batches


def write_cifar100(root: Path, n_train=40, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": [i % 100 for i in range(n)],
                         "coarse_labels": [i % 20 for i in range(n)]}, f, protocol=2)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f, protocol=2)
