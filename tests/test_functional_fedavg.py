import pytest
import torch

from flcore.functional import mix, state_bytes, weighted_average
from flcore.strategies import ClientResult, FedAvg


def _bn_state(w, mean, var, n):
    return {
        "conv.weight": torch.tensor([[w, 2 * w]]),
        "bn.running_mean": torch.tensor([mean]),
        "bn.running_var": torch.tensor([var]),
        "bn.num_batches_tracked": torch.tensor(n, dtype=torch.long),
    }


def test_weighted_average_hand_computed_with_buffers():
    a = _bn_state(1.0, 0.0, 1.0, 10)
    b = _bn_state(4.0, 3.0, 4.0, 13)
    out = weighted_average([a, b], [1, 2])  # weights 1/3, 2/3
    assert torch.allclose(out["conv.weight"], torch.tensor([[3.0, 6.0]]))
    assert torch.allclose(out["bn.running_mean"], torch.tensor([2.0]))
    assert torch.allclose(out["bn.running_var"], torch.tensor([3.0]))
    # integer buffer: weighted mean 12.0 -> rounded, stays int64
    assert out["bn.num_batches_tracked"].dtype == torch.long
    assert out["bn.num_batches_tracked"].item() == 12


def test_integer_buffer_rounds_to_nearest():
    t = mix([torch.tensor(1), torch.tensor(2)], [0.5, 0.5])  # 1.5 -> 2 (round half to even)
    assert t.dtype == torch.int64 and t.item() == 2
    t = mix([torch.tensor(1), torch.tensor(4)], [0.75, 0.25])  # 1.75 -> 2
    assert t.item() == 2


def test_weighted_average_keeps_dtype_and_does_not_mutate():
    a = {"w": torch.ones(3, dtype=torch.float16)}
    b = {"w": torch.zeros(3, dtype=torch.float16)}
    out = weighted_average([a, b], [3, 1])
    assert out["w"].dtype == torch.float16
    assert torch.allclose(out["w"].float(), torch.full((3,), 0.75))
    assert torch.equal(a["w"], torch.ones(3, dtype=torch.float16))


@pytest.mark.parametrize("weights", [[0, 0], [1, -1], [1]])
def test_weighted_average_bad_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        weighted_average([{"w": torch.ones(1)}, {"w": torch.ones(1)}], weights)


def test_weighted_average_mismatched_keys():
    with pytest.raises(ValueError, match="keys differ"):
        weighted_average([{"w": torch.ones(1)}, {"v": torch.ones(1)}], [1, 1])


def test_fedavg_strategy_round():
    init = _bn_state(0.0, 0.0, 1.0, 0)
    s = FedAvg()
    state = s.initialize(init, 2)
    tasks = s.configure_fit(0, [3, 5], state, None)
    assert [t.cid for t in tasks] == [3, 5] and all(t.state is state["global"] for t in tasks)
    results = [ClientResult(3, 0, _bn_state(1.0, 1.0, 1.0, 4), 30), ClientResult(5, 1, _bn_state(2.0, 5.0, 2.0, 8), 10)]
    state = s.aggregate_fit(0, results, state, None)
    g = s.global_model(state)
    assert torch.allclose(g["conv.weight"], torch.tensor([[1.25, 2.5]]))
    assert torch.allclose(g["bn.running_mean"], torch.tensor([2.0]))
    assert torch.allclose(g["bn.running_var"], torch.tensor([1.25]))
    assert g["bn.num_batches_tracked"].item() == 5


def test_state_bytes():
    assert state_bytes({"a": torch.zeros(10), "b": torch.zeros(2, dtype=torch.long)}) == 56
