"""Pseudo-labels from a predictions CSV: the vote's label on the rows it agreed on (`--pseudo-labels`), or
its probabilities on every readable row as soft targets (`--distill`). Read through `predictions_csv`,
which refuses a CSV whose sidecar, folder or files no longer match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quorum import files
from quorum.data.predictions_csv import (
    AGREEMENT_TOLERANCE,
    check_predictions_csv,
    check_rows_usable,
    class_columns,
    flagged_unknown,
    members_of,
    read_sidecar,
)
from quorum.errors import QuorumError


@dataclass(frozen=True)
class PseudoLabels:
    """The unlabelled images the vote agreed on, with the vote's label, ready to join a training share."""

    csv: Path
    folder: Path
    items: list[tuple[str, int]]  # (absolute path, class index)
    digest: str  # of the CSV
    min_agreement: float
    rows: int  # rows in the CSV
    no_class: int = 0  # agreed rows left out because they were flagged unknown (no known class)
    labelled: int = 0  # agreed rows left out because the labelled folder holds their image (a person's label wins)
    gone: int = 0  # agreed rows left out because their file has left the CSV's folder (moved into the labelled one)

    def as_dict(self, classes: tuple[str, ...]) -> dict:
        counts = pd.Series([classes[label] for _, label in self.items], dtype=object).value_counts()
        return {"file": str(self.csv), "digest": self.digest, "folder": str(self.folder), "rows": self.rows,
                "min_agreement": self.min_agreement, "added": len(self.items), "left_out_unknown": self.no_class,
                "left_out_labelled": self.labelled, "left_out_gone": self.gone,
                "per_class": {label: int(counts.get(label, 0)) for label in classes}}


def read_pseudo_labels(csv: Path, classes: tuple[str, ...], min_agreement: float = 1.0) -> PseudoLabels:
    """The rows of a predictions CSV whose agreement reaches `min_agreement` (to two decimals).

    Refused: a CSV without its sidecar, labels the model does not have, and files changed since the
    CSV was written (named). Rows of a lazy run whose agreement is unknown are not taken, nor rows
    flagged `unknown` (no known class: the vote's label for them is wrong whatever it is).
    """
    csv = check_predictions_csv(csv, "--pseudo-labels")
    if not 0 < min_agreement <= 1:
        raise QuorumError(f"--pseudo-min-agreement must be above 0 and at most 1 (got {min_agreement})")
    try:
        frame = files.read_csv(csv, dtype={"path": object, "prediction": object, "status": object, "unknown": object},
                               keep_default_na=False, na_values={"agreement": [""]})
        no_class = flagged_unknown(frame)
        frame = frame[["path", "prediction", "agreement", "status"]]
    except (KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        raise QuorumError(f"--pseudo-labels {csv} is not a quorum predict CSV (it needs path, prediction, "
                          "agreement and status columns)") from None
    info = read_sidecar(csv, frame["path"].tolist())
    agreed = (frame["status"] == "ok") & (frame["agreement"].astype(float) >= min_agreement - AGREEMENT_TOLERANCE)
    chosen = frame[agreed & ~no_class]
    unknown = sorted(set(chosen["prediction"]) - set(classes))
    if unknown:
        raise QuorumError(f"--pseudo-labels {csv} predicts classes this model does not have ({', '.join(unknown)}): "
                          f"its classes are {', '.join(classes)}")
    usable = check_rows_usable(csv, info, chosen, "labels", leave_out_gone=True)
    gone, chosen = len(chosen) - len(usable), usable
    index = {name: i for i, name in enumerate(classes)}
    items = [(str(info["folder"] / path), index[label]) for path, label in zip(chosen["path"], chosen["prediction"])]
    return PseudoLabels(csv, info["folder"], items, files.sha256(csv)[:16], min_agreement, len(frame),
                        int((agreed & no_class).sum()), gone=gone)


@dataclass(frozen=True)
class SoftTargets:
    """Every readable row of a `predict --probs` CSV with the ensemble's probabilities: a student's soft targets."""

    csv: Path
    folder: Path
    items: list[tuple[str, np.ndarray]]  # (absolute path, float32 probability of each class)
    digest: str  # of the CSV
    rows: int  # rows in the CSV
    teachers: list[str]  # the members that voted, from the CSV's <member>_prediction columns
    left_out: dict[str, int]  # why rows did not join: unreadable, flagged unknown

    def as_dict(self) -> dict:
        return {"file": str(self.csv), "digest": self.digest, "folder": str(self.folder), "rows": self.rows,
                "teachers": self.teachers, "added": len(self.items), "left_out": self.left_out}


def check_distill_csv(csv: Path | str) -> Path:
    """A --distill CSV is there and has probabilities (its header alone: checked before torch loads)."""
    csv = check_predictions_csv(csv, "--distill")
    try:
        header = files.read_csv(csv, nrows=0).columns
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        header = pd.Index([])
    if not {"path", "status"} <= set(header):
        raise QuorumError(f"--distill {csv} is not a quorum predict CSV (it needs path and status columns)")
    if not class_columns(header):
        raise QuorumError(f"--distill {csv} has no p_<class> columns: write it with quorum predict FOLDER --out {csv} "
                          "--probs")
    return csv


def read_soft_targets(csv: Path, classes: tuple[str, ...]) -> SoftTargets:
    """The rows of a predictions CSV a student can learn from, with their `p_<class>` probabilities.

    Refused, as `read_pseudo_labels` refuses: a CSV without its sidecar, classes the model does not have, files
    changed since; and a CSV written without --probs. Left out and counted: unreadable rows, rows flagged unknown.
    """
    csv = check_distill_csv(csv)
    frame = files.read_csv(csv, dtype={"path": object, "status": object}, keep_default_na=False, na_values=[""])
    given = [column.removeprefix("p_") for column in class_columns(frame.columns)]
    if set(given) != set(classes):
        raise QuorumError(f"--distill {csv} gives probabilities of other classes ({', '.join(sorted(given))}) than "
                          f"this model's ({', '.join(classes)})")
    info = read_sidecar(csv, frame["path"].tolist())
    readable = frame["status"] == "ok"
    flagged = readable & flagged_unknown(frame)
    candidates = frame[readable & ~flagged]
    chosen = check_rows_usable(csv, info, candidates, "probabilities", leave_out_gone=True)
    gone = len(candidates) - len(chosen)
    probs = _probabilities(csv, chosen, classes)
    probs /= probs.sum(axis=1, keepdims=True)  # the CSV rounds to 6 decimals
    items = [(str(info["folder"] / path), p) for path, p in zip(chosen["path"], probs)]
    return SoftTargets(csv, info["folder"], items, files.sha256(csv)[:16], len(frame), members_of(frame.columns),
                       {"unreadable": int((~readable).sum()), "unknown": int(flagged.sum()), "gone": gone})


def _probabilities(csv: Path, rows: pd.DataFrame, classes: tuple[str, ...]) -> np.ndarray:
    """The rows' `p_<class>` as soft targets: numbers from 0 to 1 that sum to 1 (to the CSV's rounding), or one
    error naming a row that is not (an edited cell trained the student on nonsense, or on NaN)."""
    columns = [f"p_{name}" for name in classes]
    values = rows[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    wrong = ~(np.isfinite(values).all(axis=1) & (values >= 0).all(axis=1) & (values <= 1).all(axis=1)
              & (np.abs(values.sum(axis=1) - 1) < 1e-3))
    if wrong.any():
        first = int(np.argmax(wrong))
        cells = ", ".join(f"{column} {rows[column].iloc[first]}" for column in columns)
        raise QuorumError(f"--distill {csv} has {int(wrong.sum())} row(s) whose p_<class> are not probabilities "
                          f"(from 0 to 1, summing to 1; e.g. {rows['path'].iloc[first]}: {cells}): write it again "
                          "with quorum predict --probs")
    return values.astype(np.float32)
