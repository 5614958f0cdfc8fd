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


def write_leaf(root: Path, users: dict, files: int = 2) -> None:
    """LEAF JSON: ``root/{train,test}/part_i.json`` with users spread over ``files`` files.

    ``users[u] = {"train": (xs, ys), "test": (xs, ys)}``.
    """
    import json

    names = list(users)
    for split in ("train", "test"):
        d = root / split
        d.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            part = names[i::files]
            blob = {"users": part, "num_samples": [len(users[u][split][1]) for u in part],
                    "user_data": {u: {"x": list(users[u][split][0]), "y": list(users[u][split][1])} for u in part}}
            (d / f"part_{i}.json").write_text(json.dumps(blob))


def femnist_users(n_users=4, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(n_users):
        n_tr, n_te = 6 + 2 * k, 3
        out[f"f{k:04d}_{k}"] = {
            split: (rng.random((n, 784)).round(3).tolist(), rng.integers(0, 62, n).tolist())
            for split, n in (("train", n_tr), ("test", n_te))
        }
    return out


def sent140_users(n_users=4, seed=0):
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "happy", "sad", "love", "hate", "today", "work", "!", "the"]
    out = {}
    for k in range(n_users):
        def tweets(n):
            xs = [[str(1000 + i), "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", f"user{k}",
                   " ".join(rng.choice(words, size=rng.integers(3, 12)))] for i in range(n)]
            return xs, [int(v) for v in rng.integers(0, 2, n)]
        out[f"user{k}"] = {"train": tweets(8), "test": tweets(3)}
    return out


COMPLETE_WORKS = """The Complete Works of William Shakespeare

THE TRAGEDY OF TESTING

by William Shakespeare

  ALPHA. The first line of alpha, which is long enough to matter here.
    A continuation of alpha's first speech, with more words in it.
  BETA. Beta answers alpha with a speech of her own, rather long too.
  ALPHA. Alpha again: the second speech, to make a user with three lines.
  BETA. Beta's second speech is also here, long enough for windows.
  GAMMA. Gamma speaks only once.
  ALPHA. Alpha's third and final speech closes the little scene.
  BETA. And beta's third one, so that both have a test line.

THE SECOND PLAY

by William Shakespeare

  DELTA. Delta opens the second play with a speech that is long enough.
  EPSILON. Epsilon replies briefly but not too briefly, surely.
  DELTA. Delta's second speech in the second play, of some length.
  EPSILON. Epsilon's second speech: more words for more windows here.
  DELTA. Delta's third speech ends it, with a final flourish of words.
  EPSILON. Epsilon's third: the last line of the whole tiny corpus.
"""

SPEAKER_PLAY = """THE TRAGEDY OF TESTING

by William Shakespeare

Dramatis Personae

  Alpha, a tester.
  Beta, her friend.

Enter Alpha and Beta.

Alp.
Who's there? A question to begin with, and a long one at that.

Bet.
Nay, answer me: stand, and unfold yourself, as the play says.

Alp.
Long live the tests! [Aside.] They pass, they pass at last.

Bet.
Peace.
You come most carefully upon your hour, and so the scene goes.

[Exit Beta.]

Alp.
A third speech for alpha, so that she has enough lines for a split.

Bet.
And a third for beta, the last line of this tiny play.

Exeunt.
"""


def long_complete_works(plays: int = 2, roles: int = 3, speeches: int = 6) -> str:
    """A Complete-Works-layout text whose speeches are long enough for 80-character windows."""
    words = "now is the winter of our discontent made glorious summer by this sun of york".split()
    out = ["The Complete Works of William Shakespeare", ""]
    for p in range(plays):
        out += [f"THE PLAY NUMBER {p}", "", "by William Shakespeare", ""]
        for s in range(speeches):
            for r in range(roles):
                text = " ".join(words[(p + r + s + i) % len(words)] for i in range(30))
                out.append(f"  ROLE{chr(65 + r)}. {text}")
                out.append(f"    {text[::-1]}")
        out.append("")
    return "\n".join(out) + "\n"


def write_svhn(root: Path, n_train=30, n_test=10, seed=0):
    """``train_32x32.mat`` / ``test_32x32.mat`` as SVHN ships them: X (32, 32, 3, N) uint8, y (N, 1)
    with labels 1..10 (10 = digit 0)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)
        savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})
