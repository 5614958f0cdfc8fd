"""The executor interface (how a round's local updates run) and the sequential executor."""

from __future__ import annotations

from abc import ABC, abstractmethod

from flcore.local import LocalRunner
from flcore.strategies.base import ClientFailure, ClientResult, ClientTask

__all__ = ["Executor", "SequentialExecutor"]


class Executor(ABC):
    """Runs a round's tasks and returns one outcome per task, in task order."""

    @abstractmethod
    def run(self, rnd: int, tasks: list[ClientTask], runner: LocalRunner) -> list[ClientResult | ClientFailure]:
        """Local updates of round ``rnd``; ``runner`` is the main process's reusable runner.

        A client that fails yields a :class:`ClientFailure` in its place; the executor never
        raises for one client's failure.
        """

    def close(self) -> None:
        """Release workers (none for the sequential executor)."""


class SequentialExecutor(Executor):
    """One client after another in this process, through the one reusable Trainer."""

    def run(self, rnd, tasks, runner):
        return [runner.fit(task, rnd) for task in tasks]
