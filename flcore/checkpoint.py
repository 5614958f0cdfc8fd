"""Atomic checkpoints of the federated state.

A checkpoint is one ``torch.save`` file holding only tensors, dicts, lists, strings and numbers,
so it loads with ``torch.load(weights_only=True)`` (no code can run). Writes go to a temporary
file in the same directory, are fsync'ed, then renamed over the target (POSIX rename is
atomic), so a kill at any moment leaves either the old or the new complete file.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from flcore.errors import ConfigError, first_line

__all__ = ["save_checkpoint", "load_checkpoint", "load_resume_checkpoint", "resolve_ckpt_path", "newest_version"]


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike, keep_last: int = 0) -> Path:
    """Write ``payload`` atomically to ``path`` and point ``last.ckpt`` in that folder at it.

    Args:
        payload: ``weights_only``-loadable data.
        path: target file, e.g. ``runs/x/version_0/checkpoints/round_0010.ckpt``.
        keep_last: if > 0, delete older ``round_*.ckpt`` files beyond this many.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(".*.tmp"):  # left by a writer killed mid-write (one writer per folder)
        stale.unlink(missing_ok=True)
    _atomic_save(payload, path)
    _atomic_save(payload, path.parent / "last.ckpt")
    if keep_last > 0:
        for old in sorted(path.parent.glob("round_*.ckpt"))[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def _atomic_save(payload: dict[str, Any], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def newest_version(log_root: str | os.PathLike) -> Path | None:
    """The newest run folder ``log_root/version_N`` (highest N), or ``None``."""
    versions = [p for p in Path(log_root).glob("version_*") if p.is_dir() and p.name[8:].isdigit()]
    return max(versions, key=lambda p: int(p.name[8:])) if versions else None


def resolve_ckpt_path(ckpt_path: str, log_root: str | os.PathLike) -> Path:
    """``"last"`` -> ``last.ckpt`` of the newest run ``log_root/version_N``; otherwise the path.

    Only the newest run is resumed: if it stopped before its first checkpoint, an older run of the
    same name is never picked up (and rewritten) in its place.

    Raises:
        ConfigError: no run, or the newest run has no checkpoint; a path that is no file.
    """
    if ckpt_path == "last":
        newest = newest_version(log_root)
        if newest is None:
            raise ConfigError(f"ckpt_path: 'last' found no run (version_N folder) under {os.path.abspath(log_root)}")
        ckpts = newest / "checkpoints"
        if not (ckpts / "last.ckpt").is_file() and not any(ckpts.glob("round_*.ckpt")):
            raise ConfigError(f"ckpt_path: 'last': the newest run {newest} stopped before its first checkpoint; "
                              f"run again without --ckpt_path to start it over")
        return ckpts / "last.ckpt"
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path: no such file: {path}")
    return path


def load_resume_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`load_checkpoint`; if ``path`` is a ``last.ckpt`` that is missing or unreadable, the
    newest readable ``round_*.ckpt`` beside it instead, with a warning naming both.

    Raises:
        ConfigError: nothing readable.
    """
    path = Path(path)
    try:
        return load_checkpoint(path)
    except ConfigError as err:
        if path.name != "last.ckpt":
            raise
        first = err
    for candidate in sorted(path.parent.glob("round_*.ckpt"), reverse=True):
        try:
            payload = load_checkpoint(candidate)
        except ConfigError:
            continue
        warnings.warn(f"{first}; resuming from {candidate.name} instead", stacklevel=2)
        return payload
    raise first


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``).

    Raises:
        ConfigError: the file is missing, truncated, corrupted or not an flcore checkpoint.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"ckpt_path: no such file: {path}") from None
    except Exception as err:  # truncated zip, bad pickle, disallowed global, ...
        reason = first_line(err, 120)
        raise ConfigError(f"ckpt_path: {path} is not a readable flcore checkpoint ({reason})") from None
    if not isinstance(payload, dict) or "strategy_state" not in payload:
        raise ConfigError(f"ckpt_path: {path} is not an flcore checkpoint (no strategy_state)")
    return payload
