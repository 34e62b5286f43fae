"""`quorum review`: the rows a person should look at, laid out as folders they can sort by hand.

The rows below an agreement level (default 1.0: every row that is not unanimous) go into
`OUT/<predicted class>/`, as hard links where the file system allows (moving one moves nothing of
the original), else symbolic links, else copies. `OUT/README.txt` says what to do, and
`OUT/review.csv` lists each file with its source and every member's vote. With a budget, the
folder holds the N rows most worth a label instead (`ranking`), and review.csv lists them in the
order to label them, with their rank and score.

The folder is built as `.OUT.partial` beside OUT and renamed into place at the end, so a failed
run leaves nothing half-written; an existing OUT is never written into.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from quorum import files
from quorum.data.unlabelled import changed_files, check_predictions_csv, read_sidecar
from quorum.errors import QuorumError
from quorum.predict import ranking
from quorum.predict.table import OK, member_columns, members_of, read_predictions
from quorum.predict.trust import below
from quorum.predict.vote import MAJORITY, TIE_BREAKER, UNKNOWN

README = """Images to review: {count} of {rows} rows of {csv}
({why}). Each sits in the folder of the class the vote
predicted; review.csv lists where each came from and what every member voted.

What to do:
1. Look at each image and move it into the folder of its true class. A class the models do
   not know yet: create a folder for it here (e.g. mkdir "{out}/Hat"); quorum accepts it as a
   new label when you fine-tune, and says so.
2. Delete the images you cannot tell (or that belong to no class).
3. Add the sorted folders to your labelled data, e.g.
       cp -rn "{out}"/*/ LABELLED/
   then fine-tune again with --resplit (the labelled images changed, so the shared split is made
   anew and every model should be fine-tuned again on it).

The files here are {how} of the originals in {folder}: moving or deleting them here leaves the
originals alone.
"""


@dataclass(frozen=True)
class ReviewResult:
    out: Path
    rows: int  # rows in the CSV
    flagged: int  # files placed
    unknown: int  # lazy rows whose agreement is unknown: not placed
    per_class: dict[str, int]
    how: str  # hard links, symbolic links or copies
    kept_apart: int = 0  # with a budget: rows flagged `unknown` (no known class), left out of the ranking


def flagged_rows(frame: pd.DataFrame, min_agreement: float = 1.0) -> tuple[pd.DataFrame, int]:
    """(rows below `min_agreement`, count of lazy rows whose agreement is unknown) of a predictions table."""
    ok = frame[frame["status"] == OK]
    agreement = ok["agreement"].astype(float)
    if min_agreement >= 1.0:  # "not unanimous" is known wherever decided_by is, even in a lazy row
        return ok[ok["decided_by"].isin([MAJORITY, TIE_BREAKER])], int((ok["decided_by"] == UNKNOWN).sum())
    return ok[below(agreement, min_agreement)], int(agreement.isna().sum())


def review(csv: Path, out: Path, min_agreement: float = 1.0, budget: int | None = None, rank: str = "disagreement",
           seed: int = 0) -> ReviewResult:
    """Place the rows below `min_agreement`; with `budget`, the `budget` rows `rank` puts first instead."""
    csv, out = Path(csv), Path(out)
    if not 0 < min_agreement <= 1:
        raise QuorumError(f"--min-agreement must be above 0 and at most 1 (got {min_agreement})")
    if out.exists():
        raise QuorumError(f"--out {out} already exists: give a new folder (a review folder is written whole)")
    if not out.parent.is_dir():
        raise QuorumError(f"cannot write {out}: {out.parent} does not exist; create it or choose another --out")
    check_predictions_csv(csv)
    frame = read_predictions(csv)
    info = read_sidecar(csv, frame["path"].tolist())
    folder = info["folder"]
    unknown = kept_apart = 0
    if budget is None:
        flagged, unknown = flagged_rows(frame, min_agreement)
    else:
        flagged, kept_apart = ranking.select(frame, budget, rank, seed)
    fingerprints = [info["fingerprints"][i] for i in flagged.index]
    changed = changed_files(folder, flagged["path"].tolist(), fingerprints)
    if changed:
        listed = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise QuorumError(f"{len(changed)} file(s) in {folder} changed or went missing since {csv} was written "
                          f"({listed}): run quorum predict again")

    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir()
        kinds = set()
        targets = []
        for path, label in zip(flagged["path"], flagged["prediction"]):
            target = work / label / path.replace("/", "__")  # one folder level: sub-folders flattened
            target.parent.mkdir(exist_ok=True)
            kinds.add(_place(folder / path, target))
            targets.append(target.relative_to(work).as_posix())
        how = " and ".join(sorted(kinds)) or "links"
        names = members_of(frame.columns)
        listing = pd.DataFrame({"file": targets, "source": [str(folder / path) for path in flagged["path"]],
                                "prediction": flagged["prediction"].tolist(),
                                "agreement": flagged["agreement"].tolist(),
                                **{name: flagged[member_columns(name)[0]].tolist() for name in names}})
        if budget is not None:
            listing = listing.assign(rank=flagged["rank"].tolist(), score=flagged["score"].round(6).tolist())
        files.write_csv(work / "review.csv", listing)
        meaning = "every row that is not unanimous" if min_agreement >= 1.0 else "fewer members agree than that"
        why = (f"agreement below {min_agreement:g}: {meaning}" if budget is None else
               f"the {budget} rows most worth a label, by {rank}: label them in review.csv's order")
        files.write_text(work / "README.txt", README.format(count=len(flagged), rows=len(frame), csv=csv,
                                                             why=why, out=out,
                                                             how=how, folder=folder))
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    per_class = flagged["prediction"].value_counts().to_dict()
    return ReviewResult(out, len(frame), len(flagged), unknown, {str(k): int(v) for k, v in per_class.items()}, how,
                        kept_apart)


def _place(source: Path, target: Path) -> str:
    """A hard link, else an absolute symbolic link, else a copy; returns which."""
    try:
        os.link(source, target)
        return "hard links"
    except OSError:
        pass
    try:
        os.symlink(source.resolve(), target)
        return "symbolic links"
    except OSError:
        shutil.copy2(source, target)
        return "copies"
