"""Where a report's predictions come from: each model's stored validation predictions, a labelled
folder run through the models now, or a `quorum predict` CSV (with true labels, if any are given).

Every source ends as the same thing for the scores: per member, probabilities for labelled images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape

from quorum import files
from quorum.console import say
from quorum.data.predictions_csv import check_predictions_csv
from quorum.data.split import scan_labelled_counting
from quorum.errors import QuorumError
from quorum.models.bundle import ModelInfo
from quorum.predict.table import (
    OK,
    STATUS_COLUMNS,
    VOTE_COLUMNS,
    members_of,
    read_predictions,
)
from quorum.predict.validation import (  # noqa: F401 (read_validation, mismatch: the report's names too)
    OwnValidation,
    aligned_probs,
    mismatch,
    read_validation,
)


@dataclass(frozen=True)
class Labelled:
    """What the members said about the same labelled images, in the same order."""

    source: str  # for a person: which images these are
    paths: list[str]
    y_true: np.ndarray  # (images,) class index
    probs: np.ndarray  # (members, images, classes)
    skipped: int = 0  # unreadable files left out
    root: Path | None = None  # the folder `paths` are relative to, where known (for thumbnails)


def stack_validation(infos: list[ModelInfo], runs: list[OwnValidation]) -> Labelled:
    """The members' validation predictions aligned by path (call only when `mismatch` is None)."""
    order = runs[0].paths
    source = f"the shared validation split ({len(order)} images)"
    return Labelled(source, order, runs[0].y_true, aligned_probs(runs), root=infos[0].labelled_root)


def run_on_folder(folder: Path, members: list, tie_breaker: int, device, batch_size: int = 32, workers: int = 2,
                  quiet: bool = False, tta: int = 1) -> Labelled:
    """Every member (`predict.members.load_members`) on every image of a labelled folder (one sub-folder per class)."""
    folder = Path(folder)
    table, scan = scan_labelled_counting(folder)
    if scan.skipped:  # as predict and finetune say it
        say(escape(f"Not images, so not scored: {scan.summary()} under {folder}"), quiet)
    classes = members[0].info.classes
    unknown = sorted(set(table["label"]) - set(classes))
    if unknown:
        raise QuorumError(f"--data {folder} has classes the models do not know ({', '.join(unknown)}): "
                          f"the models know {', '.join(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    y_true = np.array([index[label] for label in table["label"]])
    return run_again(Labelled(f"the labelled folder {folder}", list(table["path"]), y_true, np.empty(0), root=folder),
                     members, tie_breaker, device, batch_size, workers, quiet, tta)


def run_again(labelled: Labelled, members: list, tie_breaker: int, device, batch_size: int = 32, workers: int = 2,
              quiet: bool = False, tta: int = 1) -> Labelled:
    """The members run now on `labelled`'s images (under its root), e.g. the validation split with TTA;
    files that are no longer readable are left out."""
    from quorum.predict.pipeline import (
        predict_arrays,  # torch work only here: the other sources read CSVs
    )

    outputs = predict_arrays([labelled.root / path for path in labelled.paths], members, tie_breaker, device,
                             batch_size=batch_size, workers=workers, quiet=quiet, tta=tta)
    ok = np.array([error is None for error in outputs.errors])
    if not ok.any():
        raise QuorumError(f"no readable images in {labelled.root}: check the files")
    source = f"{labelled.source.split(' (')[0]} ({int(ok.sum())} images{f', {tta} views each' if tta > 1 else ''})"
    return Labelled(source, [path for path, good in zip(labelled.paths, ok) if good], labelled.y_true[ok],
                    outputs.probs[:, ok], skipped=int((~ok).sum()), root=labelled.root)


def read_preds(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """A `quorum predict` CSV and its member names (from the `<name>_prediction` columns)."""
    path = check_predictions_csv(path, "--preds")
    try:
        header = files.read_csv(path, nrows=0).columns
        missing = [column for column in VOTE_COLUMNS + STATUS_COLUMNS if column not in header]
        frame = None if missing else read_predictions(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, ValueError, TypeError) as exc:
        raise QuorumError(f"--preds {path} is not a quorum predict CSV ({type(exc).__name__}): "
                          f"write one with quorum predict FOLDER --out {path}") from None
    if missing:
        raise QuorumError(f"--preds {path} is not a quorum predict CSV (no column {', '.join(missing)}): "
                          f"write one with quorum predict FOLDER --out {path}")
    return frame, members_of(frame.columns)


def check_preds_classes(frame: pd.DataFrame, path: Path, classes) -> None:
    """A --preds CSV of models with other classes (another project's) has nothing to set beside these models."""
    other = sorted(set(frame.loc[frame["status"] == OK, "prediction"].dropna().astype(str)) - set(classes))
    if other:
        raise QuorumError(f"--preds {path} predicts classes these models do not have ({', '.join(other[:5])}; theirs: "
                          f"{', '.join(classes)}): give a CSV that quorum predict wrote with these models")


def read_labels(path: Path) -> pd.Series:
    """True labels by path from a CSV with columns path,label."""
    path = Path(path)
    if not path.is_file():
        raise QuorumError(f"--labels {path} does not exist: give a CSV with columns path,label")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"path", "label"} <= set(frame.columns):
        raise QuorumError(f"--labels {path} needs the columns path,label (it has {', '.join(frame.columns)})")
    return frame.set_index("path")["label"]


def check_labels_match(truth: pd.Series, frame: pd.DataFrame, labels: Path, preds: Path) -> None:
    """Scores need rows to score: a --labels CSV that names none of the readable --preds rows is a wrong file."""
    readable = frame[frame["status"] == OK]
    if not readable["path"].isin(truth.index).any():
        example = f", e.g. {readable['path'].iloc[0]}" if len(readable) else ""
        raise QuorumError(f"--labels {labels} names none of the {len(readable)} readable rows of --preds {preds} "
                          f"(their paths are relative to the folder predict ran on{example}): give the true labels "
                          "of that folder's files")
