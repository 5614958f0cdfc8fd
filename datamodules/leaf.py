"""LEAF datasets (Caldas et al. 2018): FEMNIST, Shakespeare, Sent140 with their natural clients.

LEAF's preprocessing writes ``<root>/train/*.json`` and ``<root>/test/*.json``; each file holds
``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``. One
client per LEAF user, with that user's own train and test samples (per-client test sets are
available through :meth:`LeafDataModule.client_test_dataloader`; the global test set is their
union).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules.base import DatasetNotFoundError, FederatedDataModule, IndexedTensors, collate_batch
from datamodules.partition import Partitioner

__all__ = [
    "Natural", "LeafDataModule", "FEMNIST", "Shakespeare", "Sent140", "read_leaf_dir",
    "SHAKESPEARE_LETTERS", "letter_to_index", "index_to_letter", "tokenize_tweet", "build_vocab",
]


class Natural(Partitioner):
    """The natural partition of LEAF data: one client per user (set by the datamodule)."""

    def __call__(self, labels, num_clients, rng):
        raise ValueError("partition: Natural is only valid for LEAF datamodules, whose users are the clients")


def read_leaf_dir(directory: Path) -> dict[str, dict[str, list]]:
    """Merge every ``*.json`` of a LEAF split directory into ``{user: {"x": [...], "y": [...]}}``
    (files read one at a time; users in file order)."""
    users: dict[str, dict[str, list]] = {}
    for path in sorted(Path(directory).glob("*.json")):
        with open(path) as f:
            blob = json.load(f)
        for user in blob["users"]:
            data = blob["user_data"][user]
            entry = users.setdefault(user, {"x": [], "y": []})
            entry["x"].extend(data["x"])
            entry["y"].extend(data["y"])
    return users


class LeafDataModule(FederatedDataModule):
    """Base of the LEAF datamodules: natural partition, user filtering, per-client test sets.

    Args:
        root: directory holding LEAF's ``train/`` and ``test/`` JSON folders.
        num_clients: keep this many users (drawn with ``seed`` among those passing
            ``min_samples``); ``None`` keeps all of them.
        min_samples: keep users with at least this many samples (train + test), e.g. FedMR's
            FEMNIST setting "more than 100" -> 101.
        batch_size, seed, eval_batch_size: as :class:`FederatedDataModule`.

    Raises:
        DatasetNotFoundError: no JSON files under ``root/train`` or ``root/test``.
        ValueError: fewer users than ``num_clients`` pass the filter.
    """

    leaf_name = ""
    leaf_command = ""

    def __init__(self, root: str = "data/leaf", num_clients: int | None = None, min_samples: int = 0,
                 batch_size: int = 10, seed: int = 0, eval_batch_size: int = 1000):
        super().__init__(root=root, num_clients=max(1, num_clients or 1), partition=Natural(),
                         batch_size=batch_size, seed=seed, download=False, eval_batch_size=eval_batch_size)
        if min_samples < 0:
            raise ValueError(f"data.min_samples: must be >= 0, got {min_samples}")
        self.requested_clients = num_clients
        self.min_samples = int(min_samples)
        self.users: list[str] = []
        self.client_test_indices: list[np.ndarray] = []

    def encode(self, xs: list, ys: list, train: bool) -> tuple[Tensor, Tensor]:
        """Turn one user's raw LEAF ``x`` / ``y`` lists into tensors."""
        raise NotImplementedError

    def fit_encoder(self, train_users: dict[str, dict[str, list]]) -> None:
        """Learn data-dependent encodings (Sent140's vocabulary) from the training split."""

    def _read(self, split: str) -> dict[str, dict[str, list]]:
        directory = Path(self.root) / split
        if not any(directory.glob("*.json")):
            raise DatasetNotFoundError(
                f"data.root: no LEAF {self.leaf_name} JSON files in {directory.resolve()}; produce them with "
                f"LEAF's {self.leaf_command} (files train/*.json and test/*.json)"
            )
        return read_leaf_dir(directory)

    def load(self):  # pragma: no cover - LEAF datamodules override setup
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.x_train is not None:
            return
        train, test = self._read("train"), self._read("test")
        users = [u for u in train if len(train[u]["y"]) + len(test.get(u, {"y": []})["y"]) >= self.min_samples]
        if self.requested_clients is not None:
            if self.requested_clients > len(users):
                raise ValueError(f"data.num_clients: only {len(users)} LEAF users have >= {self.min_samples} samples, "
                                 f"got {self.requested_clients}")
            rng = np.random.default_rng(self.seed)
            users = [users[i] for i in sorted(rng.choice(len(users), self.requested_clients, replace=False))]
        if not users:
            raise ValueError(f"data.min_samples: none of the {len(train)} LEAF users has >= {self.min_samples} samples")
        self.fit_encoder({u: train[u] for u in users})
        xs, ys, xt, yt = [], [], [], []
        self.client_indices, self.client_test_indices = [], []
        n_train = n_test = 0
        for u in users:
            x, y = self.encode(train[u]["x"], train[u]["y"], True)
            xs.append(x), ys.append(y)
            self.client_indices.append(np.arange(n_train, n_train + len(y)))
            n_train += len(y)
            tx, ty = self.encode(test.get(u, {"x": []})["x"], test.get(u, {"y": []})["y"], False)
            xt.append(tx), yt.append(ty)
            self.client_test_indices.append(np.arange(n_test, n_test + len(ty)))
            n_test += len(ty)
        self.users = users
        self.num_clients = len(users)
        self.x_train, self.y_train = torch.cat(xs).contiguous(), torch.cat(ys).long()
        self.x_test, self.y_test = torch.cat(xt).contiguous(), torch.cat(yt).long()

    def client_test_dataloader(self, cid: int) -> DataLoader:
        """Client ``cid``'s own LEAF test samples (for per-client accuracy)."""
        return DataLoader(IndexedTensors(self.x_test, self.y_test, self.client_test_indices[cid]),
                          batch_size=self.eval_batch_size, collate_fn=collate_batch)


class FEMNIST(LeafDataModule):
    """FEMNIST: 28x28 grey handwritten characters, 62 classes, writers as clients.

    LEAF stores each image as 784 floats in [0, 1] (row-major); they are reshaped to
    ``(1, 28, 28)`` and used as they are.
    """

    num_classes = 62
    input_shape = (1, 28, 28)
    leaf_name = "FEMNIST"
    leaf_command = "data/femnist/preprocess.sh (e.g. -s niid --sf 0.05 -k 0 -t sample)"

    def encode(self, xs, ys, train):
        x = torch.tensor(np.asarray(xs, dtype=np.float32).reshape(-1, 1, 28, 28))
        return x, torch.tensor(np.asarray(ys, dtype=np.int64).reshape(-1))


#: LEAF's 80 Shakespeare symbols; a character's class is its position here (unknown -> -1 in
#: LEAF's ``letter_to_vec``; here unknown characters map to the space's index).
SHAKESPEARE_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
_UNKNOWN = SHAKESPEARE_LETTERS.index(" ")


def letter_to_index(text: str) -> list[int]:
    """Characters to LEAF indices (``SHAKESPEARE_LETTERS.find``), unknown characters as spaces."""
    out = []
    for ch in text:
        i = SHAKESPEARE_LETTERS.find(ch)
        out.append(i if i >= 0 else _UNKNOWN)
    return out


def index_to_letter(indices) -> str:
    """Inverse of :func:`letter_to_index` for known characters."""
    return "".join(SHAKESPEARE_LETTERS[int(i)] for i in indices)


class Shakespeare(LeafDataModule):
    """Shakespeare next-character prediction: speaking roles as clients.

    ``x``: windows of ``seq_length`` (80) characters -> ``(N, 80)`` int64 indices; ``y``: the next
    character's index (80 classes). Build the JSON with LEAF's pipeline or with
    :mod:`datamodules.shakespeare_preprocess` from raw Gutenberg text.
    """

    num_classes = len(SHAKESPEARE_LETTERS)
    input_shape = (80,)
    leaf_name = "Shakespeare"
    leaf_command = ("data/shakespeare/preprocess.sh, or python -m datamodules.shakespeare_preprocess "
                    "--input <Gutenberg text> --output <root>")

    def encode(self, xs, ys, train):
        x = torch.tensor([letter_to_index(s) for s in xs], dtype=torch.long).reshape(len(xs), -1)
        y = torch.tensor([letter_to_index(c)[0] for c in ys], dtype=torch.long)
        return x, y


_TOKEN = re.compile(r"[\w']+|[.,!?;]")


def tokenize_tweet(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (the regular expression of LEAF's Sent140 models)."""
    return _TOKEN.findall(text.lower())


def build_vocab(texts, max_vocab: int) -> list[str]:
    """``["<pad>", "<unk>"]`` then the ``max_vocab`` most frequent tokens (ties by first appearance)."""
    counts = Counter(tok for t in texts for tok in tokenize_tweet(t))
    return ["<pad>", "<unk>"] + [w for w, _ in counts.most_common(max_vocab)]


class Sent140(LeafDataModule):
    """Sent140: tweets labelled 0 (negative) / 1 (positive), Twitter users as clients.

    LEAF stores ``x`` as ``[id, date, query, user, text]`` (the text is the last field). Tweets are
    tokenised by :func:`tokenize_tweet`, mapped through a vocabulary built from the training split
    of the kept users (``vocab``, saved with the run as ``vocab.json``), then padded / truncated to
    ``max_length`` ids ``(N, max_length)``. The network's embedding must have
    ``vocab_size = max_vocab + 2`` rows. With ``embeddings`` (a GloVe text file: ``word v1 ... vD``)
    the network's embedding is initialised from it (:meth:`prepare_net`).

    Args:
        max_length: tokens per tweet (LEAF: 25).
        max_vocab: most frequent training tokens kept (ids 0 = pad, 1 = unknown).
        embeddings: optional path of a GloVe-format file.
    """

    num_classes = 2
    leaf_name = "Sent140"
    leaf_command = "data/sent140/preprocess.sh (e.g. -s niid --sf 0.3 -k 30 -t sample)"

    def __init__(self, root: str = "data/leaf", num_clients: int | None = None, min_samples: int = 0,
                 batch_size: int = 10, seed: int = 0, eval_batch_size: int = 1000, max_length: int = 25,
                 max_vocab: int = 10000, embeddings: str | None = None):
        super().__init__(root, num_clients, min_samples, batch_size, seed, eval_batch_size)
        if max_length < 1 or max_vocab < 1:
            raise ValueError("data.max_length / data.max_vocab: must be >= 1")
        self.max_length, self.max_vocab, self.embeddings = int(max_length), int(max_vocab), embeddings
        self.input_shape = (self.max_length,)
        self.vocab: list[str] = []

    @staticmethod
    def _text(x) -> str:
        return x[-1] if isinstance(x, (list, tuple)) else str(x)

    def fit_encoder(self, train_users):
        self.vocab = build_vocab((self._text(x) for u in train_users.values() for x in u["x"]), self.max_vocab)
        self._index = {w: i for i, w in enumerate(self.vocab)}

    def encode_text(self, text: str) -> list[int]:
        """Token ids of one tweet, padded with 0 / truncated to ``max_length``."""
        ids = [self._index.get(tok, 1) for tok in tokenize_tweet(text)][: self.max_length]
        return ids + [0] * (self.max_length - len(ids))

    def encode(self, xs, ys, train):
        x = torch.tensor([self.encode_text(self._text(v)) for v in xs], dtype=torch.long).reshape(len(xs), self.max_length)
        return x, torch.tensor([int(float(v)) for v in ys], dtype=torch.long)

    def save_artifacts(self, directory: Path) -> None:
        """Write ``vocab.json`` (the token list; index = id) into a run directory."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "vocab.json").write_text(json.dumps(self.vocab))

    def prepare_net(self, net: torch.nn.Module) -> None:
        """Copy GloVe vectors of the vocabulary into ``net.embedding`` (rows of unknown words keep
        their initialisation).

        Raises:
            ValueError: the file's vector width differs from the embedding's, or the net has no
                ``embedding`` with ``max_vocab + 2`` rows.
        """
        if not self.embeddings:
            return
        emb = getattr(net, "embedding", None)
        if emb is None or emb.weight.shape[0] != self.max_vocab + 2:
            raise ValueError(f"model.net: Sent140 embeddings need net.embedding with {self.max_vocab + 2} rows")
        with open(self.embeddings, encoding="utf8") as f, torch.no_grad():
            for line in f:
                word, *vec = line.rstrip().split(" ")
                i = self._index.get(word)
                if i is None or i < 2:
                    continue
                if len(vec) != emb.weight.shape[1]:
                    raise ValueError(f"data.embeddings: vectors of width {len(vec)}, the net's embedding has "
                                     f"{emb.weight.shape[1]}")
                emb.weight[i] = torch.tensor([float(v) for v in vec])
