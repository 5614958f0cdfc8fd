"""The README's Python-API example runs as documented and learns."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_python_api_example(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("python_api", ROOT / "examples" / "python_api.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    summary = example.main(["--log-dir", str(tmp_path)])
    assert summary["final_test_acc"] > 0.5  # 8 rounds of FedAvg on Digits: about 0.70
    record = json.loads((Path(summary["run_dir"]) / "results.json").read_text())
    assert record["status"] == "finished" and record["rounds_completed"] == 8 and record["seed"] == 0
    assert "results.json: finished 8 rounds, seed 0" in capsys.readouterr().out


@pytest.mark.slow
def test_own_module_example_runs_from_python_and_learns(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("own_module_run", ROOT / "examples" / "own_module" / "run.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    summary = example.main(["--strategy", "scaffold", "--log-dir", str(tmp_path)])
    assert summary["final_test_acc"] > 0.5  # 20 rounds on Digits
    out = capsys.readouterr().out
    assert "recorded model: {'class_path': 'my_module.DigitsMLP', 'init_args': {'hidden': 32, 'lr': 0.1}}" in out
