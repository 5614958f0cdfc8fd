"""The benchmark scripts run: the GPU check's dry mode (every code path on the CPU) and a
one-row scale benchmark through the client-state store (figures are not asserted: they are
measurements, printed by the scripts)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _run(args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_gpu_check_dry_runs_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    proc = _run(["benchmarks/gpu_check.py", "--dry", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["dry"] and [r["model"] for r in got["round"]] == ["LeNet CNN", "ResNet-20"]
    assert all(r["flcore_samples_per_s"] > 0 and r["hand_samples_per_s"] > 0 for r in got["round"])
    assert [r["workers"] for r in got["shared"]] == [1, 2] and got["shared"][0]["speedup_over_1"] == 1.0


def test_gpu_check_without_a_device_says_so():
    proc = _run(["benchmarks/gpu_check.py"], timeout=120)
    if proc.returncode == 0:
        pytest.skip("this machine has a CUDA device")
    assert "no CUDA device (use --dry" in proc.stderr


@pytest.mark.slow
def test_scale_benchmark_row_through_the_store(tmp_path):
    out = tmp_path / "scale.json"
    proc = _run(["benchmarks/scale.py", "--methods", "scaffold", "--clients", "20", "--rounds", "2", "--per-round", "4",
                 "--budget-mb", "0", "--data", "digits", "--no-issue-setting", "--log-dir", str(tmp_path / "runs"), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["method"] == "scaffold" and row["clients"] == 20 and row["client_state_budget_mb"] == 0
    assert row["store_spills"] > 0 and row["largest_ckpt_mb"] > 0  # states went through the disk
    assert "| scaffold | 20 |" in out.with_suffix(".md").read_text()
