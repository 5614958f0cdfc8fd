"""Cost of local DP-SGD (``trainer.local_dp``, Opacus) against the plain fast path: seconds per
client local update (one local epoch of a 600-sample client at B = 50, Fashion-MNIST-sized
inputs), for the authors' LeNet CNN and the FedAvg CNN, channels-last on and off.

    python benchmarks/local_dp.py [--repeats 5]

Prints one line per setting: median seconds per client and the ratio to the plain path. Run it on
an otherwise idle machine (it times).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from datamodules.base import FederatedDataModule
from flcore.local import LocalRunner
from flcore.messages import ClientTask
from lightning_modules import ClientModule
from lightning_modules.dp import LocalDP
from lightning_modules.models import CNN, LeNetCNN


class _Random(FederatedDataModule):
    """600 random 1 x 28 x 28 samples per client, 10 classes (timing only)."""

    num_classes, input_shape = 10, (1, 28, 28)

    def load(self):
        g = torch.Generator().manual_seed(0)
        n = 600 * self.num_clients
        return (torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                torch.randn(100, 1, 28, 28, generator=g), torch.randint(0, 10, (100,), generator=g))


def _time(net_factory, channels_last: bool, dp: LocalDP | None, repeats: int) -> float:
    torch.manual_seed(0)
    module = ClientModule(net_factory(), optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.5),
                          channels_last=channels_last)
    module.set_local_dp(dp)
    dm = _Random(root="unused", num_clients=2, batch_size=50)
    dm.setup("fit")
    runner = LocalRunner(module, dm, {"max_epochs": 1}, seed=0)
    state = {k: v.clone() for k, v in module.net.state_dict().items()}
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        runner.fit(ClientTask(cid=0, slot=0, state=state), r)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])  # the first fit warms up


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"torch threads {torch.get_num_threads()}; seconds per client (600 samples, 1 epoch, B = 50)")
    nets = {"LeNetCNN": lambda: LeNetCNN(1, 10, 28), "CNN": lambda: CNN(1, 10, 28)}
    for name, factory in nets.items():
        for cl in (False, True):
            plain = _time(factory, cl, None, args.repeats)
            dp = _time(factory, cl, LocalDP(noise_multiplier=1.0, max_grad_norm=1.0), args.repeats)
            print(f"{name:9s} channels_last={cl!s:5s}  plain {plain:.3f} s  DP-SGD {dp:.3f} s  ratio {dp / plain:.1f}x")


if __name__ == "__main__":
    main()
