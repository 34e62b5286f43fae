"""Thumbnails for the report, where people would rather look than read: the unlabelled images
flagged for review (grouped by predicted class, those flagged unknown in a group of their own, with
every member's vote) and the validation
images the vote got wrong (most confident first, as fastai's plot_top_losses, for the ensemble).

Each thumbnail is a small JPEG inlined as base64, so the page stays one self-contained file;
the numbers are capped so it stays a few MB at most.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from quorum import files
from quorum.data.images import UnreadableImage, load_rgb
from quorum.data.predictions_csv import read_sidecar
from quorum.errors import QuorumError
from quorum.predict.vote import vote
from quorum.report.sources import Labelled

THUMB_PX = 96  # longest side
JPEG_QUALITY = 80
MAX_PER_CLASS = 12  # flagged images shown per predicted class
MAX_REVIEW = 120  # flagged images shown in all
MAX_WRONG = 36  # validation mistakes shown
NO_CLASS = "flagged unknown (no known class)"  # the group of rows predict flagged `unknown`, as review's _unknown/


def thumbnail(path: Path) -> str | None:
    """A `data:` URI of a small JPEG of the image, or None if it cannot be read now."""
    try:
        image = load_rgb(path)
    except (UnreadableImage, OSError):
        return None
    # Upscale tiny images too (28 px Fashion-MNIST is unreadable at its own size), without smoothing them.
    scale = THUMB_PX / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, resample=3 if scale < 1 else 0)  # BICUBIC down, NEAREST up
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def review_gallery(csv: Path, frame: pd.DataFrame, flagged: list[dict], names: list[str]) -> tuple[dict, str | None]:
    """{predicted class: [tile, ...]} of the flagged rows, capped; and a note when it is cut or impossible."""
    try:
        folder = read_sidecar(csv, frame["path"].tolist())["folder"]
    except QuorumError as exc:
        return {}, f"no thumbnails of the flagged images: {exc}"
    groups: dict[str, list[dict]] = {}
    shown = 0
    for row in flagged:
        group = groups.setdefault(NO_CLASS if row.get("unknown") else row["prediction"], [])
        if len(group) >= MAX_PER_CLASS or shown >= MAX_REVIEW:
            continue
        votes = [f"{name}: {row[name] or '(skipped)'}" for name in names]
        agreement = ("agreement unknown (--lazy)" if math.isnan(row["agreement"])
                     else f"agreement {row['agreement']:.0%}")
        inside = files.inside(folder / row["path"], folder)  # an edited CSV must not put ../photos in the report
        group.append({"src": thumbnail(folder / row["path"]) if inside else None, "title": row["path"],
                      "lines": [agreement, *votes]})
        shown += 1
    note = None
    if shown < len(flagged):
        note = (f"showing {shown} of the {len(flagged)} flagged images (at most {MAX_PER_CLASS} per class, "
                f"{MAX_REVIEW} in all): quorum review puts them all in folders")
    return groups, note


def wrong_gallery(labelled: Labelled, names: list[str], classes, tie_breaker: int) -> tuple[list[dict], str | None]:
    """The images the vote got wrong, most confident first (capped), with every member's vote."""
    result = vote(labelled.probs, tie_breaker)
    wrong = np.flatnonzero(result.label != labelled.y_true)
    order = wrong[np.argsort(-result.confidence[wrong], kind="stable")]
    if labelled.root is None or not Path(labelled.root).is_dir():
        return [], (f"no thumbnails of the {len(wrong)} wrong images: their folder "
                    f"({labelled.root or 'unknown'}) is not here") if len(wrong) else None
    top = labelled.probs.argmax(axis=2)
    tiles = []
    for i in order[:MAX_WRONG]:
        tiles.append({"src": thumbnail(Path(labelled.root) / labelled.paths[i]), "title": labelled.paths[i],
                      "lines": [f"true {classes[labelled.y_true[i]]}",
                                f"vote {classes[result.label[i]]} ({result.confidence[i]:.0%}, {result.decided_by[i]})",
                                *(f"{name}: {classes[top[m, i]]}" for m, name in enumerate(names))]})
    note = f"showing the {MAX_WRONG} most confident of {len(wrong)} mistakes" if len(wrong) > MAX_WRONG else None
    return tiles, note

