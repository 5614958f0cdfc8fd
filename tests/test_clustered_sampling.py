import numpy as np
import pytest
import torch

from flcore.samplers import ClusteredSampler, clustered_distributions
from flcore.samplers.clustered import update_similarity
from flcore.strategies import ClientResult, ClientTask


def test_one_client_per_cluster_on_hand_built_similarity():
    # three clear groups of two identical clients; equal weights; m = 3
    updates = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=float)
    sim = update_similarity(updates, "cosine")
    dist = clustered_distributions(sim, np.ones(6), 3, np.random.default_rng(0))
    groups = {frozenset(np.flatnonzero(row > 0)) for row in dist}
    assert groups == {frozenset({0, 1}), frozenset({2, 3}), frozenset({4, 5})}
    assert np.allclose(dist.sum(1), 1.0)
    sampler = ClusteredSampler()
    sampler.setup([10] * 6)
    sampler.updates = torch.tensor(updates, dtype=torch.float32)
    for seed in range(20):
        picked = sampler.sample(0, 6, 3, np.random.default_rng(seed))
        assert sorted(c // 2 for c in picked) == [0, 1, 2]  # one client per cluster


def test_distributions_respect_client_weights():
    rng = np.random.default_rng(3)
    updates = rng.normal(size=(20, 8))
    weights = rng.integers(5, 100, size=20).astype(float)
    m = 5
    dist = clustered_distributions(update_similarity(updates, "L2"), weights, m, rng)
    assert dist.shape == (m, 20) and (dist >= 0).all()
    assert np.allclose(dist.sum(1), 1.0)
    assert np.allclose(dist.sum(0), m * weights / weights.sum(), atol=1e-8)  # sum_k r_k,i = m p_i


def test_similarity_measures_hand_computed():
    u = np.array([[3.0, 4.0], [0.0, 0.0], [3.0, 0.0]])
    cos = update_similarity(u, "cosine")
    assert cos[0, 2] == pytest.approx(0.6) and cos[0, 1] == 0.0
    assert update_similarity(u, "L2")[0, 2] == pytest.approx(4.0)
    assert update_similarity(u, "L1")[0, 1] == pytest.approx(7.0)
    with pytest.raises(ValueError, match="measure"):
        update_similarity(u, "kl")


def test_observe_records_updates_and_survives_state_dict():
    sampler = ClusteredSampler()
    sampler.setup([5, 5, 5])
    x = {"w": torch.zeros(2), "n": torch.tensor(0)}
    tasks = [ClientTask(cid=1, state=x, slot=0)]
    results = [ClientResult(1, 0, {"w": torch.tensor([1.0, -2.0]), "n": torch.tensor(3)}, 5)]
    sampler.observe(tasks, results)
    assert sampler.updates.shape == (3, 2) and sampler.updates[1].tolist() == [1.0, -2.0]
    other = ClusteredSampler()
    other.setup([5, 5, 5])
    other.load_state_dict(sampler.state_dict())
    assert torch.equal(other.updates, sampler.updates)
    with pytest.raises(ValueError, match="measure"):
        ClusteredSampler("kl")


def test_clustered_sampling_cli_run(run_cli, tmp_path):
    from tests.conftest import QUICKSTART

    code, out, err = run_cli("fit", "--config", QUICKSTART, "--trainer.rounds", "2", "--trainer.local.max_epochs", "1",
                             "--trainer.strategy.class_path", "flcore.strategies.FedAvg",
                             "--trainer.sampler.class_path", "flcore.samplers.ClusteredSampler")
    assert code == 0, err
    assert "finished 2 rounds" in out
