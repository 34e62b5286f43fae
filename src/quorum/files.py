"""Atomic writes (a file is either its old self or complete, never half-written), locks for what two
runs could share, the check that a path stays inside a folder, and the format every quorum CSV is
written and read in.

CSV: RFC 4180, rows ended by CRLF. Python's csv writer quotes a field holding any character of the
line terminator, so with CRLF a `\r` or `\n` in a file name is quoted and reads back as one field
(with pandas' default "\n" a bare `\r` went out unquoted and split the row). A text cell that a
spreadsheet would run as a formula (it starts with = + - @, tab or CR: OWASP's CSV-injection list)
is written with a `'` in front, as OWASP advises; so is a cell that starts with `'` itself, which
makes the prefix reversible: `read_csv` removes one leading `'` from every text cell and header, so
quorum reads back exactly the names it wrote. Another program reading the file sees the `'`.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from quorum.errors import QuorumError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    Durable too: the data reach the disk before the rename, and the rename before we return,
    so a power cut leaves the old file or the new one, never an empty one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    except OSError as exc:
        error = no_room(exc, path)
        if error is None:
            raise
        raise error from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only file system refuses even this: there is nothing to remove
            pass


# The write failures a person fixes outside quorum, and how.
NO_ROOM = {
    errno.ENOSPC: "free some space or write elsewhere, then run again",
    errno.EDQUOT: "free some space or write elsewhere, then run again",
    errno.EFBIG: "the file system (or ulimit -f) allows no file this large: write elsewhere",
    errno.EROFS: "choose a folder you can write",
    errno.EACCES: "choose a folder you can write",
    errno.EPERM: "choose a folder you can write",
}


def no_room(exc: OSError, path: Path) -> QuorumError | None:
    """A full disk, a quota, a read-only folder: one line naming the file and the fix; None for other errors."""
    if exc.errno not in NO_ROOM:
        return None
    return QuorumError(f"cannot write {path}: {(exc.strerror or 'failed').lower()}; {NO_ROOM[exc.errno]}")


# What quorum adds to an output's name for the files beside it: ".NAME.json.<pid>.tmp", ".NAME.partial", ".NAME.lock".
NAME_ROOM = 20


def check_name_length(path: Path, option: str) -> None:
    """Fail now if `path`'s name, with quorum's suffixes, is more than its file system takes (255 bytes on most):
    else the run fails at its first helper file, after the work, with a traceback."""
    path = Path(path)
    try:
        most = os.pathconf(next(p for p in (path.absolute().parent, *path.absolute().parents) if p.exists()),
                           "PC_NAME_MAX")
    except (OSError, ValueError):
        most = 255
    length = len(os.fsencode(path.name))
    if length + NAME_ROOM > most:
        raise QuorumError(f"{option} {path}: the name is {length} bytes, and quorum's files beside it need it to be "
                          f"at most {most - NAME_ROOM}: choose a shorter name")


def check_can_write(folder: Path, option: str, target: Path | None = None) -> None:
    """Fail now, before models load, if no file can be made in `folder` (or, where it does not exist
    yet, in the folder above it that does, where it would be made), or `target`'s name is too long. The
    error names `target`, the file to be written there, if given."""
    folder = Path(folder)
    if target is not None:
        check_name_length(target, option)
    target = folder if target is None else target
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())  # "/" exists
    if not existing.is_dir():
        raise QuorumError(f"cannot write {target}: {existing} is a file, not a folder; choose another {option}")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".quorum-", suffix=".check"):
            pass
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise QuorumError(f"cannot write {target}: {reason}; choose another {option}") from None


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


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
TEXT_PREFIX = "'"


def spreadsheet_safe(value):
    """A text cell a spreadsheet shows as text: `'` before a formula start (and before a `'`)."""
    if isinstance(value, str) and value.startswith((*FORMULA_START, TEXT_PREFIX)):
        return TEXT_PREFIX + value
    return value


def original_text(value):
    """What `spreadsheet_safe` was given."""
    return value[1:] if isinstance(value, str) and value.startswith(TEXT_PREFIX) else value


def csv_text(frame, path: Path | None = None) -> str | None:
    """The frame as quorum's CSV (module docstring): written to `path`, or returned as text."""
    safe = frame.rename(columns=spreadsheet_safe)
    for column in _text_columns(safe):
        safe[column] = safe[column].map(spreadsheet_safe)
    return safe.to_csv(path, index=False, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)


def write_csv(path: Path, frame) -> None:
    with atomic_path(path) as tmp:
        csv_text(frame, tmp)


def read_csv(path: Path, **options):
    """A CSV `write_csv` wrote, with every text cell and header as it was given. `options` go to
    `pandas.read_csv`; column names in `dtype` and `na_values` are the original ones."""
    import pandas as pd

    for key in ("dtype", "na_values"):
        if isinstance(options.get(key), dict):
            options[key] = {spreadsheet_safe(name): value for name, value in options[key].items()}
    frame = pd.read_csv(path, **options)
    frame.columns = [original_text(name) for name in frame.columns]
    for column in _text_columns(frame):
        frame[column] = frame[column].map(original_text)
    return frame


def _text_columns(frame) -> list:
    """Columns that may hold text: object, or pandas' string dtype (numbers are never prefixed)."""
    import pandas as pd

    return [name for name, dtype in frame.dtypes.items()
            if pd.api.types.is_object_dtype(dtype) or isinstance(dtype, pd.StringDtype)]


def fingerprint(path: Path) -> str:
    """`size:mtime_ns` of a file: cheap to take for a whole folder, and it changes when the file is
    rewritten, which is what a later reader of a predictions CSV needs to know."""
    stat = Path(path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


_digests: dict[tuple, str] = {}  # per process: predict checks a member's weights up to three times at start


def sha256(path: Path) -> str:
    """The file's SHA-256 as hex, read in blocks (a weights file may be large); read again only when the
    file's inode, size or times have changed since this process last read it."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _digests:
        with open(path, "rb") as file:
            _digests[key] = hashlib.file_digest(file, "sha256").hexdigest()
    return _digests[key]


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


def lock_beside(path: Path) -> Path:
    """`.NAME.lock` beside `path`: the lock a run holds while it makes or replaces `path` (a lock inside would go
    with a folder that is replaced, and a file cannot hold one)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def writing(out: Path, command: str, lock: Path | None = None):
    """Hold `lock` (default `lock_beside(out)`) while `command` writes `out`: a second run of the same `out` stops
    at once with one line, instead of the two mixing their files."""
    return exclusive(lock or lock_beside(out),
                     f"another quorum {command} is writing {out} now: wait for it, or choose another --out")


def check_new_folder(out: Path, command: str) -> None:
    """Fail now, before any work, unless `out` can be made as a new folder (nothing there, not even a link)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise QuorumError(f"--out {out} already exists: give a new folder (a {command} folder is written whole)")
    if not out.parent.is_dir():
        raise QuorumError(f"cannot write {out}: {out.parent} does not exist; create it or choose another --out")
    check_can_write(out.parent, "--out", out)


@contextmanager
def new_folder(out: Path, command: str) -> Iterator[Path]:
    """Write the folder `out` whole or not at all: yield `.OUT.partial` beside it, new and marked as
    `command`'s, and rename it to OUT when the block succeeds. `.OUT.lock` keeps a second run of the
    same OUT out meanwhile. A `.OUT.partial` that a killed run of `command` left (it carries the mark)
    is replaced; anything else of that name is the user's and is left alone. A failed write is one
    QuorumError line naming the file."""
    out = Path(out)
    try:
        with writing(out, command):
            check_new_folder(out, command)  # again, now that no other run can be making it
            work, mark = _fresh_partial(out, command)
            try:
                yield work
                work.rename(out)
                (out / mark).unlink()  # after: a kill between the two leaves OUT whole, not an unmarked partial
            finally:
                shutil.rmtree(work, ignore_errors=True)  # gone already when renamed into place
    except OSError as exc:  # a read-only or full disk, a name too long for it: one line, no traceback
        raise QuorumError(f"cannot write {out}: {(exc.strerror or str(exc)).lower()} ({exc.filename}); "
                          "choose another --out") from None


def _fresh_partial(out: Path, command: str) -> tuple[Path, str]:
    """`.OUT.partial`, made anew and marked as `command`'s, and the mark's file name."""
    work, mark = out.with_name(f".{out.name}.partial"), f".quorum-{command}-partial"
    if work.is_dir() and not work.is_symlink() and (work / mark).is_file():
        shutil.rmtree(work)
    elif work.exists() or work.is_symlink():
        raise QuorumError(f"{work} exists and is not a {command} quorum left unfinished: move it away, "
                          "or choose another --out")
    work.mkdir()
    (work / mark).write_text(f"quorum {command}'s unfinished folder: safe to delete\n")
    return work, mark


def inside(path: Path, folder: Path) -> bool:
    """Whether `path`, with every link followed, is `folder` or lies under it (`folder`'s links followed too)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())
