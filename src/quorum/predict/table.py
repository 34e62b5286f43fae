"""The predictions table: its columns, the check that --out can be written, the CSV and the summary.

Columns, in order: path, prediction, votes, members, agreement, decided_by, confidence, then per
member (in name order) <name>_prediction and <name>_confidence, then p_<class> and consensus_kl
(with probs: the members' disagreement, `vote.consensus_kl`, that review --rank disagreement ranks by),
unknown_score and unknown (`predict.unknown`: no known class; empty where no line could be drawn),
review (with min_agreement), status, error. A member's two columns are named like the vote's own
`prediction` and `confidence`; `p_<class>` as in val_predictions.csv (a member may be named `p_...`: `class_columns`
tells them apart).
An unreadable file's row has only path, status=error and error filled in.

In a lazy run a row where members were skipped has `members` = every member (what a full run
says), `votes` and `agreement` empty (a skipped member might have agreed or not), `decided_by`
`unknown` unless it is determined, and `review` empty where the undecided vote could fall on
either side of the level.

Beside the CSV, `<csv>.json` records the folder, each file's fingerprint (size and mtime) and
the run, so a later reader (`finetune --pseudo-labels`, `review`, `report`) can find the files and
tell if one changed since.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quorum import files
from quorum.data.predictions_csv import flagged_unknown, members_of, paths_digest, sidecar
from quorum.errors import QuorumError
from quorum.predict.trust_table import at_least, at_least_lines, below, decided_by_lines
from quorum.predict.unknown import ENTROPY, Threshold, unknown_score
from quorum.predict.vote import DECIDED_BY, MAJORITY_RULE, UNKNOWN, consensus_kl, vote

VOTE_COLUMNS = ["path", "prediction", "votes", "members", "agreement", "decided_by", "confidence"]
UNKNOWN_COLUMNS = ["unknown_score", "unknown"]
CONSENSUS_KL = "consensus_kl"
STATUS_COLUMNS = ["status", "error"]
# Each file's fingerprint as it was decoded: carried with its row (and through --resume) into the sidecar, not the CSV.
FINGERPRINT = "fingerprint"
OK, ERROR = "ok", "error"
CSV_DECIMALS = 6
# What each column reads back as: `read_predictions(path)` gives exactly these (README: the CSV).
DTYPES = {"path": "str", "prediction": "str", "votes": "Int64", "members": "Int64", "agreement": "float64",
          "decided_by": "str", "confidence": "float64", "unknown_score": "float64", "unknown": "boolean",
          "review": "boolean", "status": "str", "error": "str"}


def member_columns(name: str) -> tuple[str, str]:
    """A member's label column and the probability it gave that label."""
    return f"{name}_prediction", f"{name}_confidence"


@dataclass(frozen=True)
class MemberOutputs:
    """What every member said about every image, before the vote."""

    probs: np.ndarray  # (members, images, classes) float32; NaN where a member did not run
    ran: np.ndarray  # (members, images) bool
    errors: list[str | None]  # per image: why it could not be read, or None
    fingerprints: list[str]  # per image: `file_fingerprint` when it was decoded
    distances: np.ndarray | None = None  # (members, images): `unknown.Neighbours.score`, where a member ran

    def take(self, indices: list[int]) -> MemberOutputs:
        return MemberOutputs(self.probs[:, indices], self.ran[:, indices], [self.errors[i] for i in indices],
                             [self.fingerprints[i] for i in indices],
                             None if self.distances is None else self.distances[:, indices])


def columns(names: list[str], classes: tuple[str, ...], with_probs: bool, with_review: bool) -> list[str]:
    per_member = [column for name in names for column in member_columns(name)]
    class_columns = [*(f"p_{name}" for name in classes), CONSENSUS_KL] if with_probs else []
    return (VOTE_COLUMNS + per_member + class_columns + UNKNOWN_COLUMNS + (["review"] if with_review else [])
            + STATUS_COLUMNS)


def check_columns(names: list[str], classes: tuple[str, ...], with_probs: bool, with_review: bool) -> None:
    """A model named like another column (`status`, `p_cat`, ...) would silently overwrite it."""
    counts = Counter(columns(names, classes, with_probs, with_review))
    clashes = [column for column, count in counts.items() if count > 1]
    if clashes:
        raise QuorumError(f"model name clashes with the CSV column '{clashes[0]}': rename that model's folder")


def to_frame(paths: list[str], names: list[str], classes: tuple[str, ...], outputs: MemberOutputs, tie_breaker: int,
             with_probs: bool = False, min_agreement: float | None = None,
             unknown_at: Threshold | None = None, rule: str = MAJORITY_RULE,
             weights: list[float] | None = None, vote_temperature: float = 1.0) -> pd.DataFrame:
    """Vote on the readable rows by `rule` (with `weights` for weighted, and the vote's temperature) and lay
    everything out as the CSV's table (`paths` relative, POSIX). `unknown_at`: where `unknown` starts (None or
    no value: the column stays empty)."""
    ok = np.array([error is None for error in outputs.errors])
    good = np.flatnonzero(ok)
    label_of = np.asarray(classes, dtype=object)
    frame = pd.DataFrame({"path": paths})
    table = {}
    if len(good):  # vote only where some member ran: unreadable rows take no part at all
        probs, ran = outputs.probs[:, good], outputs.ran[:, good]
        result = vote(probs, tie_breaker, ran, rule, weights, decimals=CSV_DECIMALS, temperature=vote_temperature)
        n_members = len(names)
        complete = result.members == n_members  # lazy: a skipped member might have agreed or not
        agreement = result.votes / n_members
        table = {"prediction": label_of[result.label], "votes": np.where(complete, result.votes, np.nan),
                 "members": np.full(len(good), n_members), "agreement": np.where(complete, agreement, np.nan),
                 "decided_by": result.decided_by, "confidence": result.confidence}
        for m, name in enumerate(names):
            top = np.nan_to_num(probs[m], nan=-1.0).argmax(axis=1)
            label_column, p_column = member_columns(name)
            table[label_column] = np.where(ran[m], label_of[top], None)
            table[p_column] = np.where(ran[m], np.nan_to_num(probs[m], nan=-1.0).max(axis=1).astype(float), np.nan)
        if with_probs:  # the rule's probabilities, as the confidence is: soft's label is their argmax
            table.update({f"p_{name}": result.combined[:, c] for c, name in enumerate(classes)})
            table[CONSENSUS_KL] = consensus_kl(probs, ran)
        distances = None if outputs.distances is None else outputs.distances[:, good]
        table["unknown_score"] = unknown_score(probs, ran, distances)
        flags = unknown_at.flag(table["unknown_score"]) if unknown_at is not None else None
        table["unknown"] = pd.array(np.full(len(good), None) if flags is None else flags, dtype="boolean")
        if min_agreement is not None:
            # Between what the members that ran give and what every skipped one agreeing would give.
            lowest, highest = agreement, (result.votes + n_members - result.members) / n_members
            review = np.where(below(highest, min_agreement), True,
                              np.where(at_least(lowest, min_agreement), False, None))
            table["review"] = pd.array(review, dtype="boolean")
    for column in columns(names, classes, with_probs, min_agreement is not None)[1:-2]:
        values = pd.Series(table[column], index=good) if table else pd.Series(dtype=object)
        frame[column] = values.reindex(frame.index)
    frame["status"] = np.where(ok, OK, ERROR)
    frame["error"] = [error or "" for error in outputs.errors]
    return typed(frame, names)


def typed(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Each column in the type `to_frame` gives it, whatever the rows went through (CSV, JSON, concat)."""
    labels = {"path", "prediction", "decided_by", "status", *(member_columns(name)[0] for name in names)}
    frame = frame.copy()
    for column in frame.columns:
        if column in labels:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        elif column in ("error", FINGERPRINT):
            frame[column] = frame[column].astype(object).fillna("").astype(str)  # an all-empty column reads as float
        else:
            kind = {"votes": "Int64", "members": "Int64", "review": "boolean",
                    "unknown": "boolean"}.get(column, "float64")
            frame[column] = frame[column].astype(kind)
    return frame


def assemble(parts: list[pd.DataFrame], positions: list[int], names: list[str]) -> pd.DataFrame:
    """Join parts whose index is each row's position in the file list; every position once, in order."""
    filled = [typed(part, names) for part in parts if len(part)] or [parts[0]]  # concat warns on empty parts
    frame = pd.concat(filled).sort_index()
    if frame.index.tolist() != list(positions):  # a bug, not a user mistake: never write such a table
        raise RuntimeError(f"rows do not cover the files exactly once ({len(frame)} rows for {len(positions)} files)")
    return typed(frame.reset_index(drop=True), names)


def read_predictions(path: Path, names: list[str] | None = None) -> pd.DataFrame:
    """A predictions CSV read back exactly as written: only empty fields are missing (a class may be `NA`).

    Without `names`, the members are the columns with a `<name>_prediction` and `<name>_confidence`.
    """
    header = files.read_csv(path, nrows=0).columns.tolist()
    names = members_of(header) if names is None else names
    labels = ["path", "prediction", "decided_by", "status", "error", *(member_columns(name)[0] for name in names)]
    frame = files.read_csv(path, dtype={column: object for column in labels}, keep_default_na=False, na_values=[""])
    return typed(frame, names)


def check_writable(out: Path, force: bool = False, protected: dict[str, Path] | None = None) -> None:
    """Fail now, before models load and images decode, if `out` cannot be written, or (without `force`)
    if it would replace a file that is not a quorum predictions CSV, or any file inside a `protected`
    folder ({what to call it: folder}: the models, the images)."""
    out = Path(out)
    files.check_name_length(out, "--out")  # its .json and progress folder are named after it
    if out.is_dir():
        raise QuorumError(f"--out {out} is a folder: give a file name, e.g. {out / 'predictions.csv'}")
    parent = out.parent
    if not parent.is_dir():
        problem = "is a file, not a folder" if parent.exists() else "does not exist"
        raise QuorumError(f"cannot write {out}: {parent} {problem}; create the folder or choose another --out")
    if not force:
        _check_replaceable(out, protected or {})
    files.check_can_write(parent, "--out", out)  # the CSV is written beside `out` and moved into place


def _check_replaceable(out: Path, protected: dict[str, Path]) -> None:
    """`out` and its sidecar replace only an earlier predictions CSV, never a user's file (an image, a model.json)."""
    existing = [path for path in (out, sidecar(out)) if path.exists() or path.is_symlink()]
    for path in existing:
        where = path.parent.resolve() / path.name  # the name that would be replaced, not what a link points at
        for what, folder in protected.items():
            if where.is_relative_to(Path(folder).resolve()):
                raise QuorumError(f"--out {out} would replace {path}, inside {what} {folder}: choose another --out, "
                                  "or add --force to replace it")
    if existing and not is_predictions_csv(out):
        raise QuorumError(f"--out {out} would replace {existing[0]}, which is not a quorum predictions CSV (with "
                          f"{sidecar(out).name} beside it): choose another --out, or add --force to replace it")


def is_predictions_csv(path: Path) -> bool:
    """A file with a predictions table's header and its sidecar beside it: what predict may write over."""
    if not (Path(path).is_file() and sidecar(path).is_file()):
        return False
    try:
        header = files.read_csv(path, nrows=0).columns.tolist()
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return False
    return header[: len(VOTE_COLUMNS)] == VOTE_COLUMNS and header[-len(STATUS_COLUMNS):] == STATUS_COLUMNS


def writing(out: Path):
    """Hold `.OUT.lock` while a run makes `out`: a second predict or merge of the same --out stops at once, where it
    replaced the first one's progress folder, and the two could leave one's CSV beside the other's .json."""
    return files.writing(out, "run")


def write_predictions(frame: pd.DataFrame, out: Path) -> None:
    """Write the CSV under a temporary name and move it into place: never a truncated file.

    Then `<out>.json`: the folder, each file's fingerprint and the run (`frame.attrs`), so that the
    rows can be traced to their files later. An old one is removed first: it must not vouch for
    the new CSV.
    """
    sidecar(out).unlink(missing_ok=True)
    files.write_csv(Path(out), frame.round(CSV_DECIMALS))
    folder = frame.attrs.get("folder")
    if folder is None:
        return
    fingerprints = frame.attrs.get("fingerprints") or [file_fingerprint(Path(folder) / path) for path in frame["path"]]
    files.write_json(sidecar(out), {"folder": str(folder), "run": frame.attrs.get("identity"),
                                    "vote": frame.attrs.get("vote"), "rows": len(frame),
                                    "paths": paths_digest(frame["path"].tolist()),
                                    "fingerprints": fingerprints, "unknown": frame.attrs.get("unknown")})


def file_fingerprint(path: Path) -> str:
    try:
        return files.fingerprint(path)
    except OSError:
        return ""  # an unreadable row's file may be gone: its row says why


def members_agreeing(rows: pd.DataFrame, names: list[str]) -> np.ndarray:
    """Per row, how many members voted its prediction (a member --lazy skipped counts as not agreeing)."""
    return sum((rows[member_columns(name)[0]] == rows["prediction"]).to_numpy() for name in names)


def expected_on_folder(frame: pd.DataFrame, names: list[str], trust: pd.DataFrame) -> pd.DataFrame:
    """`trust` (the validation trust table) with, per line, the folder's trusted rows of that kind (`folder_rows`)
    and the accuracy their calibrated confidence expects there (`folder_expected`, as predict's trust lines say).
    A --lazy run's exact agreement levels are unknown (skipped members), so only its other lines get figures."""
    readable = frame[frame["status"] == OK]
    ok = readable[~flagged_unknown(readable)]
    agreed = members_agreeing(ok, names)
    lazy = bool(ok[[member_columns(name)[0] for name in names]].isna().to_numpy().any())
    confidence = ok["confidence"].to_numpy(float)
    rows, expected = [], []
    for line in trust.itertuples():
        if line.group == "decided_by":
            mask = (ok["decided_by"] == line.level).to_numpy()
        elif line.group == "agreement" and not lazy:
            mask = agreed == int(line.level.split(" of ")[0])
        elif line.group == "at least":
            mask = agreed >= int(line.level.split(" of ")[0])
        else:
            mask = None
        rows.append(np.nan if mask is None else int(mask.sum()))
        expected.append(np.nan if mask is None or not mask.any() else float(confidence[mask].mean()))
    return trust.assign(folder_rows=rows, folder_expected=expected)


def closing_lines(frame: pd.DataFrame, trust: pd.DataFrame | None = None) -> list[str]:
    """A few lines for a person: rows, errors, predictions per class, how rows were decided and, with
    `trust` (`trust_table.trust_table` on validation), how often each kind was right there."""
    ok = frame[frame["status"] == OK]
    lines = [f"{len(frame)} rows, {len(frame) - len(ok)} errors"]
    flagged = flagged_unknown(ok)
    if "unknown" in ok:
        lines.append(unknown_line(int(flagged.sum()), len(ok), frame.attrs.get("unknown")))
    readable, ok = ok, ok[~flagged]  # a row of no known class is never among the trusted ones
    if len(ok):
        counts = ok["prediction"].value_counts()
        lines.append(("predicted: " if not flagged.any() else "predicted (rows not flagged unknown): ")
                     + ", ".join(f"{label} {count}" for label, count in counts.items()))
        decided = ok["decided_by"].value_counts()
        kinds = [*DECIDED_BY, *([UNKNOWN] if decided.get(UNKNOWN, 0) else [])]
        how = ", ".join(f"{decided.get(kind, 0)} {kind}" for kind in kinds)
        lines.append(f"decided: {how} (tie-breaker {frame.attrs.get('tie_breaker', '?')})")
        shares = {kind: decided.get(kind, 0) / len(ok) for kind in kinds if decided.get(kind, 0)}
        confidence = {kind: rows.to_numpy(float) for kind, rows in ok.groupby("decided_by")["confidence"]}
        lines.append("; ".join(decided_by_lines(shares, trust, confidence)))
        if decided.get(UNKNOWN, 0):
            lines.append(f"unknown: {decided[UNKNOWN]} rows of a --lazy run where the skipped members could still "
                         "have made it unanimous or not (their prediction is a full run's)")
    if "review" in frame:
        level = frame.attrs.get("min_agreement")
        unsure = int(ok["review"].isna().sum())
        lines.append(f"flagged for review: {int(ok['review'].sum())} (agreement below {level}, to 2 decimals)"
                     + (f"; {unsure} lazy rows could fall either side" if unsure else ""))
    names = frame.attrs.get("members", [])
    if frame.attrs.get("lazy") and names:
        possible = len(readable) * len(names)
        labels = [member_columns(name)[0] for name in names]
        skipped = int(readable[labels].isna().to_numpy().sum())  # a member's label is empty only where it did not run
        lines.append(f"lazy: skipped {skipped} of {possible} member runs ({skipped / max(possible, 1):.0%}); "
                     "confidence and p_<class> average the members that ran")
        agreed = members_agreeing(ok, names)
        lines += at_least_lines(agreed, len(names), trust, ok["confidence"].to_numpy(float))  # trusted rows only
    return lines


def unknown_line(flagged: int, rows: int, unknown: dict | None) -> str:
    """How many rows look like no labelled class, and where the line was drawn (`Threshold.as_dict`)."""
    if not unknown or unknown.get("threshold") is None:
        why = (unknown or {}).get("reason", "no line recorded")
        return f"no known class: none flagged ({why}); unknown_score is still written"
    fallback = (f"; unknown_score is the {unknown['score']}: {unknown['reason']}"
                if unknown.get("reason") and unknown.get("score") == ENTROPY else "")
    return (f"no known class: {flagged} of {rows} rows flagged unknown (unknown_score above "
            f"{unknown['threshold']:.3f}, which {unknown['keep']:.0%} of the {unknown['validation_images']} validation "
            "images stay under): left out of the lines below (as are the validation images above it), review puts "
            f"them in _unknown/{fallback}")
