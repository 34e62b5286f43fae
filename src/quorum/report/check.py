"""`quorum check`: one pass over a labelled folder (and an unlabelled one) for what would skew training.

Writes OUT/check.csv (path, issue, score, suggested_label, other_path, detail; the most doubtful
first within each issue) and OUT/index.html (the same with thumbnails, one self-contained file).
Paths are relative to DATA; a file of --unlabelled is named by that folder joined with its path.
DATA is only read: a suggested fix is a row, never a move. OUT is written whole or not at all
(`files.new_folder`): a failed run leaves nothing half-written, a second run of the same OUT stops
meanwhile, and a `.OUT.partial` that check did not make is never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from quorum import files
from quorum.data import check as look
from quorum.data.images import Scan, scan_images
from quorum.data.split import SPLIT_FILE, read_split_table, scan_labelled_counting
from quorum.errors import QuorumError
from quorum.models.features import frozen_features
from quorum.models.label_issues import label_issues, out_of_sample_probabilities
from quorum.report.gallery import thumbnail
from quorum.report.html import STYLE
from quorum.report.sections import gallery_section, table_html

ISSUES = ["label", "conflict", "leak", "duplicate", "unlabelled copy", "unreadable", "tiny", "aspect", "blank",
          "imbalance"]
PAIRS = {"conflict", "leak", "duplicate", "unlabelled copy"}
MAX_TILES = 60  # per issue in index.html (check.csv has every row)


@dataclass(frozen=True)
class CheckResult:
    out: Path
    findings: pd.DataFrame  # check.csv
    counts: pd.Series  # images per class
    notes: list[str] = field(default_factory=list)


def shares(table: pd.DataFrame, models_dir: Path) -> pd.Series:
    """train / val per labelled image: the shared split's (models_dir/split.csv) where it lists the image,
    else DATA's own train/ and val/ folders, else unknown (None)."""
    subset = table.given_subset.copy()
    split = Path(models_dir) / SPLIT_FILE
    if split.is_file():
        saved = read_split_table(split).set_index("path").subset
        listed = table.path.map(saved)
        subset = listed.where(listed.notna(), subset)
    return subset


def label_findings(table: pd.DataFrame, features: np.ndarray, folds: int, seed: int) -> tuple[list[dict], list[str]]:
    classes = sorted(table.label.unique())
    readable = ~np.isnan(features).any(axis=1)
    labels = table.label.map({name: i for i, name in enumerate(classes)}).to_numpy()[readable]
    try:
        probabilities = out_of_sample_probabilities(features[readable], labels, len(classes), folds, seed)
    except QuorumError as exc:
        return [], [f"no label issues: {exc}"]
    flagged, quality = label_issues(probabilities, labels)
    paths = table.path.to_numpy()[readable]
    rows = []
    for i in flagged:
        best = int(probabilities[i].argmax())
        rows.append(look.finding(paths[i], "label", 1.0 - float(quality[i]), suggested_label=classes[best],
                                 detail=f"labelled {classes[labels[i]]} (out-of-sample probability "
                                        f"{probabilities[i, labels[i]]:.2f}), "
                                        f"{classes[best]} {probabilities[i, best]:.2f}"))
    return rows, []


def passed_over(scan: Scan, folder: Path) -> list[str]:
    """The note on the files a scan skipped (not images, links out of the folder): every file is checked or counted."""
    return [f"Not images, so not checked: {scan.summary()} under {folder}"] if scan.skipped else []


def run_check(data: Path, out: Path, unlabelled: Path | None = None, models_dir: Path = Path("models"),
              image_size: int = 96, folds: int = 5, seed: int = 0, workers: int = 0,
              quiet: bool = False) -> CheckResult:
    data, out = Path(data), Path(out)
    look.check_options(data, unlabelled, out)
    table, scan = scan_labelled_counting(data)
    notes = passed_over(scan, data)
    table = table.assign(subset=shares(table, models_dir))
    paths = table.path.tolist()
    rows, thumbs = look.look_at(data, paths)
    prints = look.Prints(look.hashes(data, paths), thumbs, frozen_features(data, paths, image_size, workers=workers,
                                                                            quiet=quiet))
    rows += look.pair_findings(table, look.copies(prints))
    found, said = label_findings(table, prints.features, folds, seed)
    rows, notes = rows + found, notes + said
    if unlabelled is not None:
        unlabelled = Path(unlabelled)
        scan = scan_images(unlabelled)
        notes += passed_over(scan, unlabelled)
        others = [path.relative_to(unlabelled).as_posix() for path in scan.images]
        odd, other_thumbs = look.look_at(unlabelled, others)
        rows += [{**row, "path": str(unlabelled / row["path"]), "file": unlabelled / row["path"]} for row in odd]
        other_prints = look.Prints(look.hashes(unlabelled, others), other_thumbs,
                                   frozen_features(unlabelled, others, image_size, workers=workers, quiet=quiet))
        rows += look.unlabelled_findings(table, others, unlabelled, look.copies(prints, other_prints))
    counts, imbalance = look.class_counts(table)
    rows += imbalance
    findings = pd.DataFrame(rows, columns=[*look.COLUMNS, "file"])  # file: where the thumbnail comes from
    findings["file"] = [file if isinstance(file, Path) else data / path
                        for file, path in zip(findings.file, findings.path)]
    order = findings.issue.map({issue: i for i, issue in enumerate(ISSUES)})
    findings = findings.assign(_order=order).sort_values(["_order", "score"], ascending=[True, False], kind="stable")
    findings = findings.drop(columns="_order").reset_index(drop=True)
    write(out, findings, data, counts, notes)
    return CheckResult(out, findings[look.COLUMNS], counts, notes)


def write(out: Path, findings: pd.DataFrame, data: Path, counts: pd.Series, notes: list[str]) -> None:
    with files.new_folder(out, "check") as work:
        files.write_csv(work / "check.csv", findings[look.COLUMNS].round({"score": 6}))
        files.write_text(work / "index.html", render(findings, data, counts, notes))


def _tiles(rows: pd.DataFrame, data: Path) -> list[dict]:
    tiles = []
    for row in rows.itertuples():
        if row.issue == "imbalance":
            continue
        lines = [row.path, row.detail] + ([f"suggested: {row.suggested_label}"] if row.suggested_label else [])
        tiles.append({"src": thumbnail(row.file), "title": row.path, "lines": lines})
        if row.issue in PAIRS:
            other = Path(row.other_path) if row.issue == "unlabelled copy" else data / row.other_path
            tiles.append({"src": thumbnail(other), "title": row.other_path, "lines": [f"... and {row.other_path}"]})
    return tiles


def render(findings: pd.DataFrame, data: Path, counts: pd.Series, notes: list[str]) -> str:
    written = escape(datetime.now().strftime("%Y-%m-%d %H:%M"))
    intro = (f"{escape(str(data))}: {int(counts.sum())} images in {len(counts)} classes, {len(findings)} findings. "
             f"Written {written}. Nothing was moved or changed: check.csv lists every finding.")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>quorum check</title><style>{STYLE}</style></head><body>", "<h1>quorum check</h1>",
             f"<p>{intro}</p>",
             *(f'<p class="note">{escape(note)}</p>' for note in notes),
             "<h2>Images per class</h2>", table_html(["class", "images"], [[k, v] for k, v in counts.items()])]
    for issue in ISSUES:
        rows = findings[findings.issue == issue]
        if len(rows):
            cut = f"the first {MAX_TILES} of {len(rows)} shown" if len(rows) > MAX_TILES else None
            parts.append(gallery_section(f"{issue} ({len(rows)})", "", _tiles(rows.head(MAX_TILES), data), cut))
    return "\n".join([*parts, "</body></html>"])


def summary(result: CheckResult) -> str:
    counts = result.findings.issue.value_counts()
    listed = ", ".join(f"{counts[issue]} {issue}" for issue in ISSUES if issue in counts) or "nothing"
    return f"Wrote {result.out}: {listed}; read {result.out / 'index.html'}"

