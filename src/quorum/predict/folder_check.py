"""Is the unlabelled folder like the labelled one? The first thing to check before trusting a vote on it.

Compared, for predict's closing lines: the share flagged unknown against the share validation lets
through, the predicted class mix (rows not flagged) against the labelled folder's, and the images
themselves (size, aspect, mode, format, brightness) on an even sample of each folder. One plain warning
line names what differs beyond the levels below (rules of thumb, stated so a person can judge them);
a format alone (PNG or JPEG) is shown but not warned about: it changes little once decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from quorum.data.predictions_csv import flagged_unknown
from quorum.data.split import scan_labelled
from quorum.errors import QuorumError
from quorum.models.bundle import read_info

SAMPLE = 200  # files read from each folder: enough for medians and shares, a second or two of decoding
UNKNOWN_FACTOR = 3.0  # flagged share above 3x what validation lets through (5% at --unknown-keep 0.95)
CLASS_MIX = 0.25  # total variation distance between the class shares (0: the same mix, 1: no class in common)
SIZE_FACTOR = 2.0  # median width or height 2x larger or smaller
ASPECT_FACTOR = 1.25  # median width/height 25% apart
BRIGHTNESS = 0.15  # mean brightness (0 black .. 1 white) apart by more than this


@dataclass(frozen=True)
class Looks:
    """What an even sample of a folder's images looks like."""

    files: int
    width: float  # medians
    height: float
    aspect: float
    mode: str  # the most common, with its share
    mode_share: float
    format: str
    format_share: float
    brightness: float  # mean of the grayscale pixels, 0..1

    def describe(self) -> str:
        return (f"{self.width:.0f}x{self.height:.0f} px, {self.mode} {self.mode_share:.0%}, "
                f"{self.format} {self.format_share:.0%}, brightness {self.brightness:.2f}")


def looks(paths: list[Path]) -> Looks | None:
    """Median size and aspect, the usual mode and format, and mean brightness of up to SAMPLE of `paths`."""
    chosen = [paths[i] for i in np.linspace(0, len(paths) - 1, min(SAMPLE, len(paths))).astype(int)] if paths else []
    rows = []
    for path in chosen:
        try:
            with Image.open(path) as image:
                size, mode, kind = image.size, image.mode, image.format or "?"
                image.draft("L", (64, 64))  # JPEG decodes at a fraction of the size: brightness needs no detail
                gray = ImageOps.exif_transpose(image).convert("L")
                gray.thumbnail((64, 64))
                rows.append((*size, mode, kind, float(np.asarray(gray).mean()) / 255))
        except Exception:  # an unreadable file has its own error row; it just does not count here
            continue
    if not rows:
        return None
    frame = pd.DataFrame(rows, columns=["width", "height", "mode", "format", "brightness"])
    mode, kind = frame["mode"].value_counts(normalize=True), frame["format"].value_counts(normalize=True)
    return Looks(len(frame), frame["width"].median(), frame["height"].median(),
                 float((frame["width"] / frame["height"]).median()), mode.index[0], float(mode.iloc[0]),
                 kind.index[0], float(kind.iloc[0]), float(frame["brightness"].mean()))


def labelled_root(model_dirs: list[Path]) -> Path | None:
    """The labelled folder the first member was fine-tuned on, as its model.json records it."""
    return read_info(sorted(model_dirs, key=lambda path: Path(path).name)[0]).labelled_root


def compare(frame: pd.DataFrame, folder: Path, labelled_root: Path | None) -> list[str]:
    """Lines for predict's summary: this folder against the labelled one, and a warning where they differ."""
    if labelled_root is None or not Path(labelled_root).is_dir():
        return [f"folder check: the labelled folder {labelled_root or '(not recorded)'} is not here to compare with"]
    try:
        labelled = scan_labelled(Path(labelled_root))
    except QuorumError:
        return [f"folder check: cannot read the labelled folder {labelled_root}"]
    ok = frame[frame["status"] == "ok"]
    flagged = flagged_unknown(ok)
    ours = looks([Path(folder) / path for path in ok["path"]])
    theirs = looks([Path(labelled_root) / path for path in labelled["path"]])
    shares = ok.loc[~flagged, "prediction"].value_counts(normalize=True)
    expected = labelled["label"].value_counts(normalize=True)
    # No row voted on and not flagged (every file unreadable, or flagged): no class mix to set against the labelled one.
    distance = 0.5 * float(shares.reindex(expected.index.union(shares.index), fill_value=0)
                           .sub(expected.reindex(expected.index.union(shares.index), fill_value=0)).abs().sum()) \
        if len(shares) else None
    mix = (f"class mix distance {distance:.2f} (0 = the labelled mix)" if distance is not None else
           "no class mix (no readable row that is not flagged unknown)")
    lines = [f"folder check (against {labelled_root}, {SAMPLE} images at most from each): {mix}"]
    if ours is not None and theirs is not None:
        lines.append(f"  this folder: {ours.describe()}; labelled: {theirs.describe()}")
    differs = _differences(flagged.mean() if len(ok) else 0.0, frame.attrs.get("unknown"), distance, ours, theirs)
    if differs:
        lines.append("Warning: this folder is not like the labelled one (" + "; ".join(differs) + "): check a sample "
                     "by eye before trusting the trust lines above")
    return lines


def _differences(flagged: float, unknown: dict | None, distance: float | None, ours: Looks | None,
                 theirs: Looks | None) -> list[str]:
    differs = []
    if unknown and unknown.get("threshold") is not None and flagged > UNKNOWN_FACTOR * (1 - unknown["keep"]):
        differs.append(f"{flagged:.0%} flagged unknown, validation lets {1 - unknown['keep']:.0%} through")
    if distance is not None and distance > CLASS_MIX:
        differs.append(f"class mix distance {distance:.2f} > {CLASS_MIX}")
    if ours is None or theirs is None:
        return differs
    if max(ours.width / theirs.width, theirs.width / ours.width,
           ours.height / theirs.height, theirs.height / ours.height) > SIZE_FACTOR:
        differs.append(f"size {ours.width:.0f}x{ours.height:.0f} vs {theirs.width:.0f}x{theirs.height:.0f}")
    if max(ours.aspect / theirs.aspect, theirs.aspect / ours.aspect) > ASPECT_FACTOR:
        differs.append(f"aspect {ours.aspect:.2f} vs {theirs.aspect:.2f}")
    if ours.mode != theirs.mode:
        differs.append(f"mode {ours.mode} vs {theirs.mode}")
    if abs(ours.brightness - theirs.brightness) > BRIGHTNESS:
        differs.append(f"brightness {ours.brightness:.2f} vs {theirs.brightness:.2f}")
    return differs
