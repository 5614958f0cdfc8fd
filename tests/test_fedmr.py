from collections import Counter

import numpy as np
import pytest
import torch

from flcore.functional import module_groups, recombine
from flcore.strategies import ClientResult, FedMR
from lightning_modules.models import ResNet20


def _bn_models(k):
    return [{
        "conv.weight": torch.full((2, 2), float(i)),
        "conv.bias": torch.full((2,), float(i)),
        "bn.weight": torch.full((2,), float(i)),
        "bn.bias": torch.full((2,), float(i)),
        "bn.running_mean": torch.full((2,), float(i)),
        "bn.running_var": torch.full((2,), float(i)),
        "bn.num_batches_tracked": torch.tensor(i),
        "fc.weight": torch.full((3, 2), float(i)),
    } for i in range(k)]


@pytest.mark.parametrize("unit", ["key", "module"])
def test_recombination_is_a_permutation_per_key(unit):
    models = _bn_models(6)
    out, sources = recombine(models, torch.Generator().manual_seed(1), unit)
    assert len(out) == 6
    for key in models[0]:
        assert sorted(sources[key]) == list(range(6))
        for i in range(6):
            assert out[i][key] is models[sources[key][i]][key]  # each uploaded layer used exactly once
        assert Counter(int(o[key].reshape(-1)[0]) for o in out) == Counter(range(6))


def test_module_unit_moves_weight_bias_and_buffers_together():
    models = _bn_models(5)
    out, sources = recombine(models, torch.Generator().manual_seed(3), "module")
    for prefix in ("conv", "bn"):
        keys = [k for k in models[0] if k.startswith(prefix + ".")]
        assert len({tuple(sources[k]) for k in keys}) == 1
    for o in out:
        vals = {o[k].reshape(-1)[0].item() for k in o if k.startswith("bn.")}
        assert len(vals) == 1


def test_key_unit_shuffles_each_entry_independently():
    models = _bn_models(8)
    _, sources = recombine(models, torch.Generator().manual_seed(0), "key")
    assert len({tuple(v) for v in sources.values()}) > 1


def test_recombination_deterministic_under_seed():
    models = _bn_models(5)
    a = recombine(models, torch.Generator().manual_seed(9))[1]
    b = recombine(models, torch.Generator().manual_seed(9))[1]
    c = recombine(models, torch.Generator().manual_seed(10))[1]
    assert a == b and a != c


def test_module_groups_on_resnet20():
    keys = list(ResNet20().state_dict().keys())
    groups = module_groups(keys)
    assert sum(len(g) for g in groups) == len(keys)
    bn = next(g for g in groups if g[0].startswith("bn1."))
    assert bn == ["bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"]


def _results(values, counts):
    return [ClientResult(cid=i, slot=i, state={"w": torch.tensor([v])}, num_samples=n)
            for i, (v, n) in enumerate(zip(values, counts))]


def test_fedmr_two_stage_training():
    s = FedMR(first_stage_rounds=1)
    state = s.initialize({"w": torch.tensor([0.0])}, 3)
    state = s.aggregate_fit(0, _results([1.0, 2.0, 6.0], [1, 1, 2]), state, np.random.default_rng(0))
    assert [m["w"].item() for m in state["models"]] == [3.75, 3.75, 3.75]  # FedAvg stage
    state = s.aggregate_fit(1, _results([1.0, 2.0, 6.0], [1, 1, 2]), state, np.random.default_rng(0))
    assert sorted(m["w"].item() for m in state["models"]) == [1.0, 2.0, 6.0]  # recombined
    assert s.global_model(state)["w"].item() == pytest.approx(3.0)  # unweighted mean (Eq. 5)


def test_fedmr_without_recombination_keeps_trained_models():
    s = FedMR(recombine=False)
    state = s.initialize({"w": torch.tensor([0.0])}, 3)
    state = s.aggregate_fit(0, _results([1.0, 2.0, 6.0], [1, 1, 1]), state, np.random.default_rng(0))
    assert [m["w"].item() for m in state["models"]] == [1.0, 2.0, 6.0]


def test_fedmr_dispatch_is_a_random_assignment():
    s = FedMR()
    state = s.initialize({"w": torch.tensor([0.0])}, 4)
    orders = {tuple(t.cid for t in s.configure_fit(0, [1, 2, 3, 4], state, np.random.default_rng(seed)))
              for seed in range(10)}
    assert all(sorted(o) == [1, 2, 3, 4] for o in orders) and len(orders) > 1


def test_fedmr_bad_input():
    with pytest.raises(ValueError, match="unit"):
        FedMR(unit="layer")
    with pytest.raises(ValueError, match="first_stage_rounds"):
        FedMR(first_stage_rounds=-1)
    with pytest.raises(ValueError, match="clients_per_round"):
        FedMR().validate(10, 1)
