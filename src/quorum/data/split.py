"""Labelled image folders and the train/validation split that every model of a project shares.

The split is made once and saved as `<models_dir>/split.csv`, so every model is validated on the
same images and the ensemble can be scored honestly. Unreadable files are found once, when the
split is made, and recorded there with the reason.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Dataset

from quorum import files
from quorum.console import say
from quorum.data.images import (
    HIDDEN_FOLDER,
    Scan,
    UnreadableImage,
    check_utf8_names,
    load_rgb,
    scan_images,
)
from quorum.errors import QuorumError

SPLIT_FILE = "split.csv"
SPLIT_SETTINGS = "split.csv.json"  # the --val-fraction and --seed it was drawn with (null: the folder's own)


@dataclass(frozen=True)
class Split:
    root: Path
    classes: tuple[str, ...]
    table: pd.DataFrame  # path (relative to root), label, subset (train | val | unreadable), reason
    digest: str  # fingerprint stored in each model.json: same digest, same validation images
    skipped: str = ""  # what the scan passed over, e.g. 'skipped 3 files (1 .json, 2 .txt)'
    # {"val_fraction", "seed"} the split was drawn with (None each: the folder's own train/ and val/);
    # {} for a split.csv saved without them
    drawn_with: dict = field(default_factory=dict)

    def items(self, subset: str) -> list[tuple[str, int]]:
        """(relative path, class index) for the train or val subset, in file order."""
        index = {name: i for i, name in enumerate(self.classes)}
        rows = self.table[self.table.subset == subset]
        return [(path, index[label]) for path, label in zip(rows.path, rows.label)]

    @property
    def unreadable(self) -> pd.DataFrame:
        return self.table[self.table.subset == "unreadable"]


def read_split_table(path: Path) -> pd.DataFrame:
    """A split.csv as quorum writes it (path, label, subset, reason), or one Error line naming it: a file of
    that name that quorum did not write (a user's own, in the folder given as --models-dir) is never read as
    the shared split, nor replaced by one."""
    try:
        table = files.read_csv(path, keep_default_na=False, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        table = None
    if table is None or not {"path", "label", "subset"} <= set(table.columns):
        raise QuorumError(f"{path} is not a split quorum wrote (columns path, label, subset, reason): move it "
                          "away, or choose another --models-dir")
    return table


def scan_labelled(root: Path) -> pd.DataFrame:
    """Every image under `root` as (path, label, given_subset); classes are the sub-folder names."""
    return scan_labelled_counting(root)[0]


def scan_labelled_counting(root: Path) -> tuple[pd.DataFrame, Scan]:
    """`scan_labelled`, and a Scan whose `skipped` counts every file that is not an image of a class."""
    root = Path(root)
    if not root.is_dir():
        raise QuorumError(f"data folder {root} does not exist: give --data a folder with one sub-folder per class")
    has_given_split = (root / "train").is_dir() and (root / "val").is_dir()
    rows, skipped = [], Counter()
    for subset in (("train", "val") if has_given_split else ("",)):
        base = root / subset
        class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        check_utf8_names(base, class_dirs)  # a class name is a label in every CSV and model.json
        if not class_dirs:
            raise QuorumError(f"{base} has no class sub-folders: put each class's images in {base}/<class>/")
        # Beside the class folders: files (a README), hidden folders; counted as a scan counts them.
        for entry in base.iterdir():
            if entry.name.startswith("."):
                skipped["hidden" if not entry.is_dir() else HIDDEN_FOLDER] += 1
            elif not entry.is_dir():
                skipped[entry.suffix.lower() or "no extension"] += 1
        for class_dir in class_dirs:
            scan = scan_images(class_dir)
            skipped += scan.skipped
            if not scan.images:
                raise QuorumError(f"class folder {class_dir} has no images: add some or remove the folder")
            rows += [((p.relative_to(root)).as_posix(), class_dir.name, subset or None) for p in scan.images]
    table = pd.DataFrame(rows, columns=["path", "label", "given_subset"])
    if table.label.nunique() < 2:
        raise QuorumError(f"{root} has only one class ({table.label.iloc[0]}): "
                          "a classifier needs at least two class folders")
    return table, Scan([], skipped)


class _ReadCheck(Dataset):
    """Decodes each file once, in worker processes, to find the unreadable ones before training."""

    def __init__(self, root: Path, paths: list[str]):
        self.root, self.paths = root, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        try:
            load_rgb(self.root / self.paths[i])
            return ""
        except UnreadableImage as exc:
            return exc.reason


def find_unreadable(root: Path, paths: list[str], workers: int) -> list[str]:
    """A reason for each path: '' for a readable image."""
    loader = DataLoader(_ReadCheck(root, paths), batch_size=None, num_workers=workers)
    return list(loader)


def stratified_subsets(labels: pd.Series, val_fraction: float, seed: int) -> list[str]:
    """'train' or 'val' per row: each class (with 2+ images) gives about `val_fraction` to val."""
    subsets = np.array(["train"] * len(labels), dtype=object)
    rng = np.random.default_rng(seed)
    for label in sorted(labels.unique()):
        positions = np.flatnonzero(labels.to_numpy() == label)
        n_val = int(round(len(positions) * val_fraction)) if len(positions) > 1 else 0
        n_val = min(max(n_val, 1 if len(positions) > 1 else 0), len(positions) - 1)
        subsets[rng.permutation(positions)[:n_val]] = "val"
    return list(subsets)


def make_split(root: Path, val_fraction: float, seed: int, workers: int = 0,
               scanned: pd.DataFrame | None = None) -> pd.DataFrame:
    scanned = scan_labelled(root) if scanned is None else scanned
    reasons = find_unreadable(Path(root), list(scanned.path), workers)
    table = scanned.assign(reason=reasons)
    readable = table[table.reason == ""]
    for label in sorted(table.label.unique()):
        if (readable.label == label).sum() == 0:
            broken = table[table.label == label]
            examples = ", ".join(f"{p}: {r}" for p, r in zip(broken.path[:3], broken.reason[:3]))
            raise QuorumError(f"class {label} in {root} has no readable image ({examples}): "
                              "replace the files or remove the folder")
    if table.given_subset.notna().all():
        subsets = list(readable.given_subset)
    else:
        subsets = stratified_subsets(readable.label.reset_index(drop=True), val_fraction, seed)
    table["subset"] = "unreadable"
    table.loc[readable.index, "subset"] = subsets
    return table[["path", "label", "subset", "reason"]]


def _digest(table: pd.DataFrame) -> str:
    text = table[["path", "label", "subset"]].to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _new_labels(before: set[str], table: pd.DataFrame) -> list[str]:
    """Each class folder of `table` that `before` lacks, with its image count."""
    counts = table.label.value_counts()
    return [f"{label} ({counts[label]} images)" for label in sorted(set(counts.index) - before)]


def load_or_make_split(root: Path, models_dir: Path, val_fraction: float, seed: int, resplit: bool = False,
                       workers: int = 0) -> tuple[Split, bool]:
    """The saved split if the files still match it, else a new one (saved). Returns (split, is_new)."""
    split_path = Path(models_dir) / SPLIT_FILE
    current, scan = scan_labelled_counting(root)
    # Two finetunes starting at once in a fresh models dir: the second waits and then reuses the first's
    # split, instead of making another one that validates on the other's training images.
    with files.exclusive(files.lock_beside(split_path)):
        table, is_new, drawn_with = _read_or_make(root, split_path, current, val_fraction, seed, resplit, workers)
    classes = tuple(sorted(table.label.unique()))
    return Split(Path(root), classes, table.reset_index(drop=True), _digest(table), scan.summary(), drawn_with), is_new


def _read_or_make(root: Path, split_path: Path, current: pd.DataFrame, val_fraction: float, seed: int,
                  resplit: bool, workers: int) -> tuple[pd.DataFrame, bool, dict]:
    """(table, is_new, the values it was drawn with: `Split.drawn_with`)"""
    if split_path.is_file() and not resplit:
        table = read_split_table(split_path)
        saved_files = set(zip(table.path, table.label))
        current_files = set(zip(current.path, current.label))
        if saved_files != current_files:
            added, removed = len(current_files - saved_files), len(saved_files - current_files)
            new = _new_labels(set(table.label), current)
            raise QuorumError(
                f"the images in {root} changed since {split_path} was made ({added} added, {removed} removed"
                f"{'; new class folder(s): ' + ', '.join(new) if new else ''}): add --resplit to make a new split"
                f"{' and accept them as new labels' if new else ''} (then fine-tune the other models again so all "
                "share it)"
            )
        is_new = False
        settings = split_path.with_name(SPLIT_SETTINGS)
        drawn_with = json.loads(settings.read_text()) if settings.is_file() else {}
    else:
        before = set(read_split_table(split_path).label) if split_path.is_file() else None
        table = make_split(root, val_fraction, seed, workers, scanned=current)
        new = _new_labels(before, table) if before is not None else []
        if new:  # e.g. a class folder a person made while sorting `quorum review`'s images
            say(f"[yellow]New label(s) accepted: {', '.join(new)} (class folders in {root} that the previous split "
                "did not have); models fine-tuned before do not know them: fine-tune every model again[/yellow]")
        given = current.given_subset.notna().all()
        drawn_with = {"val_fraction": None if given else val_fraction, "seed": None if given else seed}
        files.write_json(split_path.with_name(SPLIT_SETTINGS), drawn_with)  # first: a split.csv is never without it
        files.write_csv(split_path, table)
        is_new = True
    return table, is_new, drawn_with
