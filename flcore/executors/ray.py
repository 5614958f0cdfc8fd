"""``RayExecutor``: local updates on Ray actors, on this machine or across a Ray cluster.

Optional dependency: ``pip install 'flcore[ray]'``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import signal
from collections import deque
from typing import Any

import torch

from flcore.executors.base import Executor, balanced_chunks
from flcore.interrupts import check as check_stop
from flcore.local import LocalRunner
from flcore.messages import ClientFailure, ClientResult, ClientTask, payload_items, with_payload_items

__all__ = ["RayExecutor", "datamodule_recipe"]

_POLL_S = 0.2  # how often the driver, waiting for a round's actors, looks for a stop request

_MISSING = "trainer.executor: RayExecutor needs the 'ray' package; install it with: pip install 'flcore[ray]'"


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError(_MISSING) from None
    return ray


def datamodule_recipe(datamodule) -> Any:
    """A copy of a set-up datamodule without its data tensors, to send to workers.

    Workers reload the data from the copy's own config (``root`` and the other constructor
    arguments) and take the partition from the copy's ``client_indices`` (and LEAF's
    ``client_test_indices``): index arrays, never copied tensors.
    """
    recipe = copy.copy(datamodule)
    for name, value in vars(datamodule).items():
        if isinstance(value, torch.Tensor):
            setattr(recipe, name, None)
    return recipe


class _ClientWorker:
    """The body of one Ray actor: its own datamodule, reusable Trainer and LightningModule."""

    def __init__(self, module_bytes: bytes, datamodule, trainer_kwargs, seed: int, callbacks, threads: int):
        torch.set_num_threads(threads)
        if getattr(datamodule, "x_train", None) is None:  # a recipe (data="reload"): load the data here
            partition = {k: getattr(datamodule, k) for k in ("client_indices", "client_test_indices")
                         if hasattr(datamodule, k)}
            datamodule.setup("fit")
            for key, value in partition.items():
                setattr(datamodule, key, value)  # the driver's partition, exactly
        self.runner = LocalRunner(pickle.loads(module_bytes), datamodule, trainer_kwargs, seed, callbacks)

    def fit_many(self, calls: list[tuple[ClientTask, Any]], rnd: int) -> list[ClientResult | ClientFailure]:
        """A chunk of ``(task, state or its ObjectRef)`` in one group fit."""
        ray = _ray()

        def get(v):
            return ray.get(v) if isinstance(v, ray.ObjectRef) else v

        tasks = [dataclasses.replace(task, state=get(state), payload=with_payload_items(
                     task.payload, {k: get(v) for k, v in payload_items(task.payload).items()})) for task, state in calls]
        out = self.runner.fit_many(tasks, rnd)
        if torch.cuda.is_available():  # an idle actor holds no cached accelerator memory between tasks
            torch.cuda.empty_cache()
        return out

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    """Local updates on ``num_workers`` Ray actors, each with one reusable Lightning Trainer.

    * ``address=None`` starts a local Ray instance with ``num_workers * num_cpus_per_worker``
      CPUs (and shuts it down at the end of the run); ``"auto"`` or ``"ray://host:port"`` joins
      a running cluster (``ray start --head`` on the head node, ``ray start --address=...`` on the
      others); every node then needs flcore installed.
    * Each actor receives the LightningModule once, and its data: with ``data="object_store"``
      (default) the driver's set-up datamodule, tensors included, is put into Ray's object store
      once per run and each node fetches it from there, so no node needs the data set on its own
      disk (no shared file system); with ``data="reload"`` an actor loads the data itself from
      the datamodule's config (``root`` on its node), and only the partition travels, as client
      index arrays.
    * Per round, a state_dict (or payload tensor) shared by several clients is put into Ray's
      object store once (FedAvg's global model: once per round, not once per client).
    * Each round the tasks are split into one chunk per actor, of about equal sample count
      (:func:`~flcore.executors.base.balanced_chunks`); an actor trains its chunk in one group
      fit (:meth:`LocalRunner.fit_many`); results come back in task order. Every local update
      draws its randomness from (run seed, round, client), so results equal the sequential
      executor's bit for bit at the same torch threads per process.
    * After each task an actor empties PyTorch's CUDA cache (Lightning has already moved the
      module back to the CPU), so idle actors hold no accelerator memory.
    * An actor that dies (killed, out of memory, node lost) is replaced, and its chunk's clients
      run again one at a time: only a client whose update kills an actor becomes a
      :class:`ClientFailure` (the trainer's ``on_client_failure`` policy applies).

    Args:
        num_workers: actors (>= 1).
        num_cpus_per_worker: Ray CPUs per actor (> 0); also its torch threads (at least 1).
        num_gpus_per_worker: Ray GPUs per actor (>= 0; fractions share a GPU, e.g. 0.25).
        address: ``None`` (local Ray), ``"auto"``, ``"host:port"`` (a cluster's GCS) or
            ``"ray://host:port"`` (Ray Client). A host and port must answer within
            ``connect_timeout_s`` before training starts (:meth:`check`).
        connect_timeout_s: seconds to wait for the cluster's port (> 0; default 10).
        data: ``"object_store"`` or ``"reload"`` (see above).

    Raises:
        ImportError: ``ray`` is not installed (one line saying how to install it).
        ValueError: a count out of range; (:meth:`check`) an address that does not answer.
    """

    def __init__(self, num_workers: int = 2, num_cpus_per_worker: float = 1, num_gpus_per_worker: float = 0,
                 address: str | None = None, connect_timeout_s: float = 10.0, data: str = "object_store"):
        _ray()
        if data not in ("object_store", "reload"):
            raise ValueError(f"trainer.executor.data: must be one of ['object_store', 'reload'], got {data!r}")
        self.data = data
        if num_workers < 1:
            raise ValueError(f"trainer.executor.num_workers: must be >= 1, got {num_workers}")
        if not num_cpus_per_worker > 0:
            raise ValueError(f"trainer.executor.num_cpus_per_worker: must be > 0, got {num_cpus_per_worker}")
        if num_gpus_per_worker < 0:
            raise ValueError(f"trainer.executor.num_gpus_per_worker: must be >= 0, got {num_gpus_per_worker}")
        if not connect_timeout_s > 0:
            raise ValueError(f"trainer.executor.connect_timeout_s: must be > 0, got {connect_timeout_s}")
        self.num_workers, self.address, self.connect_timeout_s = int(num_workers), address, float(connect_timeout_s)
        self.num_cpus_per_worker, self.num_gpus_per_worker = float(num_cpus_per_worker), float(num_gpus_per_worker)
        self._actors: list = []
        self._init_ref = None
        self._started_ray = False

    def check(self) -> None:
        """A ``host:port`` or ``ray://host:port`` address must accept a TCP connection within
        ``connect_timeout_s`` (Ray itself retries an unreachable cluster for minutes).

        Raises:
            ValueError: ``trainer.executor.address: cannot reach ...``.
        """
        if self.address in (None, "auto", "local"):
            return
        target = self.address.removeprefix("ray://")
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"trainer.executor.address: must be null, 'auto', 'host:port' or 'ray://host:port', "
                             f"got {self.address!r}")
        import socket

        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=self.connect_timeout_s).close()
        except OSError as err:
            raise ValueError(f"trainer.executor.address: cannot reach Ray at {self.address} within "
                             f"{self.connect_timeout_s:g} s ({err.strerror or err}); start the cluster with "
                             f"'ray start --head' or fix the address") from None

    # ------------------------------------------------------------------ actors
    def _start(self, runner: LocalRunner) -> None:
        ray = _ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address is None:
                kwargs["num_cpus"] = max(1, int(round(self.num_workers * self.num_cpus_per_worker)))
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            ray.init(address=self.address, **kwargs)
            for sig, handler in handlers.items():  # Ray installs its own; the trainer's checkpoint-on-signal stays
                signal.signal(sig, handler)
            self._started_ray = True
        shipped = runner.datamodule if self.data == "object_store" else datamodule_recipe(runner.datamodule)
        self._init_args = (ray.put(pickle.dumps(runner.modules)), ray.put(shipped),
                           runner.trainer_kwargs, runner.seed, runner.callbacks,
                           max(1, int(self.num_cpus_per_worker)))
        self._actors = [self._new_actor() for _ in range(self.num_workers)]

    def _new_actor(self):
        ray = _ray()
        cls = ray.remote(_ClientWorker).options(num_cpus=self.num_cpus_per_worker, num_gpus=self.num_gpus_per_worker,
                                                max_restarts=0)
        return cls.remote(*self._init_args)

    # ------------------------------------------------------------------ rounds
    def run(self, rnd, tasks, runner):
        ray = _ray()
        if not self._actors:
            self._start(runner)
        refs: dict[int, Any] = {}  # id(object) -> ObjectRef, one put per shared object per round

        def shared(obj):
            if id(obj) not in refs:
                refs[id(obj)] = ray.put(obj)
            return refs[id(obj)]

        counts: dict[int, int] = {}
        for t in tasks:
            for v in payload_items(t.payload).values():
                counts[id(v)] = counts.get(id(v), 0) + 1
        calls = []
        for t in tasks:
            payload = with_payload_items(t.payload, {k: shared(v) if counts[id(v)] > 1 and _is_big(v) else v
                                                     for k, v in payload_items(t.payload).items()})
            calls.append((dataclasses.replace(t, state={}, payload=payload), shared(t.state)))

        out: list[ClientResult | ClientFailure | None] = [None] * len(tasks)
        sizes = runner.datamodule.client_sizes
        chunks = balanced_chunks([sizes[t.cid] for t in tasks], len(self._actors))
        queue, idle, pending = deque(chunks), list(self._actors), {}
        while queue or pending:
            while queue and idle:
                chunk, actor = queue.popleft(), idle.pop()
                pending[actor.fit_many.remote([calls[i] for i in chunk], rnd)] = (chunk, actor)
            ready: list = []
            while not ready:
                check_stop()  # a stop request ends the round's wait (the trainer checkpoints and closes)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
            ref = ready[0]
            chunk, actor = pending.pop(ref)
            try:
                for i, outcome in zip(chunk, ray.get(ref)):
                    out[i] = outcome
                idle.append(actor)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.RayTaskError) as err:
                if len(chunk) > 1:  # run its clients again one at a time: only the one that kills an actor fails
                    queue.extendleft([i] for i in reversed(chunk))
                else:
                    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
                    why = lines[-1][:200] if lines else type(err).__name__
                    out[chunk[0]] = ClientFailure(tasks[chunk[0]].cid, tasks[chunk[0]].slot,
                                                  f"Ray worker died ({type(err).__name__}: {why})")
                self._replace(actor)
                idle.append(self._actors[-1])
        return out

    def _replace(self, actor) -> None:
        ray = _ray()
        self._actors.remove(actor)
        try:
            ray.kill(actor)
        except Exception:  # already gone
            pass
        self._actors.append(self._new_actor())

    def close(self) -> None:
        """Kill the actors; shut down the Ray instance if this executor started it."""
        if not self._actors and not self._started_ray:
            return
        ray = _ray()
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        self._actors = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False


def _is_big(value) -> bool:
    """Worth one object-store put: tensors and containers of tensors."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return any(isinstance(v, torch.Tensor) for v in value.values())
    return False
