import json
import os

import numpy as np
import pytest
import torch

from datamodules import FEMNIST, DatasetNotFoundError, Sent140, Shakespeare
from datamodules.leaf import SHAKESPEARE_LETTERS, build_vocab, index_to_letter, letter_to_index, tokenize_tweet
from datamodules.shakespeare_preprocess import main as preprocess_main
from datamodules.shakespeare_preprocess import plays_to_leaf, split_complete_works, split_speaker_play, text_to_samples
from lightning_modules.models import CharLSTM, Sent140LSTM
from tests.conftest import ROOT
from tests.fixtures import COMPLETE_WORKS, SPEAKER_PLAY, femnist_users, long_complete_works, sent140_users, write_leaf


def test_femnist_natural_partition_is_the_users(tmp_path):
    users = femnist_users(4)
    write_leaf(tmp_path, users, files=2)
    dm = FEMNIST(root=str(tmp_path), batch_size=4)
    dm.setup()
    assert dm.num_clients == 4 and sorted(dm.users) == sorted(users)
    for cid, user in enumerate(dm.users):
        assert dm.client_sizes[cid] == len(users[user]["train"][1])
        assert len(dm.client_test_indices[cid]) == len(users[user]["test"][1])
        first = np.asarray(users[user]["train"][0][0], dtype=np.float32).reshape(1, 28, 28)
        assert np.allclose(dm.x_train[dm.client_indices[cid][0]].numpy(), first)
        assert dm.y_train[dm.client_indices[cid]].tolist() == users[user]["train"][1]
    assert dm.x_train.shape[1:] == (1, 28, 28) and len(dm.y_test) == 12
    x, y = next(iter(dm.client_test_dataloader(1)))
    assert y.tolist() == users[dm.users[1]]["test"][1]


def test_min_samples_and_num_clients(tmp_path):
    write_leaf(tmp_path, femnist_users(4))  # users have 9, 11, 13, 15 samples
    dm = FEMNIST(root=str(tmp_path), min_samples=12)
    dm.setup()
    assert dm.num_clients == 2 and all(dm.client_sizes[i] >= 9 for i in range(2))
    a, b = (FEMNIST(root=str(tmp_path), num_clients=3, seed=5) for _ in range(2))
    a.setup(), b.setup()
    assert a.users == b.users and len(a.users) == 3
    with pytest.raises(ValueError, match="num_clients"):
        FEMNIST(root=str(tmp_path), num_clients=9).setup()


def test_missing_leaf_files_one_line(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        Shakespeare(root=str(tmp_path)).setup()
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path) in msg and "shakespeare_preprocess" in msg


def test_shakespeare_vocabulary_round_trip():
    assert len(SHAKESPEARE_LETTERS) == 80
    text = "To be, or not to be: that is the question!\n"
    assert index_to_letter(letter_to_index(text)) == text
    assert letter_to_index("a") == [SHAKESPEARE_LETTERS.index("a")]
    assert letter_to_index("é") == [SHAKESPEARE_LETTERS.index(" ")]


def test_text_to_samples_windows_and_targets():
    xs, ys = text_to_samples("abc\ndefgh   ij", seq_length=4)
    assert xs[0] == "abc " and ys[0] == "d"  # newlines become spaces
    text = "abc defgh ij"  # runs of spaces collapsed
    assert len(xs) == len(text) - 4 and all(x + y == text[i:i + 5] for i, (x, y) in enumerate(zip(xs, ys)))


def test_complete_works_layout_gives_users_per_role():
    plays = split_complete_works(COMPLETE_WORKS)
    assert [t for t, _ in plays] == ["THE TRAGEDY OF TESTING", "THE SECOND PLAY"]
    chars = plays[0][1]
    assert len(chars["ALPHA"]) == 4  # three speeches, one with a continuation line
    assert chars["ALPHA"][1].startswith("A continuation")
    train, test = plays_to_leaf(plays, test_fraction=0.2, seq_length=20)
    assert sorted(train["users"]) == ["THE_SECOND_PLAY_DELTA", "THE_SECOND_PLAY_EPSILON",
                                      "THE_TRAGEDY_OF_TESTING_ALPHA", "THE_TRAGEDY_OF_TESTING_BETA"]  # GAMMA: 1 line
    data = train["user_data"]["THE_TRAGEDY_OF_TESTING_ALPHA"]
    assert all(len(x) == 20 for x in data["x"]) and len(data["x"]) == len(data["y"])
    joined = " ".join(chars["ALPHA"][:3]) + " "
    assert data["x"][0] == joined[:20] and data["y"][0] == joined[20]
    last = test["user_data"]["THE_TRAGEDY_OF_TESTING_ALPHA"]
    assert last["x"][0] == chars["ALPHA"][3][:20]  # the last line is held out for test


def test_speaker_layout_parser():
    title, chars = split_speaker_play(SPEAKER_PLAY)
    assert title == "THE TRAGEDY OF TESTING"
    assert set(chars) == {"ALP", "BET"}
    assert chars["ALP"][1] == "Long live the tests! They pass, they pass at last."  # aside removed
    assert chars["BET"][1] == "Peace."  # a one-word speech, not a speaker


def test_preprocessor_command_writes_leaf_json_that_loads(tmp_path):
    src = tmp_path / "100.txt"
    src.write_text(long_complete_works())
    preprocess_main(["--input", str(src), "--output", str(tmp_path / "leaf")])
    blob = json.loads((tmp_path / "leaf" / "train" / "all_data.json").read_text())
    assert set(blob) == {"users", "num_samples", "user_data"}
    assert blob["num_samples"] == [len(blob["user_data"][u]["y"]) for u in blob["users"]]
    dm = Shakespeare(root=str(tmp_path / "leaf"))
    dm.setup()
    assert dm.x_train.shape[1] == 80 and dm.x_train.dtype == torch.long
    u = dm.users[0]
    assert index_to_letter(dm.x_train[0]) == blob["user_data"][u]["x"][0]
    assert SHAKESPEARE_LETTERS[dm.y_train[0]] == blob["user_data"][u]["y"][0]


def test_sent140_tokenizer_vocab_and_glove(tmp_path):
    assert tokenize_tweet("I can't believe it!! @bob") == ["i", "can't", "believe", "it", "!", "!", "bob"]
    vocab = build_vocab(["good good bad", "good day"], max_vocab=2)
    assert vocab == ["<pad>", "<unk>", "good", "bad"]
    write_leaf(tmp_path, sent140_users(4))
    glove = tmp_path / "glove.txt"
    glove.write_text("good 1.0 2.0 3.0\nzzz 9 9 9\n")
    dm = Sent140(root=str(tmp_path), max_length=6, max_vocab=20, embeddings=str(glove))
    dm.setup()
    assert dm.x_train.shape[1] == 6 and set(dm.y_train.tolist()) <= {0, 1}
    ids = dm.encode_text("good good unheardofword")
    assert ids == [dm.vocab.index("good")] * 2 + [1, 0, 0, 0]
    net = Sent140LSTM(vocab_size=22, embed_dim=3)
    dm.prepare_net(net)
    assert net.embedding.weight[dm.vocab.index("good")].tolist() == [1.0, 2.0, 3.0]
    dm.save_artifacts(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "vocab.json").read_text()) == dm.vocab
    with pytest.raises(ValueError, match="width"):
        dm.prepare_net(Sent140LSTM(vocab_size=22, embed_dim=4))


def test_lstm_shapes():
    assert CharLSTM()(torch.randint(0, 80, (3, 80))).shape == (3, 80)
    assert Sent140LSTM(vocab_size=50)(torch.randint(0, 50, (2, 25))).shape == (2, 2)


LEAF_RUNS = {
    "femnist": ("configs/fedcross_femnist_cnn.yaml", femnist_users,
                ["--model.init_args.net.init_args.hidden", "32"]),
    "sent140": ("configs/fedcross_sent140_lstm.yaml", sent140_users,
                ["--data.init_args.max_vocab", "30", "--model.init_args.net.init_args.vocab_size", "32"]),
}


@pytest.mark.parametrize("name", ["femnist", "sent140", "shakespeare", "shakespeare-fedmr"])
def test_two_round_cli_runs_on_fixtures(run_cli, tmp_path, name):
    data = tmp_path / "leaf"
    if name.startswith("shakespeare"):
        src = tmp_path / "100.txt"
        src.write_text(long_complete_works())
        preprocess_main(["--input", str(src), "--output", str(data)])
        config, extra = "configs/fedcross_shakespeare_lstm.yaml", ["--model.init_args.net.init_args.hidden", "16"]
        if name == "shakespeare-fedmr":
            config = "configs/fedmr_shakespeare_lstm.yaml"
    else:
        config, make, extra = LEAF_RUNS[name]
        write_leaf(data, make(4))
    code, out, err = run_cli("fit", "--config", os.path.join(ROOT, config), "--data.init_args.root", str(data),
                             "--data.init_args.num_clients", "null", "--data.init_args.min_samples", "0",
                             "--trainer.clients_per_round", "3", "--trainer.rounds", "2", "--trainer.eval_every", "1",
                             "--trainer.local.max_epochs", "1", *extra)
    assert code == 0, err
    assert "finished 2 rounds" in out
