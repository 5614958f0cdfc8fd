import numpy as np
import pytest

from datamodules import IID, Dirichlet, Shards, label_distribution

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 10 balanced classes


@pytest.mark.parametrize("part", [IID(), Dirichlet(0.5), Dirichlet(0.1, min_size=5), Shards(2)])
def test_every_sample_in_exactly_one_client(part):
    parts = part(LABELS, 20, np.random.default_rng(0))
    assert len(parts) == 20
    allidx = np.concatenate(parts)
    assert len(allidx) == len(LABELS)
    assert np.array_equal(np.sort(allidx), np.arange(len(LABELS)))


@pytest.mark.parametrize("part", [IID(), Dirichlet(0.5), Shards(2)])
def test_same_seed_same_partition_other_seed_differs(part):
    a = part(LABELS, 20, np.random.default_rng(7))
    b = part(LABELS, 20, np.random.default_rng(7))
    c = part(LABELS, 20, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def _dominant_share(parts):
    dist = label_distribution(LABELS, parts, 10)
    return float(np.mean(dist.max(1) / dist.sum(1)))


def test_small_beta_gives_skewed_labels():
    rng = np.random.default_rng(0)
    skewed = _dominant_share(Dirichlet(0.1, min_size=5)(LABELS, 20, rng))
    mild = _dominant_share(Dirichlet(100.0)(LABELS, 20, rng))
    iid = _dominant_share(IID()(LABELS, 20, rng))
    assert skewed > 0.5 > mild
    assert mild < 0.3 and iid < 0.3


def test_dirichlet_min_size_respected():
    parts = Dirichlet(0.1, min_size=10)(LABELS, 20, np.random.default_rng(3))
    assert min(len(p) for p in parts) >= 10


def test_shards_give_at_most_two_labels_per_client():
    parts = Shards(2)(LABELS, 50, np.random.default_rng(0))
    dist = label_distribution(LABELS, parts, 10)
    assert ((dist > 0).sum(1) <= 2).all()


def test_label_distribution_counts():
    labels = np.array([0, 0, 1, 2, 2, 2])
    dist = label_distribution(labels, [np.array([0, 2]), np.array([1, 3, 4, 5])], 3)
    assert dist.tolist() == [[1, 1, 0], [1, 0, 3]]


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_beta_must_be_positive(beta):
    with pytest.raises(ValueError, match="beta"):
        Dirichlet(beta)


def test_too_many_clients():
    with pytest.raises(ValueError, match="num_clients"):
        IID()(LABELS[:10], 11, np.random.default_rng(0))
