"""`quorum review`: the rows a person should look at, laid out as folders they can sort by hand.

The rows below an agreement level (default 1.0: every row that is not unanimous) go into
`OUT/<predicted class>/<path in the folder>`, and the rows flagged `unknown` (no known class) into
`OUT/_unknown/<path in the folder>` whatever their agreement, as hard links where the file system
allows (moving one moves nothing of the original), else symbolic links, else copies.
`OUT/README.txt` says what to do, and `OUT/review.csv` lists each file with its source and every
member's vote. With a budget, the folder holds the N rows most worth a label instead (`ranking`),
and review.csv lists them in the order to label them, with their rank and score.

The folder is built as `.OUT.partial` beside OUT (marked as review's own) and renamed into place at
the end, so a failed run leaves nothing half-written; an existing OUT is never written into, and
`.OUT.lock` keeps a second review of the same OUT out meanwhile. Every label must be a class of the
run and every path a file under the run's folder: an edited CSV cannot make review write or read
outside those.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quorum import files
from quorum.data.predictions_csv import (
    check_predictions_csv,
    check_rows_usable,
    class_columns,
    flagged_unknown,
    read_sidecar,
)
from quorum.errors import QuorumError
from quorum.predict import ranking
from quorum.predict.table import OK, member_columns, members_of, read_predictions
from quorum.predict.trust_table import below
from quorum.predict.vote import MAJORITY, TIE_BREAKER, UNKNOWN

UNKNOWN_DIR = "_unknown"  # rows of no known class; README's copy command leaves folders starting "_" out

README = """Images to review: {count} of {rows} rows of {csv}
({why}). Each sits in the folder of the class the vote
predicted{or_unknown}; review.csv lists where each came from and what every member voted.

What to do:
1. Look at each image and move it into the folder of its true class. A class the models do
   not know yet: create a folder for it here (e.g. mkdir "{out}/Hat"); quorum accepts it as a
   new label when you fine-tune, and says so. {unknown_note}
2. Delete the images you cannot tell (or that belong to no class).
3. Add the sorted folders to your labelled data, e.g.
       cp -rn "{out}"/[!_]*/ LABELLED/
   then fine-tune again with --resplit (the labelled images changed, so the shared split is made
   anew and every model should be fine-tuned again on it). With --pseudo-labels {csv}, the
   images you sorted train with your label alone: their rows of the vote are left out.

The files here are {how} of the originals in {folder}: moving or deleting them here leaves the
originals alone.
"""
PLACED_UNKNOWN = """{unknown_dir}/ holds the {count} images flagged
   unknown (like no class the models know): sort them too, or delete them, but never copy
   {unknown_dir}/ itself into the labelled data."""
KEPT_APART = """The {count} rows flagged unknown (like no class the
   models know) were kept apart from the ranking: none of them is here."""


@dataclass(frozen=True)
class ReviewResult:
    out: Path
    rows: int  # rows in the CSV
    flagged: int  # files placed
    unknown: int  # lazy rows whose agreement is unknown: not placed
    per_class: dict[str, int]
    how: str  # hard links, symbolic links or copies
    kept_apart: int = 0  # with a budget: rows flagged `unknown` (no known class), left out of the ranking
    no_class: int = 0  # without a budget: rows flagged `unknown`, placed in _unknown/


RESERVED = ("review.csv", "README.txt")  # review's own files beside the class folders


def flagged_rows(frame: pd.DataFrame, min_agreement: float = 1.0) -> tuple[pd.DataFrame, int]:
    """(rows below `min_agreement`, count of lazy rows whose agreement is unknown) of a predictions table."""
    ok = frame[frame["status"] == OK]
    agreement = ok["agreement"].astype(float)
    if min_agreement >= 1.0:  # "not unanimous" is known wherever decided_by is, even in a lazy row
        return ok[ok["decided_by"].isin([MAJORITY, TIE_BREAKER])], int((ok["decided_by"] == UNKNOWN).sum())
    return ok[below(agreement, min_agreement)], int(agreement.isna().sum())


def review(csv: Path, out: Path, min_agreement: float = 1.0, budget: int | None = None, rank: str = ranking.DEFAULT,
           seed: int = 0) -> ReviewResult:
    """Place the rows below `min_agreement`; with `budget`, the `budget` rows `rank` puts first instead."""
    csv, out = Path(csv), Path(out)
    if not 0 < min_agreement <= 1:
        raise QuorumError(f"--min-agreement must be above 0 and at most 1 (got {min_agreement})")
    files.check_new_folder(out, "review")  # before the CSV is read: a mistake costs a second
    check_predictions_csv(csv)
    frame = read_predictions(csv)
    info = read_sidecar(csv, frame["path"].tolist())
    folder = info["folder"]
    if files.inside(out.parent, folder):
        raise QuorumError(f"--out {out} is inside the folder {csv} was written for, {folder}: the links would join "
                          "the images there (a later predict would vote on them twice); choose a folder outside it")
    _check_no_class_named_unknown(csv, frame, (info.get("run") or {}).get("classes"))
    unknown = kept_apart = 0
    if budget is None:
        flagged, unknown = flagged_rows(frame, min_agreement)
        # Rows of no known class go to _unknown/ whatever their agreement (the vote's label is wrong there).
        no_class = flagged_unknown(frame) & (frame["status"] == OK)
        flagged = frame[frame.index.isin(flagged.index) | no_class]
        flagged = flagged.assign(folder=flagged["prediction"].where(~no_class[flagged.index], UNKNOWN_DIR))
    else:
        def features(paths: list[str]) -> np.ndarray:  # --rank diverse reads every candidate: each as predict saw it
            check_rows_usable(csv, info, frame[frame["path"].isin(paths)], "votes")  # before the backbone loads
            return image_features(folder, paths)

        flagged, kept_apart = ranking.select(frame, budget, rank, seed, features=features)
    _check_labels(csv, flagged["prediction"], (info.get("run") or {}).get("classes"))
    check_rows_usable(csv, info, flagged, "votes")

    meaning = "every row that is not unanimous" if min_agreement >= 1.0 else "fewer members agree than that"
    why = (f"agreement below {min_agreement:g}: {meaning}; and every row flagged unknown" if budget is None else
           f"the {budget} rows most worth a label, by {rank}: label them in review.csv's order")
    with files.new_folder(out, "review") as work:
        how = _build(work, csv, out, frame, flagged, folder, why, kept_apart if budget is not None else None)
    per_class = flagged.get("folder", flagged["prediction"]).value_counts().to_dict()
    return ReviewResult(out, len(frame), len(flagged), unknown, {str(k): int(v) for k, v in per_class.items()}, how,
                        kept_apart, int((flagged.get("folder", flagged["prediction"]) == UNKNOWN_DIR).sum()))


def image_features(folder: Path, paths: list[str]) -> np.ndarray:
    """The frozen backbone's features of the rows `--rank diverse` clusters (at quorum check's size: 96 px)."""
    from quorum.models.features import frozen_features  # torch: loaded only when a ranking needs it

    return frozen_features(folder, paths, image_size=96, quiet=True)


def _check_no_class_named_unknown(csv: Path, frame: pd.DataFrame, classes: list[str] | None) -> None:
    """A class called `_unknown` would share its folder with the rows of no known class (and README.txt's copy
    command leaves `_` folders out)."""
    labels = {*(classes or []), *(column[2:] for column in class_columns(frame.columns)),
              *frame["prediction"].dropna().astype(str),
              *(label for name in members_of(frame.columns) for label in frame[member_columns(name)[0]].dropna())}
    if UNKNOWN_DIR in labels:
        raise QuorumError(f"{csv}: a class is named {UNKNOWN_DIR!r}, the folder review keeps for rows of no known "
                          "class: rename that class's folder in the labelled data and fine-tune again")


def _check_labels(csv: Path, labels: pd.Series, classes: list[str] | None) -> None:
    """Each label becomes a folder name: one of the run's classes (a class folder's name), never `..`,
    a path, or the name of a file review writes itself."""
    def fits(label) -> bool:
        plain = isinstance(label, str) and label not in ("", ".", "..", *RESERVED) and not set(label) & set("/\\\0")
        return plain and (classes is None or label in classes)

    wrong = sorted({str(label) for label in labels if not fits(label)})
    if wrong:
        known = f" (its classes: {', '.join(classes)})" if classes is not None else ""
        raise QuorumError(f"{csv} predicts label(s) its run does not have: {', '.join(map(repr, wrong[:3]))}{known}; "
                          "run quorum predict again")


def _build(work: Path, csv: Path, out: Path, frame: pd.DataFrame, flagged: pd.DataFrame, folder: Path, why: str,
           kept_apart: int | None) -> str:
    """Place the flagged files, review.csv and README.txt in `work`; returns how the files were placed.
    `kept_apart`: with a budget, the rows flagged unknown the ranking left out (None: they are placed)."""
    ranked = kept_apart is not None
    kinds, targets = set(), []
    for path, label in zip(flagged["path"], flagged.get("folder", flagged["prediction"])):
        # Sub-folders kept, not flattened: a/b.png and a__b.png must never meet at one name.
        target = work / label / path
        if not files.inside(target, work):  # label and path were checked one by one: this checks them together
            raise QuorumError(f"{csv}: the row of {path!r} would be placed outside {out}: run quorum predict again")
        target.parent.mkdir(parents=True, exist_ok=True)
        kinds.add(_place(folder / path, target))
        targets.append(target.relative_to(work).as_posix())
    how = " and ".join(sorted(kinds)) or "links"
    names = members_of(frame.columns)
    listing = pd.DataFrame({"file": targets, "source": [str(folder / path) for path in flagged["path"]],
                            "prediction": flagged["prediction"].tolist(),
                            "agreement": flagged["agreement"].tolist(),
                            "unknown": (flagged.get("folder", flagged["prediction"]) == UNKNOWN_DIR).tolist(),
                            **{name: flagged[member_columns(name)[0]].tolist() for name in names}})
    if ranked:
        listing = listing.assign(rank=flagged["rank"].tolist(), score=flagged["score"].round(6).tolist())
    files.write_csv(work / "review.csv", listing)
    no_class = int((flagged.get("folder", flagged["prediction"]) == UNKNOWN_DIR).sum())
    unknown_note = (KEPT_APART.format(count=kept_apart) if ranked else
                    PLACED_UNKNOWN.format(unknown_dir=UNKNOWN_DIR, count=no_class))
    files.write_text(work / "README.txt", README.format(count=len(flagged), rows=len(frame), csv=csv, why=why,
                                                         out=out, how=how, folder=folder, unknown_note=unknown_note,
                                                         or_unknown="" if ranked else f", or in {UNKNOWN_DIR}/"))
    return how


def _place(source: Path, target: Path) -> str:
    """A hard link, else an absolute symbolic link, else a copy; returns which. Each makes `target` anew:
    an existing name there is an error, never a file to write through."""
    try:
        os.link(source, target)
        return "hard links"
    except FileExistsError:
        raise
    except OSError:
        pass
    try:
        os.symlink(source.resolve(), target)
        return "symbolic links"
    except FileExistsError:
        raise
    except OSError:
        pass
    with open(source, "rb") as original, open(target, "xb") as copy:
        shutil.copyfileobj(original, copy)
    shutil.copystat(source, target)
    return "copies"
