"""The end-of-epoch checkpoint that `--resume` continues from (tensors and plain types only)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from quorum.errors import QuorumError
from quorum.files import atomic_path, fsync
from quorum.train.recipe import Recipe

CHECKPOINT = "checkpoint.pt"


def save(work_dir: Path, state: dict) -> None:
    with atomic_path(Path(work_dir) / CHECKPOINT) as tmp, open(tmp, "wb") as file:
        writer = _KeepsWriteErrors(file)
        try:
            torch.save(state, writer)
        except RuntimeError:  # torch words a full disk as "enforce fail ... unexpected pos": say what it was
            if writer.error is not None:
                raise writer.error from None
            raise


class _KeepsWriteErrors:
    """A file for torch.save that remembers the OSError (ENOSPC, EFBIG, ...) torch's writer swallows."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def load(work_dir: Path) -> dict:
    path = Path(work_dir) / CHECKPOINT
    if not path.is_file():
        raise QuorumError(f"nothing to resume: no interrupted run at {path}; run the same command without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise QuorumError(f"cannot read {path} ({str(exc).splitlines()[0]}): "
                          "run without --resume to start over") from None


def remove(work_dir: Path) -> None:
    (Path(work_dir) / CHECKPOINT).unlink(missing_ok=True)
    fsync(Path(work_dir))


def resumed_recipe(saved: dict, asked: Recipe, done: int) -> Recipe:
    """The interrupted run's recipe, with what may change on --resume: where it runs (device,
    workers) and the number of epochs, not below the `done` ones. Any other change is refused by
    name: the result would be neither the first run nor the new one.

    `asked` is the recipe as given, before `resolve`: an option left to its default (None) keeps
    the interrupted run's value, so --unfreeze-after's default (3/4 of --epochs) does not move
    with a larger --epochs."""
    then = Recipe(**{"keep": "best", **saved})  # a run from before --keep kept its best epoch
    free = {"device", "workers", "epochs"}
    if not then.cache_features:  # the run turned its cache off (too big): that stands
        free.add("cache_features")
    changed = [(f.name, getattr(then, f.name), getattr(asked, f.name)) for f in dataclasses.fields(Recipe)
               if f.name not in free and getattr(asked, f.name) is not None
               and getattr(then, f.name) != getattr(asked, f.name)]
    if changed:
        listed = ", ".join(f"{_option(name)} ({a} then, {b} now)" for name, a, b in changed)
        raise QuorumError(f"--resume cannot change {listed}: resume with the interrupted run's options, "
                          "or leave out --resume to start over")
    if asked.epochs < done:
        raise QuorumError(f"--resume cannot undo epochs already run: --epochs {asked.epochs} now, {done} of "
                          f"{then.epochs} done; give --epochs {done} or more")
    return dataclasses.replace(then, device=asked.device, workers=asked.workers, epochs=asked.epochs)


def _option(field_name: str) -> str:
    return "--no-cache" if field_name == "cache_features" else "--" + field_name.replace("_", "-")
