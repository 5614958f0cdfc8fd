"""The same run as ``fedavg_digits.yaml``, from Python: the user's module goes to the trainer as it
is. About 10 s on 2 CPU cores.

    python examples/own_module/run.py [--strategy fedavg|fedprox|scaffold|fedcross|fedmr] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lightning import seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))  # my_module, beside this file
from my_module import DigitsMLP  # noqa: E402

from datamodules import Digits, Dirichlet  # noqa: E402
from flcore import FederatedTrainer  # noqa: E402
from flcore.strategies import FedAvg, FedCross, FedMR, FedProx, Scaffold  # noqa: E402

STRATEGIES = {"fedavg": FedAvg, "fedprox": lambda: FedProx(mu=0.01), "scaffold": Scaffold, "fedcross": FedCross,
              "fedmr": FedMR}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategy", choices=list(STRATEGIES), default="fedavg")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--log-dir", default="runs")
    args = p.parse_args(argv)

    seed_everything(0)
    data = Digits(num_clients=20, partition=Dirichlet(beta=0.5), batch_size=20, seed=0)
    trainer = FederatedTrainer(strategy=STRATEGIES[args.strategy](), rounds=args.rounds, clients_per_round=5,
                               eval_every=5, local={"max_epochs": 2}, log_dir=args.log_dir, name="own_module")
    summary = trainer.fit(DigitsMLP(hidden=32, lr=0.1), data)
    last = trainer.history[-1]
    print(f"final test accuracy {summary['final_test_acc']:.3f}; the module's own metrics: "
          f"my_loss {last['clients/my_loss']:.3f}, my_acc {last['clients/my_acc']:.3f}")
    config = json.loads((Path(summary["run_dir"]) / "results.json").read_text())["config"]
    print("recorded model:", config["model"])
    return summary


if __name__ == "__main__":
    main()
