"""Executors: where a round's local updates run. Sequential (this process), a process pool
(this machine), or Ray (many CPUs, GPUs and machines; optional ``pip install flcore[ray]``)."""

from flcore.executors.base import Executor, SequentialExecutor
from flcore.executors.process_pool import ProcessPoolExecutor
from flcore.executors.ray import RayExecutor

__all__ = ["Executor", "SequentialExecutor", "ProcessPoolExecutor", "RayExecutor"]
