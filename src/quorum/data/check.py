"""What a look at the files themselves finds in a labelled folder: copies, odd images, class counts.

Each finding is one row of `quorum check`'s table: (path, issue, score, suggested_label,
other_path, detail). A pair of copies gives one row for each thing wrong with it:
- `conflict`: the two files carry different labels;
- `leak`: one is in the shared split's training share, the other in its validation share;
- `duplicate`: neither, a copy all the same (it counts twice in training);
- `unlabelled copy`: a labelled image is also in the unlabelled folder.
Copies are exact (the same SHA-256) or near: the same picture re-encoded, resized or brightened
(cosine of grey thumbnails) or the same content (cosine of a backbone's frozen features). Nothing
here writes: the folder is only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from quorum import files
from quorum.data.images import UnreadableImage, load_rgb
from quorum.errors import QuorumError

COLUMNS = ["path", "issue", "score", "suggested_label", "other_path", "detail"]
TINY_PIXELS = 16  # shorter side: below every backbone's smallest useful input (Fashion-MNIST's 28 px pass)
EXTREME_ASPECT = 4.0  # longer side over shorter: a centre crop keeps a quarter of it or less
BLANK_SHARE = 0.98  # of the pixels within BLANK_LEVELS grey levels of the median: nothing to see
BLANK_LEVELS = 8
IMBALANCE = 0.5  # a class with under half the images of the largest one
# Near copies, measured on 1,010 Fashion-MNIST images (benchmarks/bench_loop.py): JPEG re-encoded and
# brightened copies kept a thumbnail cosine of 0.9996 or more, distinct images reached 0.9885; their
# features (EfficientNet-Lite0, 96 px) fell to 0.84 for such copies, while distinct images reached 0.934.
THUMB_PIXELS = 32
NEAR_PIXELS = 0.995
NEAR_FEATURES = 0.98  # the same content another way (a crop, another photo of it): features only


def check_options(data: Path, unlabelled: Path | None, out: Path) -> None:
    """Every mistake in the options, before an image is read or torch loads."""
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise QuorumError(f"DATA {data} is not a folder: give the labelled folder (one sub-folder per class)")
    if unlabelled is not None and not Path(unlabelled).is_dir():
        raise QuorumError(f"--unlabelled {unlabelled} is not a folder: give the folder of unlabelled images")
    if unlabelled is not None and (Path(unlabelled).resolve().is_relative_to(data.resolve())
                                   or data.resolve().is_relative_to(Path(unlabelled).resolve())):
        raise QuorumError(f"--unlabelled {unlabelled} and DATA {data} overlap: every labelled image would be its own "
                          "unlabelled copy; give a folder of unlabelled images outside DATA")
    if out.resolve().is_relative_to(data.resolve()):
        raise QuorumError(f"--out {out} is inside DATA {data}: check never writes there; choose a folder outside it")
    files.check_new_folder(out, "check")


def finding(path: str, issue: str, score: float = float("nan"), suggested_label: str = "", other_path: str = "",
            detail: str = "") -> dict:
    return {"path": path, "issue": issue, "score": score, "suggested_label": suggested_label,
            "other_path": other_path, "detail": detail}


@dataclass(frozen=True)
class Prints:
    """What copies are found by, per image: the SHA-256 of the file, a 32-px grey thumbnail with its mean
    removed (the same picture re-encoded, resized or brightened keeps it), and the backbone's features."""

    digests: list[str]
    thumbs: np.ndarray  # (images, 1024); NaN for an unreadable image
    features: np.ndarray  # (images, features); NaN for an unreadable image


def odd_image(image: Image.Image) -> tuple[str, str] | None:
    """(issue, detail) for a tiny, extremely long or blank image; None for an ordinary one."""
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


def look_at(root: Path, paths: list[str]) -> tuple[list[dict], np.ndarray]:
    """One decode per image: findings for the unreadable and odd ones, and every image's thumbnail."""
    rows, thumbs = [], np.full((len(paths), THUMB_PIXELS**2), np.nan)
    for i, path in enumerate(paths):
        try:
            image = load_rgb(Path(root) / path)
        except UnreadableImage as exc:
            rows.append(finding(path, "unreadable", detail=exc.reason))
            continue
        if found := odd_image(image):
            rows.append(finding(path, found[0], detail=found[1]))
        grey = np.asarray(image.convert("L").resize((THUMB_PIXELS, THUMB_PIXELS), Image.BILINEAR), dtype=np.float64)
        thumbs[i] = (grey - grey.mean()).ravel()
    return rows, thumbs


def hashes(root: Path, paths: list[str]) -> list[str]:
    """SHA-256 per file; a file that cannot be read gets a digest of its own name (it matches nothing), as does
    anything but a regular file: opening a named pipe called x.png would wait for a writer forever."""
    def digest(path: str) -> str:
        try:
            if Path(root, path).is_file():
                return files.sha256(Path(root) / path)
        except OSError:
            pass
        return f"unreadable:{root}/{path}"
    return [digest(path) for path in paths]


def copies(a: Prints, b: Prints | None = None) -> list[tuple[int, int, float, str]]:
    """(i, j, similarity, how) for every copy: within A (i < j), or between A and B when B is given."""
    within = b is None
    b = a if within else b
    found: dict[tuple[int, int], tuple[float, str]] = {}
    by_hash: dict[str, list[int]] = {}
    for j, digest in enumerate(b.digests):
        by_hash.setdefault(digest, []).append(j)
    for i, digest in enumerate(a.digests):
        for j in by_hash.get(digest, []):
            if not within or i < j:
                found[(i, j)] = (1.0, "exact copy (same SHA-256)")
    for what, level, x, y in (("pixels", NEAR_PIXELS, a.thumbs, b.thumbs),
                              ("features", NEAR_FEATURES, a.features, b.features)):
        for i, j, similarity in similar(x, y, level, within):
            found.setdefault((i, j), (similarity, f"near copy ({what}: cosine {similarity:.4f})"))
    return sorted((i, j, score, how) for (i, j), (score, how) in found.items())


def similar(a: np.ndarray, b: np.ndarray, level: float, within: bool, block: int = 1024):
    """(i, j, cosine) of every row pair at or above `level`; rows with NaN (unreadable) never match.
    In blocks of rows, so the similarity matrix of a large folder is never whole in memory."""
    if np.isnan(a).any(axis=1).all() or np.isnan(b).any(axis=1).all():  # no readable image on one side: its
        return  # features have no width to compare (a folder of none, or of only unreadable ones)
    def unit(x):
        x = np.nan_to_num(np.asarray(x, dtype=np.float64))
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    a, b = unit(a), unit(b)
    for start in range(0, len(a), block):
        similarity = a[start:start + block] @ b.T
        for i, j in zip(*np.nonzero(similarity >= level)):
            if not within or start + i < j:
                yield int(start + i), int(j), float(similarity[i, j])


def pair_findings(table: pd.DataFrame, pairs: list[tuple[int, int, float, str]]) -> list[dict]:
    """The rows for copies within the labelled table (path, label, subset)."""
    rows = []
    for i, j, score, how in pairs:
        a, b = table.iloc[i], table.iloc[j]
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
                        pairs: list[tuple[int, int, float, str]]) -> list[dict]:
    rows = []
    for i, j, score, how in pairs:
        rows.append(finding(table.path.iloc[i], "unlabelled copy", score, other_path=str(Path(folder) / unlabelled[j]),
                            detail=f"{how}; already labelled {table.label.iloc[i]}"))
    return rows


def class_counts(table: pd.DataFrame) -> tuple[pd.Series, list[dict]]:
    """Images per class, and a finding for each class under IMBALANCE times the largest."""
    counts = table.label.value_counts().sort_index()
    largest = counts.max()
    rows = [finding(f"{label}/", "imbalance", count / largest,
                    detail=f"{count} images, the largest class has {largest}")
            for label, count in counts.items() if count < IMBALANCE * largest]
    return counts, rows
