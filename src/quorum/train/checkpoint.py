"""The end-of-epoch checkpoint that `--resume` continues from (tensors and plain types only)."""

from __future__ import annotations

from pathlib import Path

import torch

from quorum.errors import QuorumError
from quorum.files import atomic_path

CHECKPOINT = "checkpoint.pt"


def save(work_dir: Path, state: dict) -> None:
    with atomic_path(Path(work_dir) / CHECKPOINT) as tmp:
        torch.save(state, tmp)


def load(work_dir: Path) -> dict:
    path = Path(work_dir) / CHECKPOINT
    if not path.is_file():
        raise QuorumError(f"nothing to resume: no interrupted run at {path}; run the same command without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise QuorumError(f"cannot read {path} ({str(exc).splitlines()[0]}): run without --resume to start over") from None


def remove(work_dir: Path) -> None:
    (Path(work_dir) / CHECKPOINT).unlink(missing_ok=True)
