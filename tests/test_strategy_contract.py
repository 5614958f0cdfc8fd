"""One contract, checked on every strategy flcore ships (found in ``flcore/strategies/``):

* its declared pairing holds: the trainer accepts the strategy with its own client objective, and
  refuses the plain ``ClientModule`` exactly when the strategy declares an objective;
* ``aggregate_fit`` never mutates the server state it is given (the trainer keeps it for an
  interrupt checkpoint); the results' tensors are handed over and may be reused;
* ``aggregate_fit`` with no results (every client failed) returns the state unchanged;
* the server state survives a checkpoint round trip under ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil

import pytest
import torch
from lightning import seed_everything

import flcore.strategies as strategies
from datamodules import Digits
from flcore import FederatedTrainer
from flcore.checkpoint import load_checkpoint
from flcore.errors import ConfigError
from flcore.strategies.base import HeterogeneousStrategy, Strategy
from lightning_modules import ClientModule, FedNovaModule, FedProxModule, MoonModule, ScaffoldModule, ScaleFLModule
from lightning_modules.models import CNN, HeteroResNet, ScaleFLResNet, WidthScaledResNet


def _cnn():
    return CNN(1, 10, 8, channels=(4, 8), hidden=16)


def _family():
    return HeteroResNet("resnet10", 1, 10, 4, "cifar")


def _widths():
    return WidthScaledResNet("resnet10", 1, 10, width=2, stem="cifar", rates=(1.0, 0.5))


def _scalefl():
    return ScaleFLResNet("resnet10", 1, 10, width=2, stem="cifar", rates=(1.0, 0.5), exits=(4, 2), exit_convs=1)


DEPTHS, WIDTHS, SPLITS = ["resnet10", "resnet14"], ["w1", "w0.5"], ["e4w1", "e2w0.5"]


def shipped_strategies() -> dict[str, type[Strategy]]:
    """Every concrete strategy defined in a module of ``flcore/strategies/`` (found by walking
    the package: a new strategy file joins the contract without any table being edited)."""
    found = {}
    for info in pkgutil.iter_modules(strategies.__path__):
        module = importlib.import_module(f"{strategies.__name__}.{info.name}")
        for name, cls in vars(module).items():
            if (inspect.isclass(cls) and issubclass(cls, Strategy) and cls.__module__ == module.__name__
                    and not inspect.isabstract(cls) and name == cls.__name__):
                found[name] = cls
    return found


def default_case(cls: type[Strategy]):
    """``(objective factory, architectures)`` from what the strategy declares: its
    ``client_objective`` (else the plain ``ClientModule``) on a tiny CNN, or on a depth family
    of two architectures for a heterogeneous-only strategy."""
    objective = ClientModule
    if cls.client_objective is not None:
        module, _, name = cls.client_objective.rpartition(".")
        objective = getattr(importlib.import_module(module), name)
    hetero = issubclass(cls, HeterogeneousStrategy) and not cls.runs_homogeneous
    return cls, (lambda: objective(_family() if hetero else _cnn())), DEPTHS if hetero else None


#: Cases that differ from :func:`default_case`: a net of another family (HeteroFL and FedRolex
#: slice widths, ScaleFL splits depth and width), smaller objective settings, and the strategies
#: that serve both kinds of run also on a family of two.
OVERRIDES = {
    "FedProx": (strategies.FedProx, lambda: FedProxModule(_cnn(), mu=0.1), None),
    "Moon": (strategies.Moon, lambda: MoonModule(_cnn(), projection_dim=8), None),
    "HeteroScaffold": (strategies.Scaffold, lambda: ScaffoldModule(_family()), DEPTHS),  # Scaffold on a family of two
    "HeteroFedNova": (strategies.FedNova, lambda: FedNovaModule(_family()), DEPTHS),  # FedNova on a family of two
    "HeteroFL": (strategies.HeteroFL, lambda: ClientModule(_widths()), WIDTHS),
    "FedRolex": (strategies.FedRolex, lambda: ClientModule(_widths()), WIDTHS),
    "ScaleFL": (strategies.ScaleFL, lambda: ScaleFLModule(_scalefl()), SPLITS),
}
#: case name -> (strategy class, objective factory, architectures or None)
CASES = {**{name: default_case(cls) for name, cls in shipped_strategies().items()}, **OVERRIDES}


def _tensors(obj, prefix=""):
    """Every tensor inside nested dicts / lists, by path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


def _same(a, b) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_every_exported_strategy_is_discovered():
    exported = {getattr(strategies, name) for name in strategies.__all__
                if inspect.isclass(getattr(strategies, name)) and issubclass(getattr(strategies, name), Strategy)
                and not inspect.isabstract(getattr(strategies, name))}
    assert exported <= set(shipped_strategies().values())
    assert {"FedAvg", "Scaffold", "FedCross", "FedMR", "FedIN"} <= set(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_strategy_contract(tmp_path, name):
    cls, make_module, archs = CASES[name]
    strategy = cls()
    calls = []
    aggregate = strategy.aggregate_fit

    def checked_aggregate(rnd, results, state, rng):
        before = {k: v.clone() for k, v in _tensors(state).items()}
        unchanged = aggregate(rnd, [], state, rng)
        assert _same(unchanged, state), "aggregate_fit([]) must return the state unchanged"
        new = aggregate(rnd, results, state, rng)
        after = _tensors(state)
        if not trainer._parked:  # (the trainer lent the old models' memory to the results: not the strategy's doing)
            assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before), \
                "aggregate_fit mutated the server state it was given"
        calls.append(new)
        return new

    strategy.aggregate_fit = checked_aggregate
    make_accumulator = strategy.accumulator

    def checked_accumulator(rnd, state, weights):  # streaming aggregation keeps the same contract
        acc = make_accumulator(rnd, state, weights)
        if acc is not None:
            acc.finish = functools.partial(checked_aggregate_with, acc.finish)
        return acc

    def checked_aggregate_with(finish, rnd, results, state, rng):
        nonlocal aggregate
        aggregate, saved = finish, aggregate
        try:
            return checked_aggregate(rnd, results, state, rng)
        finally:
            aggregate = saved

    strategy.accumulator = checked_accumulator
    seed_everything(0)
    trainer = FederatedTrainer(strategy=strategy, rounds=2, clients_per_round=3, local={"max_epochs": 1},
                               log_dir=str(tmp_path), name=name, architectures=archs)
    public = 64 if getattr(cls, "needs_public_data", False) else 0  # FedET distils on server-held inputs
    trainer.fit(make_module(), Digits(num_clients=4, batch_size=32, public_size=public))
    assert len(calls) == 2 and trainer.history[-1]["round/failed_clients"] == 0
    ckpt = load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")  # weights_only=True
    assert _same(ckpt["strategy_state"], calls[-1])

    plain = ClientModule(make_module().net)  # the same net with the plain objective
    refused = FederatedTrainer(strategy=cls(), rounds=1, clients_per_round=3, log_dir=str(tmp_path / "p"),
                               architectures=archs)
    if cls.client_objective is None:
        refused._check(plain, Digits(num_clients=4, batch_size=32, public_size=public))
    else:
        with pytest.raises(ConfigError, match=f"trainer.strategy: .*{cls.__name__} needs model.class_path {cls.client_objective}"):
            refused._check(plain, Digits(num_clients=4, batch_size=32, public_size=public))
