"""What a finished run tells the user, and the versions it records for reproducibility."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from rich.table import Table

from quorum.console import console

# How far the kept last epoch may read below the best one on validation before finetune says so: twice the
# epoch-to-epoch noise seen on small validation shares (0.5-2 points on 200 images; the demo's 60 images put
# one member's last epoch 5 points, 3 images, below its best, and that last epoch was the better one on the
# unlabelled images), so the line means the run ended unsettled (too high a --finetune-lr), not chance.
LAST_EPOCH_GAP = 0.10


def provenance() -> dict:
    versions = {"python": platform.python_version(), "created": datetime.now(UTC).isoformat(timespec="seconds")}
    for package in ("quorum", "torch", "torchvision", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def best_epoch(history: list[dict]) -> int:
    """The epoch highest in validation accuracy, then lowest in validation loss; the first of equals."""
    return max(history, key=lambda row: (row["val_accuracy"], -row["val_loss"]))["epoch"]


def last_epoch_warning(history: list[dict], keep: str) -> str | None:
    """A warning when the kept last epoch reads far below the best on validation (the epoch --keep best keeps,
    which it names); None otherwise."""
    best, last = next(row for row in history if row["epoch"] == best_epoch(history)), history[-1]
    gap = best["val_accuracy"] - last["val_accuracy"]
    if keep != "last" or gap <= LAST_EPOCH_GAP:
        return None
    return (f"[yellow]Warning: the last epoch, kept, reads {last['val_accuracy']:.1%} on validation, {100 * gap:.1f} "
            f"points below epoch {best['epoch']} ({best['val_accuracy']:.1%}): training ended unsettled. Look at "
            "history.csv; a lower --finetune-lr or more --epochs usually steadies it, --keep best keeps "
            f"epoch {best['epoch']}.[/yellow]")


def print_finished_model(model_dir: Path, history: list[dict], kept: dict, keep: str, quiet: bool) -> None:
    warning = last_epoch_warning(history, keep)
    if warning:  # printed even with --quiet, as finetune's other warnings
        console.print(warning)
    if quiet:
        return
    metrics = kept["metrics"]
    table = Table(title=f"Saved {model_dir}", title_justify="left")
    calibration = kept["calibration"]
    for column in (f"kept epoch ({keep})", "val accuracy", "balanced accuracy", "macro F1", "val ECE raw -> calibrated",
                   "temperature", "epochs", "train time"):
        table.add_column(column, justify="right")
    table.add_row(str(kept["epoch"]), f"{metrics['accuracy']:.1%}", f"{metrics['balanced_accuracy']:.1%}",
                  f"{metrics['macro_f1']:.3f}", f"{calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}",
                  f"{calibration['temperature']:.3f}", str(len(history)), f"{sum(r['seconds'] for r in history):.0f} s")
    console.print(table)
