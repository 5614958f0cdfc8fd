"""Client-resident state off the heap: a store with a memory budget that spills to the run folder.

SCAFFOLD's control variate c_i, MOON's previous local model and FedBN's local BatchNorm entries
live on their client between its rounds. The trainer keeps them here, by ``(kind, cid)`` with
``kind`` ``"module"`` (the local objective's ``client_state``) or ``"bn"`` (local BN entries).
Entries beyond the memory budget (``trainer.client_state_mb``) go to files in the run folder,
least recently used first, and are read back when their client is selected again; so RAM does
not grow with the population, only the disk does.

Versions and checkpoints: every entry carries the round that produced it (its *version*) and is
written to ``<dir>/<kind>_<cid>_v<version>.pt`` -- a new file per version, never rewritten with
different content -- so a checkpoint records the store as a *manifest* ``{kind: {cid: version}}``
(:meth:`ClientStateStore.snapshot`) instead of copying it: its size is independent of the
population. A round's new states are *staged* (:meth:`stage`) and become the store's state only
when the round ends (:meth:`commit`); an interrupted round's are dropped (:meth:`discard`), so an
interrupt checkpoint and the states it names belong to the same round. Files that no remaining
checkpoint names are deleted after each checkpoint (:meth:`collect_garbage`); files a killed run
wrote after its last checkpoint are named by none and are written again, identically, when the
run resumes.

Spilled files are renamed into place (a reader never sees half a file) but synced to disk only
when a snapshot names them, one ``fsync`` per file then instead of one per spill.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import torch

from flcore.diagnostics import payload_bytes

__all__ = ["ClientStateStore", "KINDS", "checkpoint_client_states", "checkpoint_manifest", "open_store"]

#: The kinds of client-resident state: the local objective's, and local BatchNorm entries.
KINDS = ("module", "bn")
_FORMAT = 1

Key = tuple[str, int]


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return payload_bytes(value) if isinstance(value, dict) else 0


class ClientStateStore:
    """Client states by ``(kind, cid)``, at most ``budget_mb`` of them in memory.

    Args:
        directory: where spilled entries and snapshots' files go (created on first write),
            normally ``<run folder>/client_state``.
        budget_mb: memory budget in MiB for the entries held in memory (staged ones included);
            ``None``: no budget, entries are written only when a snapshot needs them. An entry
            larger than the budget is still held while it is in use.

    Raises:
        ValueError: a negative budget (``trainer.client_state_mb``).

    Values are handed out by reference: callers must not modify them in place (the local
    objectives copy what they change).
    """

    def __init__(self, directory: str | os.PathLike, budget_mb: float | None = None):
        if budget_mb is not None and budget_mb < 0:
            raise ValueError(f"trainer.client_state_mb: must be >= 0 or null, got {budget_mb}")
        self.directory = Path(directory)
        self.budget = None if budget_mb is None else int(budget_mb * 2**20)
        self._version: dict[Key, int] = {}   # committed entries -> their version
        self._on_disk: set[tuple[str, int, int]] = set()  # (kind, cid, version) whose file exists
        self._unsynced: set[tuple[str, int, int]] = set()  # ... written but not yet fsync'ed
        self._staged: dict[Key, int] = {}    # this round's new entries -> their version
        self._open: int | None = None        # the version of the open round's entries
        # in memory, least recently used first: ("c" committed | "s" staged, kind, cid) -> value
        self._resident: OrderedDict[tuple[str, str, int], Any] = OrderedDict()
        self._bytes = 0
        self.spills = 0  # entries written out to respect the budget (a figure for benchmarks)
        self.loads = 0   # entries read back from disk

    # ------------------------------------------------------------------ reading
    def get(self, kind: str, cid: int) -> Any | None:
        """The committed entry of client ``cid`` (read back from disk if spilled), or ``None``."""
        version = self._version.get((kind, cid))
        if version is None:
            return None
        slot = ("c", kind, cid)
        if slot in self._resident:
            self._resident.move_to_end(slot)
            return self._resident[slot]
        value = self._read(kind, cid, version)
        self._hold(slot, value)
        return value

    def cids(self, kind: str) -> list[int]:
        """The clients with a committed entry of ``kind``, ascending."""
        return sorted(c for k, c in self._version if k == kind)

    def items(self, kind: str) -> Iterator[tuple[int, Any]]:
        """``(cid, entry)`` of every committed entry of ``kind``, ascending by cid; entries on
        disk are read without being kept (a pass over the population leaves memory as it was)."""
        for cid in self.cids(kind):
            slot = ("c", kind, cid)
            yield cid, (self._resident[slot] if slot in self._resident
                        else self._read(kind, cid, self._version[(kind, cid)]))

    def to_dict(self) -> dict[str, dict[int, Any]]:
        """Every committed entry, ``{kind: {cid: entry}}`` (reads all of them: for tests and
        small populations)."""
        return {kind: dict(self.items(kind)) for kind in KINDS}

    @property
    def resident_bytes(self) -> int:
        """Bytes of the tensors held in memory now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._version)

    # ------------------------------------------------------------------ writing
    def begin(self, version: int) -> None:
        """Open a round: the entries staged until :meth:`commit` get ``version`` (the number of
        the round once completed, 1-based)."""
        self.discard()
        self._open = int(version)

    def stage(self, kind: str, cid: int, value: Any) -> None:
        """Client ``cid``'s new entry from the open round (:meth:`begin`); it replaces the
        committed one at :meth:`commit`.

        Raises:
            RuntimeError: no round is open.
        """
        if self._open is None:
            raise RuntimeError("ClientStateStore.stage: no round is open (call begin first)")
        slot = ("s", kind, cid)
        if slot in self._resident:
            self._drop(slot)
        self._staged[(kind, cid)] = self._open
        self._hold(slot, value)

    def commit(self) -> None:
        """Make the staged entries the committed ones (the round is over)."""
        for (kind, cid), version in self._staged.items():
            old = ("c", kind, cid)
            if old in self._resident:
                self._drop(old)
            self._version[(kind, cid)] = version
            staged = ("s", kind, cid)
            if staged in self._resident:
                value = self._resident.pop(staged)
                self._resident[old] = value  # most recently used
        self._staged.clear()
        self._open = None

    def discard(self) -> None:
        """Drop the staged entries (the round did not complete)."""
        for kind, cid in self._staged:
            slot = ("s", kind, cid)
            if slot in self._resident:
                self._drop(slot)
        self._staged.clear()
        self._open = None

    def load(self, states: dict[str, dict[int, Any]], version: int) -> None:
        """Take ``{kind: {cid: entry}}`` as committed entries of ``version`` (a checkpoint
        written before the store, which held every state inline)."""
        self.begin(version)
        for kind, entries in states.items():
            for cid, value in entries.items():
                self.stage(kind, int(cid), value)
        self.commit()

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self) -> dict[str, Any]:
        """Write every committed entry that is only in memory, sync the files, and return the
        manifest that a checkpoint records: ``{"format": 1, "entries": {kind: {cid: version}}}``.
        Call between rounds (nothing staged)."""
        if self._staged:
            raise RuntimeError("ClientStateStore.snapshot: a round is in progress (staged entries)")
        for (_, kind, cid), value in list(self._resident.items()):
            self._write(kind, cid, self._version[(kind, cid)], value)
        if self._unsynced:
            for kind, cid, version in sorted(self._unsynced):
                fd = os.open(self._path(kind, cid, version), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _fsync_dir(self.directory)
            self._unsynced.clear()
        entries: dict[str, dict[int, int]] = {}
        for (kind, cid), version in sorted(self._version.items()):
            entries.setdefault(kind, {})[cid] = version
        return {"format": _FORMAT, "entries": entries}

    def restore(self, manifest: dict[str, Any]) -> None:
        """Point the store at the files a checkpoint's manifest names (nothing is read yet).

        Raises:
            FileNotFoundError: a named file is missing (the run folder lost files).
        """
        self.discard()
        self._version.clear()
        self._on_disk.clear()
        self._resident.clear()
        self._staged.clear()
        self._bytes = 0
        for kind, entries in manifest.get("entries", {}).items():
            for cid, version in entries.items():
                path = self._path(kind, int(cid), int(version))
                if not path.is_file():
                    raise FileNotFoundError(f"client state {path} named by the checkpoint is missing")
                self._version[(kind, int(cid))] = int(version)
                self._on_disk.add((kind, int(cid), int(version)))

    def collect_garbage(self, manifests: list[dict[str, Any]]) -> int:
        """Delete the files that neither the committed entries nor any of ``manifests`` (those of
        the checkpoints that remain) name; returns how many were deleted."""
        keep = {(k, c, v) for (k, c), v in [*self._version.items(), *self._staged.items()]}
        for manifest in manifests:
            for kind, entries in (manifest or {}).get("entries", {}).items():
                keep |= {(kind, int(c), int(v)) for c, v in entries.items()}
        deleted = 0
        if not self.directory.is_dir():
            return 0
        for path in self.directory.glob("*.pt"):
            parsed = _parse(path.name)
            if parsed is not None and parsed not in keep:
                path.unlink(missing_ok=True)
                self._on_disk.discard(parsed)
                self._unsynced.discard(parsed)
                deleted += 1
        for stale in self.directory.glob(".*.tmp"):  # left by a writer killed mid-write
            stale.unlink(missing_ok=True)
        return deleted

    # ------------------------------------------------------------------ internals
    def _path(self, kind: str, cid: int, version: int) -> Path:
        return self.directory / f"{kind}_{cid}_v{version}.pt"

    def _read(self, kind: str, cid: int, version: int) -> Any:
        self.loads += 1
        return torch.load(self._path(kind, cid, version), map_location="cpu", weights_only=True)

    def _write(self, kind: str, cid: int, version: int, value: Any) -> None:
        if (kind, cid, version) in self._on_disk:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(kind, cid, version)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(value, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._on_disk.add((kind, cid, version))
        self._unsynced.add((kind, cid, version))

    def _hold(self, slot: tuple[str, str, int], value: Any) -> None:
        self._resident[slot] = value
        self._bytes += _nbytes(value)
        if self.budget is None:
            return
        while self._bytes > self.budget and len(self._resident) > 1:
            victim = next(iter(self._resident))
            if victim == slot:
                break
            which, kind, cid = victim
            version = self._version[(kind, cid)] if which == "c" else self._staged[(kind, cid)]
            self._write(kind, cid, version, self._resident[victim])
            self.spills += 1
            self._drop(victim)

    def _drop(self, slot: tuple[str, str, int]) -> None:
        self._bytes -= _nbytes(self._resident.pop(slot))


def _parse(name: str) -> tuple[str, int, int] | None:
    """``"module_12_v30.pt"`` -> ``("module", 12, 30)``; ``None`` for other names."""
    stem = name[:-3] if name.endswith(".pt") else None
    if stem is None:
        return None
    parts = stem.rsplit("_", 2)
    if len(parts) != 3 or parts[0] not in KINDS or not parts[1].isdigit() or not parts[2][1:].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2][1:])


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(run_dir: str | os.PathLike, budget_mb: float | None, ckpt: dict[str, Any] | None,
               start: int) -> ClientStateStore:
    """A run's store (``<run_dir>/client_state``) as a checkpoint left it: the files its manifest
    names, or the inline states of a checkpoint written before the store (taken as version
    ``start``, the checkpoint's round); empty for a new run (``ckpt=None``).

    Raises:
        ConfigError: a store file the checkpoint names is missing.
    """
    from flcore.errors import ConfigError
    from flcore.lifecycle import client_states

    store = ClientStateStore(Path(run_dir) / "client_state", budget_mb)
    if ckpt is None:
        return store
    if "client_store" in ckpt:
        try:
            store.restore(ckpt["client_store"])
        except FileNotFoundError as err:
            raise ConfigError(f"ckpt_path: {err}") from None
    else:
        store.load(client_states(ckpt), start)
    return store


def checkpoint_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The store manifest a checkpoint file records (``None``: none, or the file is unreadable),
    read without loading its tensors (``mmap``)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated or foreign file: it names nothing that must be kept
        return None
    return ckpt.get("client_store") if isinstance(ckpt, dict) else None


def checkpoint_client_states(ckpt: dict[str, Any], run_dir: str | os.PathLike) -> dict[str, dict[int, Any]]:
    """Every client state a checkpoint holds, ``{"module": {cid: state}, "bn": {cid: entries}}``:
    read from the run folder's store files its manifest names (``ckpt["client_store"]``), or
    inline for checkpoints written before the store.

    Args:
        ckpt: a loaded checkpoint (:func:`flcore.checkpoint.load_checkpoint`).
        run_dir: the run folder (``version_N``) the checkpoint belongs to.

    Raises:
        FileNotFoundError: a file the manifest names is missing.
    """
    from flcore.lifecycle import client_states

    if "client_store" not in ckpt:
        return client_states(ckpt)
    store = ClientStateStore(Path(run_dir) / "client_state")
    store.restore(ckpt["client_store"])
    return store.to_dict()
