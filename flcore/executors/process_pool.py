"""``ProcessPoolExecutor``: local updates in spawned worker processes on this machine."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor as _Pool, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from flcore.executors.base import Executor, balanced_chunks
from flcore.interrupts import check as check_stop
from flcore.local import LocalRunner
from flcore.messages import ClientFailure, ClientResult

__all__ = ["ProcessPoolExecutor"]

_POLL_S = 0.2  # how often the parent, waiting for a round's workers, looks for a stop request


_WORKER: LocalRunner | None = None


def _init_worker(module_bytes: bytes, datamodule, trainer_kwargs, seed, callbacks, threads: int) -> None:
    """Pool initializer: a worker's own reusable Trainer over its own copy of the module.

    The module arrives as plain pickle bytes (a private copy): multiprocessing's own pickler would
    move its parameters into memory shared with the parent and the other workers, which would then
    train the same weights at once. The datamodule's tensors may be shared: they are only read.
    """
    global _WORKER
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and checkpoints
    torch.set_num_threads(threads)
    _WORKER = LocalRunner(pickle.loads(module_bytes), datamodule, trainer_kwargs, seed, callbacks)


def _die_with_parent() -> None:
    """End this worker when the process that started it ends, however it ended (``kill -9``
    included), so that no worker (hundreds of MB each) outlives its run. On Linux the kernel
    sends SIGKILL (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread watches the parent
    id once a second. A parent that died before this ran is caught by the id check."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="flcore-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # pragma: no cover - the parent died between fork and prctl
        os._exit(1)


def _fit_in_worker(blob: bytes, rnd: int) -> bytes:
    """A chunk of tasks in one group fit (pickled list in, pickled list of outcomes out)."""
    assert _WORKER is not None
    return pickle.dumps(_WORKER.fit_many(pickle.loads(blob), rnd))


class ProcessPoolExecutor(Executor):
    """Local updates in ``num_workers`` processes with ``threads_per_worker`` torch threads each.

    Workers start with ``start_method`` (default ``spawn``: a fresh interpreter that receives the
    module and the loaded data once, at start; ``fork`` can deadlock once the parent has run
    OpenMP threads); each builds its own reusable Lightning Trainer. Each round the tasks are
    split into ``num_workers`` chunks of about equal sample count
    (:func:`~flcore.executors.base.balanced_chunks`); a worker trains its chunk in one group fit
    (:meth:`LocalRunner.fit_many`). Tasks and results cross as pickled bytes. Every local update draws its randomness from (run seed, round, client), so
    the results equal the sequential executor's bit for bit when both use the same number of
    torch threads per process. A worker that dies makes its clients fail for that round (the
    trainer's ``on_client_failure`` policy applies) and the pool is rebuilt. Workers end with the
    trainer's process, whatever signal ended it (``kill -9`` included). With ``spawn`` each worker
    initialises its own CUDA context, so several small-model clients can share one GPU
    (``local.accelerator: gpu``; measured by ``benchmarks/gpu_check.sh``); for one large model
    per GPU the sequential executor is simpler. The client-state store's streaming (a state
    fetched just before its client trains) applies to the sequential executor only: here a
    round's tasks carry their clients' states.

    Args:
        num_workers: worker processes (>= 1).
        threads_per_worker: torch intra-op threads per worker (>= 1).
        start_method: ``fork``, ``forkserver`` or ``spawn``.

    Raises:
        ValueError: counts < 1 or an unknown start method.
    """

    def __init__(self, num_workers: int = 2, threads_per_worker: int = 1, start_method: str = "spawn"):
        if num_workers < 1 or threads_per_worker < 1:
            raise ValueError("trainer.executor.num_workers / threads_per_worker: must be >= 1")
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"trainer.executor.start_method: must be one of "
                             f"{multiprocessing.get_all_start_methods()}, got {start_method!r}")
        self.num_workers, self.threads_per_worker, self.start_method = num_workers, threads_per_worker, start_method
        self._pool: _Pool | None = None

    def _ensure_pool(self, runner) -> _Pool:
        if self._pool is None:
            self._pool = _Pool(self.num_workers, mp_context=multiprocessing.get_context(self.start_method),
                               initializer=_init_worker,
                               initargs=(pickle.dumps(runner.modules), runner.datamodule, runner.trainer_kwargs, runner.seed,
                                         runner.callbacks, self.threads_per_worker))
        return self._pool

    def run(self, rnd, tasks, runner):
        """One chunk per worker. If a worker dies, the pool is rebuilt and the clients of every
        chunk it broke are run again one at a time, so that only the client whose update kills a
        worker fails (its result would not differ: a client's update does not depend on its chunk)."""
        sizes = runner.datamodule.client_sizes
        chunks = balanced_chunks([sizes[t.cid] for t in tasks], self.num_workers)
        pool = self._ensure_pool(runner)
        futures = [pool.submit(_fit_in_worker, pickle.dumps([tasks[i] for i in chunk]), rnd) for chunk in chunks]
        out: list[ClientResult | ClientFailure | None] = [None] * len(tasks)
        retry: list[int] = []
        while wait(futures, timeout=_POLL_S).not_done:
            check_stop()  # a stop request ends the round's wait (the trainer checkpoints and closes the pool)
        for chunk, fut in zip(chunks, futures):
            try:
                for i, outcome in zip(chunk, pickle.loads(fut.result())):
                    out[i] = outcome
            except BrokenProcessPool:
                retry.extend(chunk)
        if retry:
            self.close(broken=True)
        for i in retry:  # one at a time: a death now names its client
            try:
                out[i] = pickle.loads(self._ensure_pool(runner).submit(_fit_in_worker, pickle.dumps([tasks[i]]), rnd)
                                      .result())[0]
            except BrokenProcessPool:
                out[i] = ClientFailure(tasks[i].cid, tasks[i].slot, "worker process died")
                self.close(broken=True)
        return out

    def close(self, broken: bool = False) -> None:
        """Shut the workers down. A broken pool (a worker died) is killed without waiting:
        ``shutdown(wait=True)`` can block forever on a broken pool's surviving workers."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if broken:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()
            pool.shutdown(wait=False, cancel_futures=True)
        else:
            pool.shutdown(wait=True, cancel_futures=True)
