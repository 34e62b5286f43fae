"""The finished rows of an unfinished predict run, kept beside --out so that `--resume` can skip them.

`<out>.partial/` holds `run.json` (which run: `run_identity`, and the columns) and one
`rows-<rank>.jsonl` per process, a line per finished image: `[position, value, value, ...]`.
1. Every batch's rows are written and flushed as soon as the batch is voted on, so a killed process
   loses only the batch it was working on. (fsync, which only matters when the machine itself goes
   down, runs every few seconds: on a network filesystem it can cost more than the batch.)
2. JSON lines, not CSV: JSON escapes a newline inside a value (an error message may hold one),
   so a line is always one whole row, and floats round-trip exactly. A kill mid-write leaves a
   last line without its newline: it is dropped, and cut off before that process appends again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from quorum import files
from quorum.console import say
from quorum.errors import QuorumError
from quorum.predict import run_identity

RUN_FILE = "run.json"
SYNC_SECONDS = 5.0


def progress_dir(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".partial")


def start(folder: Path, identity: dict, columns: list[str], resume: bool, quiet: bool = False) -> pd.DataFrame:
    """Called once (rank 0) before any process appends: the rows finished earlier, or a fresh folder.

    The frame's index is each row's position in the file list.
    """
    folder = Path(folder)
    if resume:
        finished = _finished_rows(folder, identity, columns)
        say(f"Resuming from {folder}: {len(finished)} rows were finished before", quiet)
        return finished
    if folder.exists():
        say(f"Starting over: replacing the unfinished run in {folder} (--resume continues it)", quiet)
        remove(folder)
    folder.mkdir()
    files.write_json(folder / RUN_FILE, {"run": identity, "columns": columns})
    return pd.DataFrame(columns=columns)


def remove(folder: Path) -> None:
    """Delete a progress folder, but never a folder of the user's that happens to have its name."""
    folder = Path(folder)
    if folder.exists() and not (folder / RUN_FILE).is_file() and (not folder.is_dir() or any(folder.iterdir())):
        raise QuorumError(f"{folder} is not quorum's progress folder: move it away or choose another --out")
    shutil.rmtree(folder, ignore_errors=True)


def remove_if_empty(folder: Path) -> None:
    """After a failed or interrupted run: a progress folder without a finished row has nothing to resume."""
    folder = Path(folder)
    if (folder / RUN_FILE).is_file() and not any(path.stat().st_size for path in folder.glob("rows-*.jsonl")):
        remove(folder)


def _finished_rows(folder: Path, identity: dict, columns: list[str]) -> pd.DataFrame:
    if not (folder / RUN_FILE).is_file():
        raise QuorumError(f"nothing to resume: {folder} does not exist (the run finished, or never started); "
                          "run without --resume")
    saved = json.loads((folder / RUN_FILE).read_text())
    differs = run_identity.difference(saved["run"], identity)
    if differs:
        raise QuorumError(f"cannot resume {folder}: it is from another run ({differs}); "
                          "run without --resume to start over")
    records = [record for path in sorted(folder.glob("rows-*.jsonl")) for record in _complete_lines(path)]
    frame = pd.DataFrame([record[1:] for record in records], columns=saved["columns"],
                         index=pd.Index([record[0] for record in records], dtype="int64"))
    return frame[~frame.index.duplicated()]


def _complete_lines(path: Path) -> list[list]:
    """Every whole line of `path`; a last line cut short by a kill is cut off the file, too."""
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) < len(data):
        os.truncate(path, len(whole))  # so the next append starts on a line of its own
    try:
        return [json.loads(line) for line in whole.decode().splitlines()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise QuorumError(f"{path} is damaged (not written by quorum?): run without --resume to start over") from None


class RowWriter:
    """Appends one process's finished rows to `rows-<rank>.jsonl` in the progress folder."""

    def __init__(self, folder: Path, rank: int):
        Path(folder).mkdir(exist_ok=True)  # rank 0 made it, unless this node does not share its disk
        self.file = open(Path(folder) / f"rows-{rank}.jsonl", "a", encoding="utf-8")
        self.synced = time.monotonic()

    def append(self, rows: pd.DataFrame) -> None:
        """`rows` indexed by position in the file list, with the run's columns."""
        lines = [json.dumps([int(position), *map(_plain, values)], allow_nan=False)
                 for position, values in zip(rows.index, rows.itertuples(index=False, name=None))]
        self.file.write("".join(line + "\n" for line in lines))
        self.file.flush()  # in the OS now: a killed process cannot lose it
        if time.monotonic() - self.synced > SYNC_SECONDS:
            os.fsync(self.file.fileno())
            self.synced = time.monotonic()

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(value):
    """A JSON value: None for every kind of missing, Python numbers for NumPy's."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value
