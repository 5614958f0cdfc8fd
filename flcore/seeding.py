"""Seeds derived from (run seed, round, client id, ...): every random choice of a run is a pure
function of these numbers, never of global RNG order, so parallel executors and resumed runs
reproduce a sequential uninterrupted run exactly."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["derive_seed", "round_rng", "seed_local_rng", "STREAM_SAMPLER", "STREAM_STRATEGY", "STREAM_CLIENT"]

STREAM_SAMPLER, STREAM_STRATEGY, STREAM_CLIENT = 1, 2, 3


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative integers (NumPy ``SeedSequence`` hashing)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def round_rng(seed: int, rnd: int, stream: int) -> np.random.Generator:
    """NumPy generator of one round for one purpose (sampler, strategy)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(rnd), int(stream)]))


def seed_local_rng(seed: int) -> None:
    """Seed the generators a local update draws from (dropout, augmentation): the CPU generator,
    and CUDA's once it is in use (``torch.manual_seed`` would also queue lazy seeding calls for
    every accelerator backend, which costs more than a small client's step)."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():  # (is_available() would probe the driver on every call)
        torch.cuda.manual_seed_all(seed)
