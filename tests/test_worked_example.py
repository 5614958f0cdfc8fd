"""CONTRIBUTING.md's worked example: q-FedAvg added as two files outside flcore
(examples/qffl/qffl_server.py, qffl_client.py), run from YAML with no edit to flcore."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "qffl"


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    for name in ("qffl_server", "qffl_client"):
        sys.modules.pop(name, None)


def test_q_fedavg_update_by_hand(on_path):
    from qffl_server import QFedAvg

    from flcore.messages import ClientResult

    def result(cid, w, loss):
        return ClientResult(cid=cid, slot=cid, state={"w": torch.tensor(w, dtype=torch.float64)}, num_samples=10,
                            payload={"loss": loss})

    state = {"global": {"w": torch.tensor([1.0, 1.0], dtype=torch.float64)}}
    results = [result(0, [0.0, 1.0], 2.0), result(1, [1.0, 0.5], 0.5)]
    # L = 10, q = 1: dw_0 = [10, 0], dw_1 = [0, 5]; num = 2 [10, 0] + 0.5 [0, 5] = [20, 2.5];
    # den = (100 + 10 * 2) + (25 + 10 * 0.5) = 150; w = [1 - 20/150, 1 - 2.5/150]
    new = QFedAvg(q=1.0, lipschitz=10.0).aggregate_fit(0, results, state, np.random.default_rng(0))
    assert new["global"]["w"].tolist() == pytest.approx([1 - 20 / 150, 1 - 2.5 / 150])
    plain = QFedAvg(q=0.0, lipschitz=10.0).aggregate_fit(0, results, state, np.random.default_rng(0))
    assert plain["global"]["w"].tolist() == pytest.approx([0.5, 0.75])  # q = 0: the unweighted mean


@pytest.mark.slow
def test_worked_example_runs_from_yaml_and_its_pairing_is_checked(on_path, run_cli):
    code, out, err = run_cli("fit", "--config", str(EXAMPLE / "qffl_digits.yaml"), "--trainer.rounds", "6",
                             "--trainer.eval_every", "6", "--trainer.client_eval_every", "0")
    assert code == 0 and "QFedAvg finished 6 rounds" in out
    accuracy = float(out.split("final test_acc")[1].split()[0].rstrip(","))
    assert accuracy > 0.3  # chance is 0.1
    code, _, err = run_cli("fit", "--config", str(EXAMPLE / "qffl_digits.yaml"), "--trainer.rounds", "1",
                           "--model.class_path", "lightning_modules.ClientModule")
    assert code == 2 and "qffl_server.QFedAvg needs model.class_path qffl_client.QFFLModule" in err
