"""Atomic writes (a file is either its old self or complete, never half-written), locks for what two
runs could share, and the check that a path stays inside a folder."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import filelock

from quorum.errors import QuorumError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    Durable too: the data reach the disk before the rename, and the rename before we return,
    so a power cut leaves the old file or the new one, never an empty one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries (renames), to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def fingerprint(path: Path) -> str:
    """`size:mtime_ns` of a file: cheap to take for a whole folder, and it changes when the file is
    rewritten, which is what a later reader of a predictions CSV needs to know."""
    stat = Path(path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def sha256(path: Path) -> str:
    """The file's SHA-256 as hex, read in blocks (a weights file may be large)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@contextmanager
def exclusive(lock: Path, busy: str | None = None) -> Iterator[None]:
    """Hold the lock file `lock` for the block: an OS lock (flock), so a killed holder never leaves it
    stuck. Held by another process: raise QuorumError(`busy`) at once, or without `busy` wait for it.
    The file is removed while still held (filelock retries on a removed one), so none is left behind."""
    lock = Path(lock)
    held = filelock.FileLock(lock, timeout=-1 if busy is None else 0)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        held.acquire()
    except filelock.Timeout:
        raise QuorumError(busy) from None
    except OSError as exc:  # a read-only or missing folder: nothing can be written there either
        raise QuorumError(f"cannot write in {lock.parent}: {(exc.strerror or str(exc)).lower()}") from None
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        held.release()


def inside(path: Path, folder: Path) -> bool:
    """Whether `path`, with every link followed, is `folder` or lies under it (`folder`'s links followed too)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())
