"""The predictions table: its columns, the check that --out can be written, the CSV and the summary.

Columns, in order: path, prediction, votes, members, agreement, decided_by, confidence, then per
member <name> and <name>_p, then p_<class> (with probs), review (with min_agreement), status, error.
An unreadable file's row has only path, status=error and error filled in.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quorum import files
from quorum.errors import QuorumError
from quorum.predict.vote import DECIDED_BY, mean_probability, vote

VOTE_COLUMNS = ["path", "prediction", "votes", "members", "agreement", "decided_by", "confidence"]
STATUS_COLUMNS = ["status", "error"]
OK, ERROR = "ok", "error"
CSV_DECIMALS = 6


@dataclass(frozen=True)
class MemberOutputs:
    """What every member said about every image, before the vote."""

    probs: np.ndarray  # (members, images, classes) float32; NaN where a member did not run
    ran: np.ndarray  # (members, images) bool
    errors: list[str | None]  # per image: why it could not be read, or None

    def take(self, indices: list[int]) -> "MemberOutputs":
        return MemberOutputs(self.probs[:, indices], self.ran[:, indices], [self.errors[i] for i in indices])


def columns(names: list[str], classes: tuple[str, ...], with_probs: bool, with_review: bool) -> list[str]:
    member_columns = [column for name in names for column in (name, f"{name}_p")]
    class_columns = [f"p_{name}" for name in classes] if with_probs else []
    return VOTE_COLUMNS + member_columns + class_columns + (["review"] if with_review else []) + STATUS_COLUMNS


def check_columns(names: list[str], classes: tuple[str, ...], with_probs: bool, with_review: bool) -> None:
    """A model named like another column (`status`, `p_cat`, ...) would silently overwrite it."""
    counts = Counter(columns(names, classes, with_probs, with_review))
    clashes = [column for column, count in counts.items() if count > 1]
    if clashes:
        raise QuorumError(f"model name clashes with the CSV column '{clashes[0]}': rename that model's folder")


def to_frame(paths: list[str], names: list[str], classes: tuple[str, ...], outputs: MemberOutputs, tie_breaker: int,
             with_probs: bool = False, min_agreement: float | None = None) -> pd.DataFrame:
    """Vote on the readable rows and lay everything out as the CSV's table (`paths` relative, POSIX)."""
    ok = np.array([error is None for error in outputs.errors])
    good = np.flatnonzero(ok)
    label_of = np.asarray(classes, dtype=object)
    frame = pd.DataFrame({"path": paths})
    table = {}
    if len(good):  # vote only where some member ran: unreadable rows take no part at all
        probs, ran = outputs.probs[:, good], outputs.ran[:, good]
        result = vote(probs, tie_breaker, ran)
        table = {"prediction": label_of[result.label], "votes": result.votes, "members": result.members,
                 "agreement": result.votes / result.members, "decided_by": result.decided_by,
                 "confidence": result.confidence}
        for m, name in enumerate(names):
            top = np.nan_to_num(probs[m], nan=-1.0).argmax(axis=1)
            table[name] = np.where(ran[m], label_of[top], None)
            table[f"{name}_p"] = np.where(ran[m], np.nan_to_num(probs[m], nan=-1.0).max(axis=1).astype(float), np.nan)
        if with_probs:  # the mean over the members that ran, as the vote's confidence is
            mean = mean_probability(probs, ran)
            table.update({f"p_{name}": mean[:, c] for c, name in enumerate(classes)})
        if min_agreement is not None:
            table["review"] = table["agreement"] < min_agreement
    for column in columns(names, classes, with_probs, min_agreement is not None)[1:-2]:
        values = pd.Series(table[column], index=good) if table else pd.Series(dtype=object)
        frame[column] = values.reindex(frame.index)
    frame["status"] = np.where(ok, OK, ERROR)
    frame["error"] = [error or "" for error in outputs.errors]
    return typed(frame, names)


def typed(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Each column in the type `to_frame` gives it, whatever the rows went through (CSV, JSON, concat)."""
    labels = {"path", "prediction", "decided_by", "status", *names}
    frame = frame.copy()
    for column in frame.columns:
        if column in labels:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        elif column == "error":
            frame[column] = frame[column].fillna("").astype(str)
        else:
            kind = {"votes": "Int64", "members": "Int64", "review": "boolean"}.get(column, "float64")
            frame[column] = frame[column].astype(kind)
    return frame


def assemble(parts: list[pd.DataFrame], positions: list[int], names: list[str]) -> pd.DataFrame:
    """Join parts whose index is each row's position in the file list; every position once, in order."""
    filled = [typed(part, names) for part in parts if len(part)] or [parts[0]]  # concat warns on empty parts
    frame = pd.concat(filled).sort_index()
    if frame.index.tolist() != list(positions):  # a bug, not a user mistake: never write such a table
        raise RuntimeError(f"rows do not cover the files exactly once ({len(frame)} rows for {len(positions)} files)")
    return typed(frame.reset_index(drop=True), names)


def read_predictions(path: Path, names: list[str]) -> pd.DataFrame:
    """A predictions CSV read back exactly as written: only empty fields are missing (a class may be `NA`)."""
    labels = ["path", "prediction", "decided_by", "status", "error", *names]
    frame = pd.read_csv(path, dtype={column: object for column in labels}, keep_default_na=False, na_values=[""])
    return typed(frame, names)


def check_writable(out: Path) -> None:
    """Fail now, before models load and images decode, if `out` cannot be written."""
    out = Path(out)
    if out.is_dir():
        raise QuorumError(f"--out {out} is a folder: give a file name, e.g. {out / 'predictions.csv'}")
    parent = out.parent
    if not parent.is_dir():
        problem = "is a file, not a folder" if parent.exists() else "does not exist"
        raise QuorumError(f"cannot write {out}: {parent} {problem}; create the folder or choose another --out")
    try:  # the CSV is written beside `out` and moved into place, so the folder must take new files
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{out.name}.", suffix=".check"):
            pass
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise QuorumError(f"cannot write {out}: {reason}; choose another --out") from None


def write_predictions(frame: pd.DataFrame, out: Path) -> None:
    """Write the CSV under a temporary name and move it into place: never a truncated file."""
    files.write_csv(Path(out), frame.round(CSV_DECIMALS))


def closing_lines(frame: pd.DataFrame) -> list[str]:
    """A few lines for a person: rows, errors, predictions per class, how rows were decided."""
    ok = frame[frame["status"] == OK]
    lines = [f"{len(frame)} rows, {len(frame) - len(ok)} errors"]
    if len(ok):
        counts = ok["prediction"].value_counts()
        lines.append("predicted: " + ", ".join(f"{label} {count}" for label, count in counts.items()))
        decided = ok["decided_by"].value_counts()
        how = ", ".join(f"{decided.get(kind, 0)} {kind}" for kind in DECIDED_BY)
        lines.append(f"decided: {how} (tie-breaker {frame.attrs.get('tie_breaker', '?')})")
    if "review" in frame:
        lines.append(f"flagged for review: {int(ok['review'].sum())} (agreement < {frame.attrs.get('min_agreement')})")
    names = frame.attrs.get("members", [])
    if frame.attrs.get("lazy") and names:
        possible = len(ok) * len(names)
        skipped = int(ok[names].isna().to_numpy().sum())  # a member's label is empty only where it did not run
        lines.append(f"lazy: skipped {skipped} of {possible} member runs ({skipped / max(possible, 1):.0%})")
    return lines
