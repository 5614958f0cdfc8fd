import math

import numpy as np
import pytest
import torch

from flcore.functional import (
    cross_aggregate,
    dynamic_alpha,
    in_order_partners,
    select_collaborators,
    similarity_matrix,
)
from flcore.strategies import ClientResult, FedCross


def _random_states(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "bn.running_mean": torch.randn(4, generator=g),
        "bn.running_var": torch.rand(4, generator=g) + 0.5,
        "fc.weight": torch.randn(10, 36, generator=g),
    } for _ in range(k)]


def _sum(states):
    return {key: sum(s[key].double() for s in states) for key in states[0]}


@pytest.mark.parametrize("rnd", [0, 1, 2, 7])
@pytest.mark.parametrize("num_partners", [1, 3])
def test_in_order_cross_aggregation_keeps_the_sum(rnd, num_partners):
    states = _random_states(5, seed=rnd)
    out = cross_aggregate(states, in_order_partners(5, rnd, num_partners), alpha=0.8)
    before, after = _sum(states), _sum(out)
    for key in before:
        assert torch.allclose(before[key], after[key], atol=1e-5)
    assert not torch.allclose(out[0]["fc.weight"], states[0]["fc.weight"])


def test_alpha_one_leaves_models_unchanged():
    states = _random_states(4)
    out = cross_aggregate(states, in_order_partners(4, 3), alpha=1.0)
    for s, o in zip(states, out):
        assert all(torch.equal(s[k], o[k]) for k in s)


def test_alpha_half_in_order_averages_pairs_hand_computed():
    states = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}, {"w": torch.tensor([5.0, 0.0])}]
    partners = in_order_partners(3, 0)  # r = 0: partner of i is (i + 1) % 3
    assert partners == [[1], [2], [0]]
    out = cross_aggregate(states, partners, alpha=0.5)
    assert out[0]["w"].tolist() == [2.0, 4.0]
    assert out[1]["w"].tolist() == [4.0, 3.0]
    assert out[2]["w"].tolist() == [3.0, 1.0]


def test_cross_aggregation_rounds_integer_buffers():
    states = [{"n": torch.tensor(10)}, {"n": torch.tensor(20)}]
    out = cross_aggregate(states, [[1], [0]], alpha=0.75)
    assert out[0]["n"].dtype == torch.int64 and out[0]["n"].item() == 12  # 12.5 -> 12 (half to even)
    assert out[1]["n"].item() == 18  # 17.5 -> 18


def test_in_order_partner_formula():
    k = 5
    for r in range(12):
        assert in_order_partners(k, r) == [[(i + (r % (k - 1) + 1)) % k] for i in range(k)]
    # over K-1 consecutive rounds each model meets every other model exactly once
    met = {i: {in_order_partners(k, r)[i][0] for r in range(k - 1)} for i in range(k)}
    assert all(met[i] == set(range(k)) - {i} for i in range(k))


def test_propeller_lists():
    assert in_order_partners(4, 0, 2) == [[1, 2], [2, 3], [3, 0], [0, 1]]
    assert in_order_partners(4, 1, 2) == [[2, 3], [3, 0], [0, 1], [1, 2]]
    with pytest.raises(ValueError, match="num_partners"):
        in_order_partners(4, 0, 4)


def test_propeller_weights_hand_computed():
    states = [{"w": torch.tensor([0.0])}, {"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}]
    out = cross_aggregate(states, [[1, 2], [2, 0], [0, 1]], alpha=0.5)
    # (0.5 * v_i + 0.5 * sum(partners)) / (0.5 + 2 * 0.5) = mean of all three
    assert all(o["w"].item() == pytest.approx(1.0) for o in out)


def test_similarity_matrix_true_cosine_hand_computed():
    states = [{"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0])},
              {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([1.0])},
              {"a": torch.tensor([-1.0, 0.0]), "b": torch.tensor([-1.0])}]
    sim = similarity_matrix(states, "model")
    # model 0 = (1, 0, 1), model 1 = (0, 1, 1), model 2 = (-1, 0, -1)
    expected = torch.tensor([[1.0, 0.5, -1.0], [0.5, 1.0, -0.5], [-1.0, -0.5, 1.0]], dtype=torch.float64)
    assert sim.dtype == torch.float64 and torch.allclose(sim, expected)
    lay = similarity_matrix(states, "layerwise")
    # per key: a -> [[1,0,-1],[0,1,0],[-1,0,1]], b -> [[1,1,-1],[1,1,-1],[-1,-1,1]]
    expected_l = torch.tensor([[2.0, 1.0, -2.0], [1.0, 2.0, -1.0], [-2.0, -1.0, 2.0]], dtype=torch.float64)
    assert torch.allclose(lay, expected_l)


def test_similarity_chunking_and_skipped_keys():
    states = _random_states(4, seed=3)
    full = similarity_matrix(states, "model")
    chunked = similarity_matrix(states, "model", chunk_elems=16)
    assert torch.allclose(full, chunked, atol=1e-12)
    flat = torch.stack([torch.cat([s[k].reshape(-1) for k in ("conv.weight", "conv.bias", "fc.weight")]).double()
                        for s in states])
    ref = torch.nn.functional.cosine_similarity(flat[:, None], flat[None, :], dim=-1)
    assert torch.allclose(full, ref, atol=1e-10)  # BatchNorm running statistics are not weights


def test_zero_model_similarity_is_zero():
    states = [{"w": torch.zeros(3)}, {"w": torch.ones(3)}]
    assert similarity_matrix(states)[0, 1].item() == 0.0


def test_lowest_and_highest_selection_on_hand_built_matrix():
    sim = torch.tensor([[-5.0, 0.9, 0.1, 0.5],
                        [0.9, -5.0, 0.3, 0.2],
                        [0.1, 0.3, -5.0, 0.8],
                        [0.5, 0.2, 0.8, -5.0]])  # diagonal lowest on purpose: self must never be chosen
    assert select_collaborators(sim, "lowest_similarity") == [2, 3, 0, 1]
    assert select_collaborators(sim, "highest_similarity") == [1, 0, 3, 2]
    with pytest.raises(ValueError, match="selection"):
        select_collaborators(sim, "random")


def test_dynamic_alpha_schedule_values():
    assert dynamic_alpha(0.99, 0, 100) == 0.5
    assert dynamic_alpha(0.99, 50, 100) == pytest.approx(0.745)
    assert dynamic_alpha(0.99, 99, 100) == pytest.approx(0.5 + 0.49 * 0.99)
    assert dynamic_alpha(0.99, 100, 100) == 0.99
    assert dynamic_alpha(0.99, 3, 0) == 0.99


def test_pm_da_schedule_of_the_strategy():
    s = FedCross(alpha=0.99, propeller_rounds=50, dynamic_alpha_rounds=50, first_stage_rounds=10, num_propellers=3)
    states = _random_states(5)
    assert s.partners_at(10, states) == in_order_partners(5, 10, 3)  # PM from the end of the first stage
    assert s.partners_at(59, states) == in_order_partners(5, 59, 3)
    assert all(len(p) == 1 for p in s.partners_at(60, states))  # then one collaborator
    assert s.alpha_at(10) == 0.99 and s.alpha_at(59) == 0.99  # PM keeps the target alpha
    assert s.alpha_at(60) == 0.5 and s.alpha_at(85) == pytest.approx(0.745)  # DA: rounds 60..109
    assert s.alpha_at(110) == 0.99


def test_lowest_similarity_strategy_round():
    s = FedCross(alpha=0.9, selection="lowest_similarity")
    base = {"w": torch.tensor([1.0, 0.0])}
    state = s.initialize(base, 3)
    tasks = s.configure_fit(0, [4, 7, 9], state, np.random.default_rng(0))
    assert sorted(t.cid for t in tasks) == [4, 7, 9] and [t.slot for t in tasks] == [0, 1, 2]
    trained = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 0.2])]
    results = [ClientResult(t.cid, t.slot, {"w": trained[t.slot].clone()}, 10) for t in tasks]  # handed over
    state = s.aggregate_fit(0, results, state, np.random.default_rng(0))
    # lowest cosine: 0 <-> 2, 1 <-> 2, 2 <-> 0
    expect = [0.9 * trained[0] + 0.1 * trained[2], 0.9 * trained[1] + 0.1 * trained[2], 0.9 * trained[2] + 0.1 * trained[0]]
    for got, want in zip(state["models"], expect):
        assert torch.allclose(got["w"], want)
    g = s.global_model(state)["w"]
    assert torch.allclose(g, sum(expect) / 3)


def test_failed_slot_keeps_previous_model():
    s = FedCross(alpha=0.5, selection="in_order")
    state = s.initialize({"w": torch.tensor([0.0])}, 3)
    results = [ClientResult(1, 0, {"w": torch.tensor([3.0])}, 5), ClientResult(2, 1, {"w": torch.tensor([6.0])}, 5)]
    state = s.aggregate_fit(0, results, state, np.random.default_rng(0))  # slot 2 failed: keeps 0.0
    assert [m["w"].item() for m in state["models"]] == [4.5, 3.0, 1.5]


def test_first_stage_is_fedavg():
    s = FedCross(first_stage_rounds=2)
    state = s.initialize({"w": torch.tensor([0.0])}, 2)
    results = [ClientResult(0, 0, {"w": torch.tensor([1.0])}, 1), ClientResult(1, 1, {"w": torch.tensor([4.0])}, 3)]
    state = s.aggregate_fit(1, results, state, np.random.default_rng(0))
    assert [m["w"].item() for m in state["models"]] == [3.25, 3.25]


@pytest.mark.parametrize("kwargs,field", [
    ({"alpha": 1.0}, "alpha"), ({"alpha": 0.4}, "alpha"), ({"selection": "random"}, "selection"),
    ({"similarity": "euclid"}, "similarity"), ({"first_stage_rounds": -1}, "first_stage_rounds"),
    ({"propeller_rounds": -5}, "propeller_rounds"), ({"dynamic_alpha_rounds": -1}, "dynamic_alpha_rounds"),
])
def test_bad_hyperparameters(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FedCross(**kwargs)


def test_k_and_propeller_count_validated():
    with pytest.raises(ValueError, match="clients_per_round"):
        FedCross().validate(10, 1)
    with pytest.raises(ValueError, match="num_propellers"):
        FedCross(propeller_rounds=5, num_propellers=3).validate(10, 3)
    FedCross(propeller_rounds=5, num_propellers=2).validate(10, 3)
    assert math.isclose(FedCross().alpha, 0.99)


def test_cross_aggregate_inplace_equals_pure_and_reuses_tensors():
    g = torch.Generator().manual_seed(3)
    states = [{"w": torch.randn(4, 3, generator=g), "n": torch.tensor(i)} for i in range(4)]
    copies = [{k: v.clone() for k, v in s.items()} for s in states]
    partners = [[2], [3], [0], [1]]
    pure = cross_aggregate(copies, partners, alpha=0.9)
    ptrs = [s["w"].data_ptr() for s in states]
    out = cross_aggregate(states, partners, alpha=0.9, inplace=True)
    assert [s["w"].data_ptr() for s in out] == ptrs  # written into the uploaded tensors
    for a, b in zip(out, pure):
        assert torch.allclose(a["w"], b["w"]) and torch.equal(a["n"], b["n"])


def test_fedcross_aggregate_leaves_failed_slot_model_of_previous_state_untouched():
    strategy = FedCross(alpha=0.75, selection="in_order")
    base = {"w": torch.zeros(3)}
    state = strategy.initialize(base, 3)
    results = [ClientResult(cid=c, slot=c, state={"w": torch.full((3,), float(c + 1))}, num_samples=1) for c in (0, 1)]
    new = strategy.aggregate_fit(1, results, state, np.random.default_rng(0))
    assert torch.equal(state["models"][2]["w"], torch.zeros(3))  # previous state intact
    assert torch.allclose(sum(m["w"] for m in new["models"]), torch.full((3,), 3.0))  # sum kept: 1 + 2 + 0


def test_authors_similarity_sums_pair_cosines_last_pair_twice():
    """similarity='authors': cosines of consecutive key pairs (buffers included), summed, the last
    pair counted twice; checked against a hand computation on three keys."""
    from flcore.functional import similarity_matrix

    g = torch.Generator().manual_seed(0)
    states = [{"a.weight": torch.randn(3, 2, generator=g), "a.bias": torch.randn(3, generator=g),
               "bn.running_mean": torch.randn(4, generator=g)} for _ in range(3)]

    def cos(u, v):
        return float(u @ v / (u.norm() * v.norm()))

    sim = similarity_matrix(states, "authors")
    for i in range(3):
        for j in range(3):
            p1 = [torch.cat([s["a.weight"].flatten(), s["a.bias"]]) for s in (states[i], states[j])]
            p2 = [s["bn.running_mean"] for s in (states[i], states[j])]
            assert sim[i, j].item() == pytest.approx(cos(*p1) + 2 * cos(*p2), rel=1e-5)


def test_uniform_first_stage_is_the_unweighted_mean():
    from flcore.messages import ClientResult

    s = FedCross(first_stage_rounds=1, first_stage_weighting="uniform")
    state = s.initialize({"w": torch.zeros(2)}, 2)
    results = [ClientResult(cid=0, slot=0, state={"w": torch.tensor([1.0, 1.0])}, num_samples=1),
               ClientResult(cid=1, slot=1, state={"w": torch.tensor([3.0, 5.0])}, num_samples=3)]
    new = s.aggregate_fit(0, results, state, np.random.default_rng(0))
    assert torch.allclose(new["models"][0]["w"], torch.tensor([2.0, 3.0]))
    weighted = FedCross(first_stage_rounds=1).aggregate_fit(0, results, state, np.random.default_rng(0))
    assert torch.allclose(weighted["models"][1]["w"], torch.tensor([2.5, 4.0]))
    with pytest.raises(ValueError, match="first_stage_weighting"):
        FedCross(first_stage_weighting="median")


def test_equal_propeller_weighting_averages_model_and_propellers():
    s = FedCross(alpha=0.99, propeller_rounds=2, num_propellers=2, propeller_weighting="equal")
    ups = [{"w": torch.tensor([float(i)])} for i in range(4)]
    out = s.combine(0, [dict(u) for u in ups], np.random.default_rng(0))
    partners = s.partners_at(0, ups)
    for i, p in enumerate(partners):
        assert out[i]["w"].item() == pytest.approx((i + sum(p)) / 3)  # 1/(m+1) each
    assert s.alpha_at(2) == 0.99  # after the propeller stage
