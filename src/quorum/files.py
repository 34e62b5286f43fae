"""Atomic writes: a file is either its old self or complete, never half-written."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
