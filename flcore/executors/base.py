"""The executor interface (how a round's local updates run) and the sequential executor."""

from __future__ import annotations

from abc import ABC, abstractmethod

from flcore.local import LocalRunner
from flcore.messages import ClientFailure, ClientResult, ClientTask

__all__ = ["Executor", "SequentialExecutor", "balanced_chunks"]


def balanced_chunks(costs: list[float], bins: int) -> list[list[int]]:
    """Split task indices into at most ``bins`` chunks of near-equal total cost (longest
    processing time first: each task, costliest first, joins the chunk with the least cost so
    far; ties go to the lower chunk). Each chunk keeps the tasks' original order; empty chunks
    are dropped. Deterministic. Used to hand each worker one group of clients per round (one
    ``Trainer.fit`` each) with about the same number of samples.

    Args:
        costs: per-task cost, e.g. the client's sample count (local epochs are the same for all).
        bins: number of workers (>= 1).
    """
    loads, chunks = [0.0] * bins, [[] for _ in range(bins)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        b = min(range(bins), key=lambda b: (loads[b], b))
        loads[b] += costs[i]
        chunks[b].append(i)
    return [sorted(c) for c in chunks if c]


class Executor(ABC):
    """Runs a round's tasks and returns one outcome per task, in task order."""

    @abstractmethod
    def run(self, rnd: int, tasks: list[ClientTask], runner: LocalRunner) -> list[ClientResult | ClientFailure]:
        """Local updates of round ``rnd``; ``runner`` is the main process's reusable runner.

        A client that fails yields a :class:`ClientFailure` in its place; the executor never
        raises for one client's failure.
        """

    def check(self) -> None:
        """Check what can be checked before training (e.g. that a cluster is reachable); raise
        ``ValueError`` naming the field. Called by the trainer before any run folder exists. The
        base accepts everything."""

    def close(self) -> None:
        """Release workers (none for the sequential executor)."""


class SequentialExecutor(Executor):
    """One client after another in this process, through the one reusable Trainer."""

    def run(self, rnd, tasks, runner):
        return runner.fit_many(tasks, rnd)
