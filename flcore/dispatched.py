"""Dispatched models lent to results: a FedCross / FedMR round holds K models instead of 2K,
and the model of the client in training is on disk, not in memory.

A strategy whose :meth:`~flcore.strategies.base.Strategy.aggregate_fit` reads a slot's dispatched
model only when that slot's client failed (``Strategy.reads_dispatched_state = False``) does not
need the old model once the net holds it. The trainer then parks each slot's dispatched model on
disk as soon as the net has loaded it (its entries become meta tensors: shape and dtype, no
memory), and the slot's result takes its place when the client is done. A slot whose client fails
gets its model back before aggregation; if the round does not complete (an interrupt, a failure
under ``on_client_failure: raise``), every parked model is put back, so the checkpoint holds the
last completed round's state. Sequential executor only (the results of other processes arrive
all at once).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import torch

from flcore.functional import state_bytes
from flcore.messages import ClientResult, ClientTask

__all__ = ["ParkedModels"]

#: a parked model at least this large (bytes) has its freed pages handed back to the system
TRIM_BYTES = 16 << 20


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or ``None`` (another C library)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Hand the C allocator's free pages back to the system (glibc ``malloc_trim(0)``; a no-op
    with other C libraries). Freed model-sized tensors otherwise stay resident in the heap's free
    lists, where the next client's gradients and temporaries fragment them instead of reusing
    them: with K = 10 VGG-16 FedCross models this is about half a model copy of peak memory, for
    a few milliseconds per parked model (``benchmarks/speed.py``, memory section)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class ParkedModels:
    """The current round's dispatched models parked on disk until their results take their place.

    Args:
        folder: where the parked models go (``<run folder>/.dispatched``), created on first use.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._parked: dict[int, tuple[dict, Path]] = {}  # slot -> (dispatched model, its copy on disk)
        self._lent: set[int] = set()  # parked slots whose result took the model's place

    def __bool__(self) -> bool:
        return bool(self._parked)

    @staticmethod
    def reusable(strategy, tasks: list[ClientTask], in_process: bool, stats_due: bool) -> dict[int, dict]:
        """``{slot: dispatched state}`` that may be parked for its result: the strategy allows it,
        the clients train in this process, it is not a model-statistics round (those compare each
        result with what was sent), and no two tasks share a dispatched state or tensor. When
        every task shares one dispatched state (the first round's initial model), only the last
        task's slot is returned: its state may be parked once every other result exists
        (:meth:`may_lend`), when no other client needs it."""
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
        """Whether ``slot``'s dispatched state may be parked and its result take its place, given
        that ``results_so_far`` of the round's ``tasks`` have succeeded, this slot's included
        (:meth:`reusable`): always for a state of its own; for the shared initial model only when
        every task succeeded (a failed slot's aggregation would read the shared model)."""
        return slot in reuse and (len(reuse) == tasks or results_so_far == tasks)

    def park(self, slot: int, model: dict) -> None:
        """Write ``model`` (``slot``'s dispatched state, already loaded into the net) to disk and
        drop its tensors: its entries become meta tensors of the same shapes and dtypes until
        :meth:`lend` or :meth:`restore` fills them. A slot already parked is left as it is."""
        if slot in self._parked:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"slot_{slot}.pt"
        torch.save(model, path)
        self._parked[slot] = (model, path)
        size = state_bytes(model)
        model.update({key: tensor.to("meta") for key, tensor in model.items()})
        if size >= TRIM_BYTES:
            trim_heap()

    def lend(self, result: ClientResult, model: dict) -> None:
        """Park ``model`` (the result's slot's dispatched state) if it is not yet, give it the
        result's tensors and make it the result's state."""
        self.park(result.slot, model)
        model.update(result.state)
        result.state = model
        self._lent.add(result.slot)

    def restore(self, unlent_only: bool = False) -> None:
        """Put the parked models back: all of them (the round did not complete), or only those
        whose result never came (``unlent_only``: failed clients, before aggregation)."""
        for slot in [s for s in self._parked if not (unlent_only and s in self._lent)]:
            model, path = self._parked.pop(slot)
            model.update(torch.load(path, map_location="cpu", weights_only=True))
            path.unlink(missing_ok=True)
        if not unlent_only:
            self._lent.clear()

    def release(self) -> None:
        """Forget the parked models (the round completed) and delete their copies."""
        for _, path in self._parked.values():
            path.unlink(missing_ok=True)
        self._parked.clear()
        self._lent.clear()
