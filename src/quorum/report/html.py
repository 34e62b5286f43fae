"""The report folder: summary.csv, scores.json, the PNGs, and index.html that shows them all.

index.html carries its pictures as base64 `data:` URIs, so the one file can be mailed or moved on
its own and still shows everything; its only links point at the files written beside it.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from html import escape
from pathlib import Path

from quorum import files
from quorum.report import plots
from quorum.report.build import ENSEMBLE, Report, best_name, format_cell
from quorum.report.folder import INDEX, SCORES, TITLE, check_out
from quorum.report.sections import (
    ensemble_section,
    gallery_section,
    per_class_table,
    preds_section,
    pseudo_section,
    review_gallery_section,
    rules_section,
    table_html,
    trust_section,
)

# The pictures of scores on the report's labelled images (the training curves are the runs' own validation).
SCORED_FIGURES = {"confusion_matrices.png", "best_vs_ensemble.png", "accuracy_vs_time.png", "coverage_accuracy.png",
                  "reliability.png"}
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.best{font-weight:bold;background:#eef6ff}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{background:#fff6d6;padding:.6em 1em;border-left:4px solid #e0b000}
.gallery{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;width:128px;font-size:11px;line-height:1.25}
figure img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;margin:0}figcaption span{display:block}
.missing{width:96px;height:96px;background:#eee;color:#888;font-size:11px}
.wide{overflow-x:auto}summary{cursor:pointer;margin:.3em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
code{background:#f3f3f3;padding:0 .2em}"""
SUMMARY_HEADERS = {"model": "model", "backbone": "backbone", "image_size": "image size", "parameters": "parameters",
                   "size_mb": "size on disk (MB)", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
                   "macro_f1": "macro F1", "ece_raw": "ECE before calibration", "ece": "ECE (calibrated)",
                   "ms_per_image": "time per image (ms)", "images": "images", "engine": "engine", "kind": "kind",
                   "preds_accuracy": "accuracy on --preds (true labels)",
                   "vs_float32": "accuracy against the float32 graph"}


def figures(report: Report) -> dict[str, object]:
    """PNG file name -> Figure, for every picture this report has data for."""
    matrices = {name: scores["confusion_matrix"] for name, scores in report.members.items()}
    if report.ensemble is not None:
        matrices[ENSEMBLE] = report.ensemble["metrics"]["confusion_matrix"]
    out = {"confusion_matrices.png": plots.confusion_matrices(matrices, report.classes)}
    if report.ensemble is not None:
        best = max(report.names, key=lambda name: report.members[name]["accuracy"])
        out["best_vs_ensemble.png"] = plots.best_vs_ensemble(best, matrices[best], matrices[ENSEMBLE], report.classes)
    if report.histories:
        kept = {info.path.name: info.kept_epoch for info in report.infos}
        out["training_curves.png"] = plots.training_curves(report.histories, kept)
    if report.table["ms_per_image"].notna().any():
        out["accuracy_vs_time.png"] = plots.accuracy_vs_time(report.table.dropna(subset=["ms_per_image", "accuracy"]),
                                                             ENSEMBLE)
    if report.curve is not None and len(report.curve):
        levels = report.trust[report.trust["group"] == "at least"]
        out["coverage_accuracy.png"] = plots.coverage_accuracy(report.curve, levels)
    if report.reliability:
        out["reliability.png"] = plots.reliability_diagrams(report.reliability)
    preds = report.preds
    if preds and preds["agreement"]:
        agreement = {level if level == "unknown" else f"{float(level):.0%}": count
                     for level, count in preds["agreement"].items()}
        out["preds_agreement.png"] = plots.bars(agreement, "how many members agreed with the vote",
                                                "agreement (share of members voting for the winner)")
        out["preds_classes.png"] = plots.bars(preds["predicted"], "predicted class counts", "predicted class")
    for name in SCORED_FIGURES.intersection(out):  # a picture saved on its own still says what it scored
        out[name].suptitle(f"on {report.source}", fontsize=9)
    return out


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write every file of the report into `out_dir`; returns their paths, index.html last."""
    out_dir = Path(out_dir)
    check_out(out_dir)
    written = [out_dir / SCORES, out_dir / "summary.csv"]
    files.write_json(written[0], report.as_dict())  # first: it marks the folder as a report's (report.folder)
    files.write_csv(written[1], report.table)
    images = {}
    for name, figure in figures(report).items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        images[name] = buffer.getvalue()
        with files.atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(images[name])
        written.append(out_dir / name)
    links = [path.name for path in written]
    if report.preds and Path(report.preds["file"]).resolve().parent == out_dir.resolve():
        links.append(Path(report.preds["file"]).name)  # the demo writes its predictions beside the report
    files.write_text(out_dir / INDEX, render_html(report, images, links))
    return written + [out_dir / INDEX]


def _image(images: dict[str, bytes], name: str, alt: str) -> str:
    if name not in images:
        return ""
    data = base64.b64encode(images[name]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}" title="{escape(name)}">'


def calibration_section(images: dict[str, bytes], source: str) -> str:
    if "reliability.png" not in images:
        return ""
    return (f"<h2>Calibration</h2><p>On {escape(source)}. Every probability quorum writes is divided, in log "
            "space, by the model's temperature, fitted on its validation predictions (model.json's "
            "<code>calibration</code>), and the vote's by one more, fitted on the members' shared validation "
            "predictions; no label changes. On the diagonal a confidence of 80% is right 80% of the "
            "time. ECE: the mean gap, weighted by images (15 bins); the vote is scored on its "
            "<code>confidence</code>.</p>"
            + _image(images, "reliability.png", "reliability diagrams"))


def render_html(report: Report, images: dict[str, bytes], file_names: list[str]) -> str:
    """The whole page as one string: text escaped, pictures inlined."""
    rows = [[format_cell(column, value) for column, value in row.items()]
            for row in report.table.to_dict(orient="records")]
    headers = [SUMMARY_HEADERS[column] for column in report.table.columns]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"{TITLE}<style>{STYLE}</style></head><body>",
        "<h1>quorum report</h1>",
        f"<p>{len(report.names)} model(s) over {len(report.classes)} classes, scored on "
        f"{escape(report.source)}. Written {escape(datetime.now().strftime('%Y-%m-%d %H:%M'))}.</p>",
        *(f'<p class="note">{escape(note)}</p>' for note in report.notes),
        "<h2>Comparison</h2>",
        table_html(headers, rows, highlight=best_name(dict(zip(report.table["model"], report.table["accuracy"])))),
        "<p>In bold: the best accuracy.</p>",
        "<p>Time per image: eval forward passes on random pixels at each model's input size, on this machine, on "
        "the engine named; the ensemble's is the sum of its members' (every member runs on every image). "
        "Kind: a student learned an ensemble's probabilities (quorum finetune --distill). A row named "
        "<code>(int8)</code> is that model's int8 graph (quorum export --int8; quorum predict --engine int8), "
        "its size the graph's.</p>",
        pseudo_section(report),
        ensemble_section(report),
        rules_section(report),
        trust_section(report),
        _image(images, "coverage_accuracy.png", "coverage against accuracy"),
        calibration_section(images, report.source),
        gallery_section(f"The vote's mistakes on {report.source}, most confident first",
                        "True label, the vote's label with its confidence and how it was decided, every member's "
                        "vote.", report.galleries.get("wrong", []), report.galleries.get("wrong_note")),
        f"<h2>Confusion matrices</h2><p>On {escape(report.source)}. Rows are the true class, normalised to shares "
        "of it (one colour scale for all); the numbers are counts.</p>",
        _image(images, "confusion_matrices.png", "confusion matrices"),
        _image(images, "best_vs_ensemble.png", "best single model beside the ensemble"),
        "<h2>Per class</h2>", per_class_table(report),
    ]
    if "training_curves.png" in images:
        parts += ["<h2>Training curves</h2><p>The dashed line marks where the backbone was unfrozen; the star, "
                  "the epoch that was kept.</p>", _image(images, "training_curves.png", "training curves")]
    if "accuracy_vs_time.png" in images:
        parts += ["<h2>Accuracy against time</h2>", f"<p>Accuracy on {escape(report.source)}.</p>",
                  _image(images, "accuracy_vs_time.png", "accuracy against time")]
    if report.preds is not None:
        parts += [preds_section(report.preds),
                  review_gallery_section(report.galleries.get("review", {}), report.galleries.get("review_note")),
                  _image(images, "preds_agreement.png", "agreement histogram"),
                  _image(images, "preds_classes.png", "predicted class counts")]
    links = " · ".join(f'<a href="{escape(name)}">{escape(name)}</a>' for name in file_names)
    parts += [f"<h2>Files</h2><p>{links}</p>", "</body></html>"]
    return "\n".join(part for part in parts if part) + "\n"
