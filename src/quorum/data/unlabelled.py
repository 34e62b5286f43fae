"""A predictions CSV as data: which folder its rows came from, whether the files are unchanged, and
which rows the vote agreed on enough to train on as pseudo-labels.

`quorum predict` writes `<csv>.json` beside the CSV: the folder, each file's fingerprint (size and
mtime), and the run. A reader needs it because the CSV's paths are relative to that folder, and a
label is only worth something for the file it was given to.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from quorum import files
from quorum.errors import QuorumError

SIDECAR_SUFFIX = ".json"
# As quorum.predict.trust compares levels: to two decimals, so 0.67 means 2 of 3.
AGREEMENT_TOLERANCE = 0.005


def check_predictions_csv(csv: Path | str, option: str = "") -> Path:
    """A predict CSV given to review, report --preds or finetune --pseudo-labels is there; if not,
    one line that says how to make it (checked before torch loads: a mistake costs a second)."""
    csv = Path(csv)
    if not csv.is_file():
        named = f"{option} {csv}" if option else str(csv)
        raise QuorumError(f"{named} does not exist: write one with quorum predict FOLDER --out {csv}")
    return csv


def sidecar(csv: Path) -> Path:
    return Path(csv).with_name(Path(csv).name + SIDECAR_SUFFIX)


def paths_digest(paths: list[str]) -> str:
    """A short hash of a list of paths: enough to tell two file lists apart."""
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]


def read_sidecar(csv: Path, paths: list[str]) -> dict:
    """`<csv>.json`, checked to describe the CSV whose `paths` were read, or a QuorumError naming the fix."""
    path = sidecar(csv)
    try:
        info = json.loads(path.read_text())
        folder, fingerprints = Path(info["folder"]), list(info["fingerprints"])
    except FileNotFoundError:
        raise QuorumError(f"{csv} has no {path.name} beside it (quorum predict writes one): without it the "
                          "images' folder is unknown; run quorum predict again") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise QuorumError(f"{path} is broken: run quorum predict again") from None
    if info.get("paths") != paths_digest(list(paths)) or len(fingerprints) != len(paths):
        raise QuorumError(f"{csv} is not the CSV its {path.name} describes (edited or replaced?): "
                          "run quorum predict again")
    return {**info, "folder": folder}


def check_inside(csv: Path, folder: Path, paths: list[str]) -> None:
    """Every path of the rows about to be used names a file under `folder`, as predict writes them: relative,
    no `..` or `.`, and inside `folder` once links are followed. The sidecar is an unkeyed hash anyone can
    redo, so an edited CSV must not lead review or --pseudo-labels to /etc/passwd or ../photos."""
    outside = [path for path in paths if not _plain(path) or not files.inside(Path(folder) / path, folder)]
    if outside:
        listed = ", ".join(map(repr, outside[:3])) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
        raise QuorumError(f"{csv} has {len(outside)} path(s) that lead outside its folder {folder} ({listed}): "
                          "only the files quorum predict found there are used; run quorum predict again")


def _plain(path: str) -> bool:
    pure = PurePosixPath(path)
    return path not in ("", ".") and pure.as_posix() == path and not pure.is_absolute() and ".." not in pure.parts


def changed_files(folder: Path, paths: list[str], fingerprints: list[str]) -> list[str]:
    """The paths whose file is gone or differs from its fingerprint."""
    changed = []
    for path, expected in zip(paths, fingerprints):
        try:
            now = files.fingerprint(Path(folder) / path)
        except OSError:
            now = None
        if now != expected:
            changed.append(path)
    return changed


def flagged_unknown(frame: pd.DataFrame) -> pd.Series:
    """The rows predict flagged `unknown` (no known class); none where the CSV has no such column."""
    if "unknown" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["unknown"].astype(str).str.lower().eq("true")


def check_rows_usable(csv: Path, info: dict, chosen: pd.DataFrame, what: str) -> None:
    """The chosen rows' files lie inside the CSV's folder and are unchanged since it was written: what
    --pseudo-labels and --distill both need before training on them; else one error naming them."""
    check_inside(csv, info["folder"], chosen["path"].tolist())
    changed = changed_files(info["folder"], chosen["path"].tolist(), [info["fingerprints"][i] for i in chosen.index])
    if changed:
        listed = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise QuorumError(f"{len(changed)} file(s) in {info['folder']} changed since {csv} was written ({listed}): "
                          f"their {what} may no longer fit; run quorum predict again")


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

    def as_dict(self, classes: tuple[str, ...]) -> dict:
        counts = pd.Series([classes[label] for _, label in self.items], dtype=object).value_counts()
        return {"file": str(self.csv), "digest": self.digest, "folder": str(self.folder), "rows": self.rows,
                "min_agreement": self.min_agreement, "added": len(self.items), "left_out_unknown": self.no_class,
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
    check_rows_usable(csv, info, chosen, "labels")
    index = {name: i for i, name in enumerate(classes)}
    items = [(str(info["folder"] / path), index[label]) for path, label in zip(chosen["path"], chosen["prediction"])]
    return PseudoLabels(csv, info["folder"], items, files.sha256(csv)[:16], min_agreement, len(frame),
                        int((agreed & no_class).sum()))


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
    if not any(column.startswith("p_") for column in header):
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
    given = [column.removeprefix("p_") for column in frame.columns if column.startswith("p_")]
    if set(given) != set(classes):
        raise QuorumError(f"--distill {csv} gives probabilities of other classes ({', '.join(sorted(given))}) than "
                          f"this model's ({', '.join(classes)})")
    info = read_sidecar(csv, frame["path"].tolist())
    readable = frame["status"] == "ok"
    flagged = readable & flagged_unknown(frame)
    chosen = frame[readable & ~flagged]
    check_rows_usable(csv, info, chosen, "probabilities")
    probs = chosen[[f"p_{name}" for name in classes]].to_numpy(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)  # the CSV rounds to 6 decimals
    items = [(str(info["folder"] / path), p) for path, p in zip(chosen["path"], probs)]
    teachers = [column.removesuffix("_prediction") for column in frame.columns
                if column.endswith("_prediction") and f"{column.removesuffix('_prediction')}_confidence" in frame]
    return SoftTargets(csv, info["folder"], items, files.sha256(csv)[:16], len(frame), teachers,
                       {"unreadable": int((~readable).sum()), "unknown": int(flagged.sum())})
