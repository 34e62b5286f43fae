"""What a finished run tells the user, and the versions it records for reproducibility."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from rich.table import Table

from quorum.console import console


def provenance() -> dict:
    versions = {"python": platform.python_version(), "created": datetime.now(UTC).isoformat(timespec="seconds")}
    for package in ("quorum", "torch", "torchvision", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def print_finished_model(model_dir: Path, history: list[dict], kept: dict, keep: str, quiet: bool) -> None:
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
