"""Dispatched models lent to results: a FedCross / FedMR round holds K models instead of 2K.

A strategy whose :meth:`~flcore.strategies.base.Strategy.aggregate_fit` reads a slot's dispatched
model only when that slot's client failed (``Strategy.reads_dispatched_state = False``) does not
need the old model once the slot's result exists. The trainer then copies each result into its
slot's dispatched tensors as soon as the client is done, after parking the old model on disk; if
the round does not complete (an interrupt, every client failing), the parked models are put back,
so the checkpoint holds the last completed round's state. Sequential executor only (the results
of other processes arrive all at once).
"""

from __future__ import annotations

from pathlib import Path

import torch

from flcore.messages import ClientResult, ClientTask

__all__ = ["ParkedModels"]


class ParkedModels:
    """The current round's dispatched models lent to their results, each with its copy on disk.

    Args:
        folder: where the old models go (``<run folder>/.dispatched``), created on first use.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._parked: dict[int, tuple[dict, Path]] = {}  # slot -> (dispatched model, its copy on disk)

    def __bool__(self) -> bool:
        return bool(self._parked)

    @staticmethod
    def reusable(strategy, tasks: list[ClientTask], in_process: bool, stats_due: bool) -> dict[int, dict]:
        """``{slot: dispatched state}`` whose memory a result may take: the strategy allows it,
        the clients train in this process, it is not a model-statistics round (those compare each
        result with what was sent), and no two tasks share a dispatched state or tensor. When
        every task shares one dispatched state (the first round's initial model), only the last
        task's slot is returned: its result may take that state once every other result exists
        (:meth:`may_lend`), when no client needs it any more."""
        if strategy.reads_dispatched_state or stats_due or not in_process:
            return {}
        tensors = [id(v) for t in tasks for v in t.state.values()]
        states = {id(t.state) for t in tasks}
        if len(states) == 1 < len(tasks) and len(set(tensors)) == len(tasks[0].state):  # one shared model
            return {tasks[-1].slot: tasks[-1].state}
        if len(states) < len(tasks) or len(set(tensors)) < len(tensors):
            return {}
        return {t.slot: t.state for t in tasks}

    @staticmethod
    def may_lend(reuse: dict[int, dict], slot: int, results_so_far: int, tasks: int) -> bool:
        """Whether the result of ``slot``, the ``results_so_far``-th successful result of the
        round's ``tasks``, may take its dispatched state (:meth:`reusable`): always for a state of
        its own; for the shared initial model only when every task succeeded (a failed slot's
        aggregation would read the shared model)."""
        return slot in reuse and (len(reuse) == tasks or results_so_far == tasks)

    def lend(self, result: ClientResult, model: dict) -> None:
        """Park ``model`` (the result's slot's dispatched state) on disk, copy the result's
        tensors into it and make it the result's state."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"slot_{result.slot}.pt"
        torch.save(model, path)
        self._parked[result.slot] = (model, path)
        for key, tensor in result.state.items():
            model[key].copy_(tensor)
        result.state = model

    def restore(self) -> None:
        """Put the parked models back (the round did not complete)."""
        for model, path in self._parked.values():
            model.update(torch.load(path, map_location="cpu", weights_only=True))
        self._parked.clear()

    def release(self) -> None:
        """Forget the parked models (the round completed) and delete their copies."""
        for _, path in self._parked.values():
            path.unlink(missing_ok=True)
        self._parked.clear()
