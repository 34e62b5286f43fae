"""A predictions CSV as data: which folder its rows came from and whether its files are unchanged.

`quorum predict` writes `<csv>.json` beside the CSV: the folder, each file's fingerprint (size and
mtime), and the run. A reader needs it because the CSV's paths are relative to that folder, and a
label is only worth something for the file it was given to.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

import pandas as pd

from quorum import files
from quorum.errors import QuorumError

SIDECAR_SUFFIX = ".json"
# As quorum.predict.trust_table compares levels: to two decimals, so 0.67 means 2 of 3.
AGREEMENT_TOLERANCE = 0.005


def check_predictions_csv(csv: Path | str, option: str = "") -> Path:
    """A predict CSV given to review, report --preds or finetune --pseudo-labels is there; if not,
    one line that says how to make it (checked before torch loads: a mistake costs a second)."""
    csv = Path(csv)
    if not csv.is_file():
        named = f"{option} {csv}" if option else str(csv)
        probs = " --probs" if option == "--distill" else ""  # the soft targets are its p_<class> columns
        raise QuorumError(f"{named} does not exist: write one with quorum predict FOLDER{probs} --out {csv}")
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


def members_of(frame_columns) -> list[str]:
    """The member names of a predictions table, from its `<name>_prediction` columns, in order."""
    suffix = "_prediction"
    return [column[: -len(suffix)] for column in frame_columns
            if column.endswith(suffix) and f"{column[: -len(suffix)]}_confidence" in frame_columns]


def class_columns(frame_columns) -> list[str]:
    """The `p_<class>` columns (predict --probs): every `p_` column but a member's own two, since a model may be
    named `p_...`."""
    members = {f"{name}{suffix}" for name in members_of(frame_columns) for suffix in ("_prediction", "_confidence")}
    return [column for column in frame_columns if column.startswith("p_") and column not in members]


def flagged_unknown(frame: pd.DataFrame) -> pd.Series:
    """The rows predict flagged `unknown` (no known class); none where the CSV has no such column. A cell
    edited to 1 counts too: such a row is kept out of review's ranking and out of training alike."""
    if "unknown" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["unknown"].astype(str).str.lower().isin(["true", "1", "1.0"])


def check_rows_usable(csv: Path, info: dict, chosen: pd.DataFrame, what: str,
                      leave_out_gone: bool = False) -> pd.DataFrame:
    """The chosen rows, whose files lie inside the CSV's folder and are unchanged since it was written: what
    --pseudo-labels and --distill both need before training on them; else one error naming them. With
    `leave_out_gone`, a row whose file has left the folder (a person who labels an image moves it out) is left out
    of the rows returned rather than refused; a file changed in place is refused all the same."""
    if len(chosen) and not Path(info["folder"]).is_dir():  # said as such, not as every file changed
        raise QuorumError(f"the folder {csv} was written for, {info['folder']}, is not there (moved or deleted): run "
                          "quorum predict again on the folder where the images are now")
    check_inside(csv, info["folder"], chosen["path"].tolist())
    if leave_out_gone:
        chosen = chosen[chosen["path"].map(lambda path: (Path(info["folder"]) / path).exists()).astype(bool)]
    changed = changed_files(info["folder"], chosen["path"].tolist(), [info["fingerprints"][i] for i in chosen.index])
    if changed:
        listed = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise QuorumError(f"{len(changed)} file(s) in {info['folder']} changed since {csv} was written ({listed}): "
                          f"their {what} may no longer fit; run quorum predict again")
    return chosen
