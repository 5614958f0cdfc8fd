"""Landscape and sharpness math (flcore.analysis) on models whose answer is known."""

import math

import pytest
import torch
from torch import nn

from flcore.analysis import (combine, filter_normalized_direction, hessian_top_eigenvalue, hessian_trace,
                             interpolate_curve, loss_curve_1d, loss_surface_2d)
from lightning_modules.models import CNN


class Quadratic(nn.Module):
    """Output = w (the input is ignored); with ``loss = 0.5 w^T A w`` the Hessian is A."""

    def __init__(self, n):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def forward(self, x):
        return self.w


def _quadratic(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.tensor([5.0, -1.0, 2.0, 0.5, 0.1, 3.0], dtype=torch.float64)[:n]
    a = q @ torch.diag(eig) @ q.T
    net = Quadratic(n)
    state = {"w": torch.randn(n, generator=g, dtype=torch.float64)}
    loss = lambda out, y: 0.5 * out @ a @ out  # noqa: E731
    x, y = torch.zeros(4, 1), torch.zeros(4)
    return net, state, loss, a, eig, x, y


def test_top_eigenvalue_and_trace_of_a_quadratic():
    net, state, loss, a, eig, x, y = _quadratic()
    top = hessian_top_eigenvalue(net, state, x, y, torch.Generator().manual_seed(1), iters=500, tol=1e-10,
                                 loss_fn=loss)
    assert top == pytest.approx(5.0, rel=1e-6)  # the largest-magnitude eigenvalue
    mean, stderr = hessian_trace(net, state, x, y, torch.Generator().manual_seed(2), samples=2000, loss_fn=loss)
    assert abs(mean - float(eig.sum())) < 4 * stderr + 1e-9 and stderr < 0.5  # trace 9.6
    # Hutchinson is exact in expectation: v^T A v averages to trace(A) for Rademacher v
    with pytest.raises(ValueError, match="samples"):
        hessian_trace(net, state, x, y, torch.Generator(), samples=0, loss_fn=loss)


def test_filter_normalization_follows_its_definition():
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in CNN(1, 10, 8, channels=(4, 8), hidden=16).state_dict().items()}
    d = filter_normalized_direction(state, torch.Generator().manual_seed(3))
    assert d.keys() == state.keys()
    for key, w in state.items():
        if w.dim() <= 1:
            assert torch.count_nonzero(d[key]) == 0  # biases (and BN entries) are not perturbed
        else:
            w_norms = w.reshape(w.shape[0], -1).norm(dim=1)
            d_norms = d[key].reshape(w.shape[0], -1).norm(dim=1)
            assert torch.allclose(d_norms, w_norms, rtol=1e-5)  # filter i of d has the norm of filter i of w
    again = filter_normalized_direction(state, torch.Generator().manual_seed(3))
    assert all(torch.equal(d[k], again[k]) for k in d)  # seeded


def test_curves_and_surface_on_a_quadratic():
    net, state, loss, a, _, x, y = _quadratic()
    d = {"w": torch.zeros(6, dtype=torch.float64)}
    d["w"][0] = 1.0
    curve = loss_curve_1d(net, state, d, [-1.0, 0.0, 2.0], x, y, loss_fn=loss)
    for alpha, value in zip(curve["alpha"], curve["loss"]):
        w = state["w"] + alpha * d["w"]
        assert value == pytest.approx(float(0.5 * w @ a @ w))
    e = {"w": torch.zeros(6, dtype=torch.float64)}
    e["w"][1] = 1.0
    surface = loss_surface_2d(net, state, d, e, [0.0, 1.0], [-1.0, 0.5], x, y, loss_fn=loss)
    w = combine(state, [d, e], [1.0, -1.0])["w"]
    assert surface["loss"][1][0] == pytest.approx(float(0.5 * w @ a @ w))
    other = {"w": torch.ones(6, dtype=torch.float64)}
    line = interpolate_curve(net, state, other, [0.0, 0.25, 1.0], x, y, loss_fn=loss)
    for t, value in zip(line["t"], line["loss"]):
        w = (1 - t) * state["w"] + t * other["w"]
        assert value == pytest.approx(float(0.5 * w @ a @ w))
    assert all(math.isnan(v) for v in line["acc"])  # no class outputs, no accuracy


@pytest.mark.slow
def test_analyze_script_on_two_finished_runs(run_cli, tmp_path):
    """benchmarks/analyze.py rebuilds each run's global model from its folder and writes the
    report: JSON with every curve, the sharpness figures, and the PNGs."""
    import importlib.util
    import json

    from tests.conftest import QUICKSTART, ROOT

    for strategy in ("FedAvg", "FedCross"):
        code, _, err = run_cli("fit", "--config", QUICKSTART, "--trainer.rounds", "2", "--trainer.local.max_epochs", "1",
                               "--trainer.strategy.class_path", f"flcore.strategies.{strategy}",
                               "--trainer.name", strategy.lower())
        assert code == 0, err
    spec = importlib.util.spec_from_file_location("analyze", f"{ROOT}/benchmarks/analyze.py")
    analyze = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(analyze)
    out = tmp_path / "analysis"
    analyze.main([str(tmp_path / "runs" / "fedavg" / "version_0"), str(tmp_path / "runs" / "fedcross" / "version_0"),
                  "--out", str(out), "--subset", "200", "--sharpness-subset", "100", "--grid", "3",
                  "--power-iters", "3", "--hutchinson", "2"])
    report = json.loads((out / "analysis.json").read_text())
    assert set(report["runs"]) == {"fedavg", "fedcross"} and list(report["interpolation"]) == ["fedavg -> fedcross"]
    for entry in report["runs"].values():
        assert len(entry["train_2d"]["loss"]) == 3 and len(entry["train_2d"]["loss"][0]) == 3
        assert entry["train_1d"]["alpha"] == [-1.0, 0.0, 1.0] and entry["top_eigenvalue"] > 0
    for png in ("landscape_1d.png", "landscape_2d.png", "interpolation.png"):
        assert (out / png).stat().st_size > 1000


def test_model_geometry_hand_computed():
    from flcore.functional import model_geometry

    states = [{"w": torch.tensor([1.0, 0.0]), "bn.running_mean": torch.tensor([9.0])},
              {"w": torch.tensor([0.0, 2.0]), "bn.running_mean": torch.tensor([-9.0])},
              {"w": torch.tensor([1.0, 2.0]), "bn.running_mean": torch.tensor([0.0])}]
    geo = model_geometry(states)  # running statistics are not trained weights: left out
    assert geo["cosine"][0, 1] == pytest.approx(0.0) and geo["cosine"][0, 2] == pytest.approx(1 / math.sqrt(5))
    assert geo["distance"][0, 1] == pytest.approx(math.sqrt(5)) and geo["distance"][1, 2] == pytest.approx(1.0)
    mean = torch.tensor([2 / 3, 4 / 3])
    expected = [float((s["w"] - mean).norm()) for s in states]
    assert geo["to_mean"].tolist() == pytest.approx(expected)
    assert torch.all(geo["distance"].diagonal() == 0)


def test_model_stats_are_logged_every_n_rounds(tmp_path):
    from lightning import seed_everything

    from datamodules import Digits
    from flcore import FederatedTrainer
    from flcore.strategies import FedAvg, FedCross
    from lightning_modules import ClientModule

    for strategy, middleware in ((FedCross(alpha=0.9), True), (FedAvg(), False)):
        seed_everything(0)
        trainer = FederatedTrainer(strategy=strategy, rounds=2, clients_per_round=3, local={"max_epochs": 1},
                                   log_dir=str(tmp_path), model_stats_every=2)
        trainer.fit(ClientModule(CNN(1, 10, 8, channels=(4, 8), hidden=16)), Digits(num_clients=4))
        first, second = trainer.history
        assert not any(k.startswith("analysis/") for k in first)
        assert 0 < second["analysis/client_drift_mean"] <= second["analysis/client_drift_max"]
        assert ("analysis/middleware_cos_mean" in second) == middleware
        if middleware:  # alpha = 0.9 keeps the three models apart after cross-aggregation
            assert -1 <= second["analysis/middleware_cos_min"] <= second["analysis/middleware_cos_mean"] < 1
            assert 0 < second["analysis/middleware_to_mean_mean"] <= second["analysis/middleware_to_mean_max"]
