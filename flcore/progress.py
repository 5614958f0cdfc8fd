"""Progress over rounds: a rich bar on a terminal, one plain line per evaluation otherwise."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flcore.metric_names import TEST_ACC

__all__ = ["RoundProgress"]


class RoundProgress:
    """Context manager: ``update(round, metrics, elapsed_s)`` after each round."""

    def __init__(self, rounds: int, start: int = 0):
        self.rounds, self.start = rounds, start
        self.interactive = sys.stdout.isatty()
        self.acc = float("nan")
        self._bar = Progress(
            TextColumn("round"), MofNCompleteColumn(), BarColumn(),
            TextColumn("test_acc {task.fields[acc]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
            disable=not self.interactive,
        )
        self._task = None

    def __enter__(self) -> "RoundProgress":
        self._bar.__enter__()
        self._task = self._bar.add_task("rounds", total=self.rounds, completed=self.start, acc=self.acc)
        return self

    def update(self, rnd: int, metrics: dict[str, float], elapsed: float) -> None:
        if TEST_ACC in metrics:
            self.acc = metrics[TEST_ACC]
            if not self.interactive:
                print(
                    f"round {rnd}/{self.rounds}  test_acc {self.acc:.4f}  "
                    f"test_loss {metrics['global/test_loss']:.4f}  "
                    f"train_loss {metrics.get('clients/train_loss', float('nan')):.4f}  elapsed {elapsed:.1f}s",
                    flush=True,
                )
        self._bar.update(self._task, completed=rnd, acc=self.acc)

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)
