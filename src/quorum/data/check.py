"""What a look at the files themselves finds in a labelled folder: copies, odd images, class counts.

Each finding is one row of `quorum check`'s table: (path, issue, score, suggested_label,
other_path, detail). A pair of copies gives one row for each thing wrong with it:
- `conflict`: the two files carry different labels;
- `leak`: one is in the shared split's training share, the other in its validation share;
- `duplicate`: neither, a copy all the same (it counts twice in training);
- `unlabelled copy`: a labelled image is also in the unlabelled folder.
Copies are exact (the same SHA-256) or near (cosine similarity of frozen features at least
NEAR_COSINE). Nothing here writes: the folder is only read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from quorum import files
from quorum.data.images import UnreadableImage, load_rgb
from quorum.errors import QuorumError

COLUMNS = ["path", "issue", "score", "suggested_label", "other_path", "detail"]
TINY_PIXELS = 16  # shorter side: below every backbone's smallest useful input (Fashion-MNIST's 28 px pass)
EXTREME_ASPECT = 4.0  # longer side over shorter: a centre crop keeps a quarter of it or less
BLANK_SHARE = 0.98  # of the pixels within BLANK_LEVELS grey levels of the median: nothing to see
BLANK_LEVELS = 8
IMBALANCE = 0.5  # a class with under half the images of the largest one
# Measured on Fashion-MNIST (benchmarks/bench_loop.py): distinct images of one class reached 0.97 with
# EfficientNet-Lite0's features, a re-encoded, resized copy stays above 0.985.
NEAR_COSINE = 0.985


def check_options(data: Path, unlabelled: Path | None, out: Path) -> None:
    """Every mistake in the options, before an image is read or torch loads."""
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise QuorumError(f"DATA {data} is not a folder: give the labelled folder (one sub-folder per class)")
    if unlabelled is not None and not Path(unlabelled).is_dir():
        raise QuorumError(f"--unlabelled {unlabelled} is not a folder: give the folder of unlabelled images")
    if out.exists():
        raise QuorumError(f"--out {out} already exists: give a new folder (a check folder is written whole)")
    if not out.parent.is_dir():
        raise QuorumError(f"cannot write {out}: {out.parent} does not exist; create it or choose another --out")
    if out.resolve().is_relative_to(data.resolve()):
        raise QuorumError(f"--out {out} is inside DATA {data}: check never writes there; choose a folder outside it")


def finding(path: str, issue: str, score: float = float("nan"), suggested_label: str = "", other_path: str = "",
            detail: str = "") -> dict:
    return {"path": path, "issue": issue, "score": score, "suggested_label": suggested_label,
            "other_path": other_path, "detail": detail}


def odd_image(path: Path) -> tuple[str, str] | None:
    """(issue, detail) for an unreadable, tiny, extremely long or blank image; None for an ordinary one."""
    try:
        image = load_rgb(path)
    except UnreadableImage as exc:
        return "unreadable", exc.reason
    short, long = sorted(image.size)
    if short < TINY_PIXELS:
        return "tiny", f"{image.width}x{image.height} px"
    if long / short > EXTREME_ASPECT:
        return "aspect", f"{image.width}x{image.height} px ({long / short:.1f}:1)"
    grey = np.asarray(image.convert("L"), dtype=np.int16)
    share = float((np.abs(grey - np.median(grey)) <= BLANK_LEVELS).mean())
    if share >= BLANK_SHARE:
        return "blank", f"{share:.1%} of the pixels one shade"
    return None


def odd_images(root: Path, paths: list[str]) -> list[dict]:
    return [finding(path, issue, detail=detail) for path in paths if (found := odd_image(Path(root) / path))
            for issue, detail in [found]]


def hashes(root: Path, paths: list[str]) -> list[str]:
    return [files.sha256(Path(root) / path) for path in paths]


def copies(hashes_a: list[str], features_a: np.ndarray, hashes_b: list[str] | None = None,
           features_b: np.ndarray | None = None) -> list[tuple[int, int, float, bool]]:
    """(i, j, similarity, exact) for every copy: within A (i < j), or between A and B when B is given."""
    within = hashes_b is None
    hashes_b = hashes_a if within else hashes_b
    features_b = features_a if within else features_b
    found = {}
    by_hash: dict[str, list[int]] = {}
    for j, digest in enumerate(hashes_b):
        by_hash.setdefault(digest, []).append(j)
    for i, digest in enumerate(hashes_a):
        for j in by_hash.get(digest, []):
            if not within or i < j:
                found[(i, j)] = (1.0, True)
    similarity = cosine(features_a, features_b)
    if within:
        similarity = np.triu(similarity, k=1)
    for i, j in zip(*np.nonzero(similarity >= NEAR_COSINE)):
        found.setdefault((int(i), int(j)), (float(similarity[i, j]), False))
    return sorted((i, j, score, exact) for (i, j), (score, exact) in found.items())


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of `a` with every row of `b`; 0 where a row is missing (NaN)."""
    def unit(x):
        x = np.nan_to_num(np.asarray(x, dtype=np.float64))
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return unit(a) @ unit(b).T


def pair_findings(table: pd.DataFrame, pairs: list[tuple[int, int, float, bool]]) -> list[dict]:
    """The rows for copies within the labelled table (path, label, subset)."""
    rows = []
    for i, j, score, exact in pairs:
        a, b = table.iloc[i], table.iloc[j]
        how = "exact copy (same SHA-256)" if exact else f"near copy (cosine {score:.3f})"
        kinds = []
        if a.label != b.label:
            kinds.append(("conflict", f"{how}; labelled {b.label} here, {a.label} there"))
        if {a.subset, b.subset} == {"train", "val"}:
            kinds.append(("leak", f"{how}; {b.subset} share here, {a.subset} there"))
        for issue, detail in kinds or [("duplicate", how)]:
            rows.append(finding(b.path, issue, score, suggested_label=a.label if issue == "conflict" else "",
                                other_path=a.path, detail=detail))
    return rows


def unlabelled_findings(table: pd.DataFrame, unlabelled: list[str], folder: Path,
                        pairs: list[tuple[int, int, float, bool]]) -> list[dict]:
    rows = []
    for i, j, score, exact in pairs:
        how = "exact copy (same SHA-256)" if exact else f"near copy (cosine {score:.3f})"
        rows.append(finding(table.path.iloc[i], "unlabelled copy", score, other_path=str(Path(folder) / unlabelled[j]),
                            detail=f"{how}; already labelled {table.label.iloc[i]}"))
    return rows


def class_counts(table: pd.DataFrame) -> tuple[pd.Series, list[dict]]:
    """Images per class, and a finding for each class under IMBALANCE times the largest."""
    counts = table.label.value_counts().sort_index()
    largest = counts.max()
    rows = [finding(f"{label}/", "imbalance", count / largest, detail=f"{count} images, the largest class has {largest}")
            for label, count in counts.items() if count < IMBALANCE * largest]
    return counts, rows
