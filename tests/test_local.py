import os
import pytest
import lightning as L
import torch

from datamodules import Digits
from flcore.local import LocalRunner
from flcore.strategies import ClientTask
from lightning_modules import ClientModule
from lightning_modules.client import EarlierEpoch
from lightning_modules.models import CNN


class StepCounter(L.Callback):
    def __init__(self):
        self.steps = 0
        self.optimizers = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps += 1  # one optimizer step per mini-batch

    def on_train_start(self, trainer, pl_module):
        self.optimizers.append(id(trainer.optimizers[0]))
        assert not trainer.optimizers[0].state  # momentum buffers start empty


def test_reused_trainer_runs_exact_local_epochs_each_time():
    dm = Digits(num_clients=10, batch_size=20, seed=0)
    dm.setup()
    module = ClientModule(CNN(1, 10, 8))
    counter = StepCounter()
    runner = LocalRunner(module, dm, {"max_epochs": 3}, seed=0, callbacks=[counter])
    init = {k: v.clone() for k, v in module.net.state_dict().items()}
    for rnd, cid in enumerate([0, 1, 2]):
        before = counter.steps
        res = runner.fit(ClientTask(cid=cid, state=init), rnd)
        n = dm.client_sizes[cid]
        batches = -(-(n - (n % 20 == 1)) // 20)  # a trailing single-sample batch is dropped
        assert counter.steps - before == 3 * batches
        assert res.num_samples == dm.client_sizes[cid]
        assert "train_loss" in res.metrics
        assert not torch.equal(res.state["fc2.weight"], init["fc2.weight"])
    assert len(set(counter.optimizers)) == 3  # a fresh optimizer for every local update


def test_local_update_is_a_function_of_seed_round_client():
    dm = Digits(num_clients=10, batch_size=20, seed=0)
    dm.setup()
    module = ClientModule(CNN(1, 10, 8))
    runner = LocalRunner(module, dm, {"max_epochs": 1}, seed=3)
    init = {k: v.clone() for k, v in module.net.state_dict().items()}
    a = runner.fit(ClientTask(cid=4, state=init), 2)
    runner.fit(ClientTask(cid=5, state=init), 7)  # unrelated work in between
    b = runner.fit(ClientTask(cid=4, state=init), 2)
    c = runner.fit(ClientTask(cid=4, state=init), 3)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert not all(torch.equal(a.state[k], c.state[k]) for k in a.state)


def _runner(epochs=2, **local):
    dm = Digits(num_clients=10, batch_size=20, seed=0)
    dm.setup()
    module = ClientModule(CNN(1, 10, 8), optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    return dm, module, LocalRunner(module, dm, {"max_epochs": epochs, **local}, seed=1)


def test_group_fit_equals_one_fit_per_client():
    """Several clients in one Trainer.fit train exactly as with one fit each (weights loaded,
    momentum cleared and RNG reseeded per client)."""
    dm, module, runner = _runner()
    init = {k: v.clone() for k, v in module.net.state_dict().items()}
    tasks = [ClientTask(cid=c, state=init, slot=i) for i, c in enumerate([3, 0, 7])]
    group = runner.fit_many(tasks, 4)
    single = [runner.fit(t, 4) for t in tasks]
    for g, s in zip(group, single):
        assert (g.cid, g.slot, g.num_samples) == (s.cid, s.slot, s.num_samples)
        assert all(torch.equal(g.state[k], s.state[k]) for k in s.state)
        assert g.metrics == s.metrics


class _Epochs:
    """Several local epochs as one training-step item (not a collection, as LocalEpochs)."""

    def __init__(self, epochs):
        self.epochs = epochs

    def __iter__(self):
        return iter(self.epochs)


def test_train_metrics_are_the_last_local_epochs_sample_weighted_means():
    """Earlier epochs (EarlierEpoch) train but are not recorded; the metrics weight each
    mini-batch's loss by its size. lr = 0 keeps the net fixed, so the values can be computed by hand."""
    torch.manual_seed(0)
    module = ClientModule(CNN(1, 10, 8), optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    earlier = EarlierEpoch([(x[:8], y[:8])])
    last = [(x[8:13], y[8:13]), (x[13:], y[13:])]  # sizes 5 and 3
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([_Epochs([earlier, last])], batch_size=None, collate_fn=lambda b: b))
    with torch.no_grad():
        logits = module.net(x[8:])
        losses = [torch.nn.functional.cross_entropy(logits[:5], y[8:13]).item(),
                  torch.nn.functional.cross_entropy(logits[5:], y[13:]).item()]
        acc = (logits.argmax(1) == y[8:]).float().mean().item()
    metrics = module.train_metrics
    assert metrics["train_loss"] == pytest.approx((5 * losses[0] + 3 * losses[1]) / 8, rel=1e-6)
    assert metrics["train_acc"] == pytest.approx(acc)
    whole = torch.nn.functional.cross_entropy(module.net(x), y).item()
    assert metrics["train_loss"] != pytest.approx(whole, rel=1e-6)  # the earlier epoch is left out


class _Unreadable(Digits):
    def client_batches(self, cid, generator=None):
        if cid == 0:
            raise OSError("client 0 is unreadable")
        return super().client_batches(cid, generator)


def test_group_fit_isolates_a_failing_client():
    dm = _Unreadable(num_clients=10, batch_size=20, seed=0)
    dm.setup()
    module = ClientModule(CNN(1, 10, 8))
    runner = LocalRunner(module, dm, {"max_epochs": 1}, seed=1)
    init = {k: v.clone() for k, v in module.net.state_dict().items()}
    tasks = [ClientTask(cid=c, state=init, slot=i) for i, c in enumerate([3, 0, 7])]
    out = runner.fit_many(tasks, 0)
    assert out[1].reason == "OSError: client 0 is unreadable"
    alone = runner.fit(tasks[2], 0)
    assert all(torch.equal(out[2].state[k], alone.state[k]) for k in alone.state)
    assert out[0].num_samples == dm.client_sizes[3]


def test_gradient_accumulation_over_the_epoch_is_one_full_batch_step():
    """accumulate_grad_batches = batches per epoch: one SGD step on the mean of the (equal-size)
    mini-batch losses, i.e. w - lr * grad of the full-client loss (hand-computed)."""
    dm = Digits(num_clients=1, batch_size=40, seed=0)
    dm.setup()
    dm.client_indices = [dm.client_indices[0][:80]]  # two full mini-batches
    net = CNN(1, 10, 8, channels=(2, 4), hidden=8)
    module = ClientModule(net, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    runner = LocalRunner(module, dm, {"max_epochs": 1, "accumulate_grad_batches": 2}, seed=0)
    init = {k: v.clone() for k, v in net.state_dict().items()}
    res = runner.fit(ClientTask(cid=0, state=init), 0)
    net.load_state_dict(init)
    net.zero_grad()
    idx = torch.as_tensor(dm.client_indices[0])
    torch.nn.functional.cross_entropy(net(dm.x_train[idx]), dm.y_train[idx]).backward()
    for name, p in net.named_parameters():
        assert torch.allclose(res.state[name], init[name] - 0.1 * p.grad, atol=1e-6)


def test_gradient_clipping_bounds_each_step():
    dm = Digits(num_clients=10, batch_size=400, seed=0)
    dm.setup()
    net = CNN(1, 10, 8)
    module = ClientModule(net, optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    runner = LocalRunner(module, dm, {"max_epochs": 1, "gradient_clip_val": 1e-3}, seed=0)
    init = {k: v.clone() for k, v in net.state_dict().items()}
    res = runner.fit(ClientTask(cid=2, state=init), 0)  # one mini-batch: one step
    step = torch.cat([(res.state[n] - init[n]).flatten() for n, _ in net.named_parameters()])
    assert 0 < step.norm() <= 1e-3 * (1 + 1e-4)


class EpochWatcher(L.Callback):
    """Implements an epoch hook, so each client of a group fit gets a Lightning epoch of its own."""

    def __init__(self):
        self.ends = 0

    def on_train_epoch_end(self, trainer, pl_module):
        self.ends += 1


def test_epoch_hooks_see_every_client_and_training_is_the_same_either_way():
    """Without epoch or batch hooks a group is one Lightning epoch; with one (a callback's
    on_train_epoch_end) each client is an epoch of its own. The outcomes are identical."""
    dm = Digits(num_clients=10, batch_size=20, seed=0)
    dm.setup()
    make = lambda: ClientModule(CNN(1, 10, 8), optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    torch.manual_seed(0)
    plain_module = make()
    init = {k: v.clone() for k, v in plain_module.net.state_dict().items()}
    tasks = [ClientTask(cid=c, state=init, slot=i) for i, c in enumerate([3, 0, 7, 5])]
    plain = LocalRunner(plain_module, dm, {"max_epochs": 2}, seed=1).fit_many(tasks, 2)
    watcher = EpochWatcher()
    watched = LocalRunner(make(), dm, {"max_epochs": 2}, seed=1, callbacks=[watcher]).fit_many(tasks, 2)
    assert watcher.ends == len(tasks)
    for a, b in zip(plain, watched):
        assert (a.cid, a.slot, a.num_samples, a.metrics) == (b.cid, b.slot, b.num_samples, b.metrics)
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_fast_weight_loading_is_load_state_dict():
    """load_live copies into the net's own tensors (BatchNorm buffers included) exactly as
    load_state_dict; a state of the wrong keys or shapes gets load_state_dict's error."""
    from flcore.weights import live_state, load_live

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    net.to(memory_format=torch.channels_last)
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    other[1].running_mean.fill_(0.5)
    other[1].num_batches_tracked.fill_(7)
    state = other.state_dict()
    live = live_state(net)
    assert live is not None and live.keys() == state.keys()
    load_live(net, live, state)
    assert all(torch.equal(net.state_dict()[k], state[k]) for k in state)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)  # copied into, not replaced
    bad = dict(state, **{"3.weight": torch.zeros(3, 9)})
    with pytest.raises(RuntimeError, match="size mismatch for 3.weight"):
        load_live(net, live, bad)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_live(net, live, {k: v for k, v in state.items() if k != "3.bias"})
    net[3].register_load_state_dict_post_hook(lambda module, keys: None)
    assert live_state(net) is None  # hooks: always through load_state_dict


def test_a_non_finite_weight_fails_the_client_and_a_large_one_does_not():
    from flcore.weights import check_finite
    from flcore.messages import ClientFailure, ClientResult

    def result(w):
        return ClientResult(cid=3, slot=0, state={"w": w, "n": torch.tensor(4)}, num_samples=5,
                            metrics={"train_loss": 0.1}, payload={})

    assert isinstance(check_finite(result(torch.tensor([1.0, float("nan")]))), ClientFailure)
    assert "non-finite w" in check_finite(result(torch.tensor([float("inf"), 0.0]))).reason
    big = result(torch.full((4,), 3e38))  # finite, but its sum overflows float32
    assert check_finite(big) is big


def test_cuda_probe_is_made_cheap_only_without_a_device(monkeypatch):
    from flcore.lightning_env import cheap_cuda_probe

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cheap_cuda_probe()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"  # a device: Lightning's fork-safe check stays
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cheap_cuda_probe()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "0"
