"""The report's folder: the files a report writes there, and whether an existing folder may take them.

A report writes fixed names (index.html, summary.csv, ...) into --out, which may already exist (the
default `reports/` is written again and again). It replaces them only in a folder an earlier report
wrote, never a user's index.html or summary.csv in a folder of theirs. An earlier report is known by
its scores.json, written first (so a report stopped part-way is known too), or its index.html.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from quorum import files
from quorum.errors import QuorumError

SCORES, INDEX = "scores.json", "index.html"
TITLE = "<title>quorum report</title>"  # in the head of every index.html a report writes
SCORES_KEYS = {"source", "classes", "models", "summary"}  # among the keys of every scores.json a report writes
PICTURES = ("confusion_matrices.png", "best_vs_ensemble.png", "training_curves.png", "accuracy_vs_time.png",
            "coverage_accuracy.png", "reliability.png", "preds_agreement.png", "preds_classes.png")
FILES = (SCORES, "summary.csv", *PICTURES, INDEX)  # in the order a report writes them


def check_out(out: Path) -> None:
    """Before any work: `out` is new, holds none of the report's file names, or is an earlier report's folder."""
    out = Path(out)
    taken = [name for name in FILES if os.path.lexists(out / name)]
    if taken and not is_report(out):
        raise QuorumError(f"--out {out} holds {', '.join(taken)}, which quorum report did not write: choose a new "
                          "folder (or an earlier report's)")


def is_report(folder: Path) -> bool:
    try:
        with open(folder / INDEX, encoding="utf-8", errors="replace") as page:
            if TITLE in page.read(4096):
                return True
    except OSError:  # none, a folder, unreadable
        pass
    try:
        scores = json.loads((folder / SCORES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(scores, dict) and SCORES_KEYS <= scores.keys()


def writing(out: Path):
    """Hold `.OUT.lock` beside the folder for the whole run: a second report of the same --out stops at once, where
    the two could leave one's summary.csv beside the other's index.html."""
    out = Path(out).resolve()
    return files.writing(out, "report", None if out.name else out / ".quorum-report.lock")  # "/" has no name
