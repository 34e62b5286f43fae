"""The report page's tables, as escaped HTML: what the ensemble adds, per-class scores, the --preds part."""

from __future__ import annotations

import math
from html import escape

import pandas as pd

from quorum.report.build import ENSEMBLE, Report, best_name

MAX_ROWS = 200  # listed rows for review or errors; the CSV has them all


def table_html(headers: list[str], rows: list[list], highlight: str | None = None) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = []
    for row in rows:
        marked = ' class="best"' if highlight is not None and row and row[0] == highlight else ""
        body.append(f"<tr{marked}>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>")
    # The wrapper scrolls sideways, so a wide table never widens the page.
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} ({part / whole:.1%})" if whole else "0"


def ensemble_section(report: Report) -> str:
    ensemble = report.ensemble
    if ensemble is None:
        return ""
    images, accuracy = ensemble["metrics"]["images"], ensemble["metrics"]["accuracy"]
    best = max(report.members[name]["accuracy"] for name in report.names)
    decided, right = ensemble["tie_breaker_decided"], ensemble["tie_breaker_right"]
    facts = [
        ["ensemble accuracy", f"{accuracy:.1%} ({accuracy - best:+.1%} against the best single model)"],
        ["accuracy if any member is right (the ceiling)", f"{ensemble['ceiling']:.1%}"],
        ["images every member gets wrong", _share(ensemble["all_wrong"], images)],
        *[[f"decided: {kind}", _share(count, images)] for kind, count in ensemble["decided_by"].items()],
        [f"tie-breaker ({ensemble['tie_breaker']}) decided", _share(decided, images)],
        ["... and was right", _share(right, decided) if decided else "-"],
    ]
    names = ensemble["members"]
    left_out = [[f"without {name}", f"{acc:.1%}", f"{acc - accuracy:+.1%}"]
                for name, acc in ensemble["leave_one_out"].items()]
    agreement = [[name, *(f"{value:.1%}" for value in row)] for name, row in zip(names, ensemble["pairwise_agreement"])]
    return "\n".join([
        "<h2>What the ensemble adds</h2>", f"<p>On {escape(report.source)}.</p>",
        table_html(["measure", "value"], facts),
        "<h3>Accuracy with each member left out</h3>",
        table_html(["vote", "accuracy", "change against all members"], left_out),
        "<h3>How often members agree (same top-1 label), pairwise</h3>", table_html(["member", *names], agreement),
    ])


def rules_section(report: Report) -> str:
    """Every vote rule on the same images, and which one these images support."""
    rules = report.rules
    if rules is None:
        return ""
    rows = [[rule, f"{row['accuracy']:.1%}", f"{row['macro_f1']:.3f}", f"{row['ece']:.3f}"]
            for rule, row in rules["rules"].items()]
    weights = rules["weights"]
    how = weights if isinstance(weights, str) else "from the validation split: " + ", ".join(
        f"{name} {w:.2f}" for name, w in zip(report.names, weights))
    return "\n".join([
        "<h2>Vote rules side by side</h2>",
        f"<p>On {escape(report.source)} (quorum predict --vote RULE). Ceiling (any member right): "
        f"{rules['ceiling']:.1%}. ECE: expected calibration error of the rule's probabilities (0 is calibrated), "
        "before the vote's own temperature (the Calibration section's ensemble has it). "
        f"Weighted rule's weights: {escape(how)}.</p>",
        table_html(["rule", "accuracy", "macro F1", "ECE"], rows, highlight=rules["best"]),
        f"<p><b>Recommended:</b> {escape(rules['advice'])}.</p>",
    ])


def per_class_table(report: Report) -> str:
    """Precision / recall / F1 of every model and the ensemble, one row per class."""
    scored = dict(report.members)
    if report.ensemble is not None:
        scored[ENSEMBLE] = report.ensemble["metrics"]
    rows = []
    for label in report.classes:
        support = next(iter(scored.values()))["per_class"][label]["support"]
        cells = ["{precision:.2f} / {recall:.2f} / {f1:.2f}".format(**scores["per_class"][label])
                 for scores in scored.values()]
        rows.append([label, support, *cells])
    return (table_html(["class", "images", *scored], rows)
            + f"<p>Each cell: precision / recall / F1 of the class, on {escape(report.source)}.</p>")


def preds_section(preds: dict) -> str:
    errors, review = preds["errors"], preds["review"]
    decided = ", ".join(f"{count} {kind}" for kind, count in preds["decided_by"].items())
    parts = [f"<h2>Predictions: {escape(preds['file'])}</h2>",
             f"<p>{preds['rows']} rows, {len(errors)} unreadable; decided: {escape(decided)}; "
             f"members: {escape(', '.join(preds['members']))}.</p>"]
    if "scores" in preds:
        rows = [[name, f"{s['accuracy']:.1%}", f"{s['balanced_accuracy']:.1%}", f"{s['macro_f1']:.3f}", s["images"]]
                for name, s in preds["scores"].items()]
        parts += [f"<h3>Against the true labels ({preds['labelled']} rows labelled, {preds['unlabelled']} not)</h3>",
                  table_html(["model", "accuracy", "balanced accuracy", "macro F1", "images"], rows,
                             highlight=best_name({name: s["accuracy"] for name, s in preds["scores"].items()}))]
    rule = ("the CSV's review column" if preds.get("review_rule") == "review column"
            else "every row that is not unanimous (quorum review's default)")
    no_class = (f" and the {preds['no_class']} rows flagged unknown (no known class: their own gallery below)"
                if preds.get("no_class") else "")
    parts.append(f"<h3>Flagged for review: {len(review)}</h3><p>Flagged: {escape(rule)}{escape(no_class)}.</p>")
    if preds.get("folder_check"):
        parts.append("<h3>Is this folder like the labelled one?</h3>"
                     + "".join(f"<p>{escape(line.strip())}</p>" for line in preds["folder_check"]))
    if preds.get("unknown"):
        parts.append(f"<p>{preds['unknown']} rows of this --lazy run are decided_by <code>unknown</code>: the members "
                     "skipped there could have made them unanimous or not.</p>")
    if review:
        columns = list(review[0].keys())
        rows = [[_agreement(row[c]) if c == "agreement" else row[c] for c in columns] for row in review[:MAX_ROWS]]
        parts.append(_folded(f"the {len(review)} rows", table_html(columns, rows) + _more(len(review))))
    parts.append(f"<h3>Errors: {len(errors)}</h3>")
    if errors:
        rows = [[e["path"], e["error"]] for e in errors[:MAX_ROWS]]
        parts.append(_folded(f"the {len(errors)} files", table_html(["path", "error"], rows) + _more(len(errors))))
    return "\n".join(parts)


def _agreement(value: float) -> str:
    return "unknown" if math.isnan(value) else f"{value:.0%}"  # NaN: a lazy row


def _folded(summary: str, body: str) -> str:
    return f"<details><summary>{escape(summary)}</summary>{body}</details>"


def _more(count: int) -> str:
    return f"<p>... and {count - MAX_ROWS} more (see the CSV).</p>" if count > MAX_ROWS else ""


def trust_section(report: Report) -> str:
    """The vote's accuracy and coverage per agreement level and per decided_by, where labels are known."""
    if report.trust is None:
        return ""
    folder = "folder_expected" in report.trust.columns  # with --preds: what the folder's own rows should score
    rows = [[row.group, row.level, row.images, f"{row.coverage:.1%}", "-" if not row.images else f"{row.accuracy:.1%}",
             *([_or_dash(row.folder_rows, "{:.0f}"), _or_dash(row.folder_expected, "{:.1%}")] if folder else [])]
            for row in report.trust.itertuples()]
    return "\n".join([
        "<h2>How far to trust the vote</h2>",
        f"<p>On {escape(report.source)}: for each level of agreement among the members and each way a row "
        "was decided, the share of images (coverage) and how many of them the vote got right. <b>at least k of n</b> "
        "is what you get by accepting every row at that agreement or higher and checking the rest by hand "
        "(<code>quorum review</code>; <code>quorum finetune --pseudo-labels</code> takes the unanimous rows).</p>",
        *(["<p>The last two columns are the --preds folder's rows of each kind (rows flagged unknown left out) and "
           "the accuracy their calibrated confidence expects there, as <code>quorum predict</code>'s trust lines "
           "say it: where the folder is harder or easier than the validation images, this follows it.</p>"]
          if folder else []),
        table_html(["group", "level", "images", "coverage", "vote accuracy",
                    *(["rows on --preds", "expected there"] if folder else [])], rows),
    ])


def _or_dash(value, form: str) -> str:
    return "-" if pd.isna(value) else form.format(value)


def gallery_section(title: str, intro: str, tiles: list[dict], note: str | None) -> str:
    """Thumbnails with a caption each; nothing when there are none to show and nothing to say."""
    if not tiles and not note:
        return ""
    parts = [f"<h3>{escape(title)}</h3><p>{escape(intro)}</p>"]
    if note:
        parts.append(f'<p class="note">{escape(note)}</p>')
    parts.append('<div class="gallery">' + "".join(_tile(tile) for tile in tiles) + "</div>")
    return "\n".join(parts)


def review_gallery_section(groups: dict[str, list[dict]], note: str | None) -> str:
    if not groups and not note:
        return ""
    parts = ["<h3>Flagged for review, by predicted class</h3>",
             "<p>Each image with every member's vote; <code>quorum review</code> puts them all in folders.</p>"]
    if note:
        parts.append(f'<p class="note">{escape(note)}</p>')
    for label, tiles in sorted(groups.items(), key=lambda item: -len(item[1])):
        parts.append(f"<h4>predicted {escape(label)}</h4>")
        parts.append('<div class="gallery">' + "".join(_tile(tile) for tile in tiles) + "</div>")
    return "\n".join(parts)


def _tile(tile: dict) -> str:
    picture = (f'<img src="{tile["src"]}" alt="{escape(tile["title"])}">' if tile["src"]
               else '<div class="missing">unreadable now</div>')
    lines = "".join(f"<span>{escape(line)}</span>" for line in tile["lines"])
    return f'<figure title="{escape(tile["title"])}">{picture}<figcaption>{lines}</figcaption></figure>'


def pseudo_section(report: Report) -> str:
    """Which models trained on pseudo-labels, how many and from which CSV (model.json's record)."""
    rows = []
    for info in report.infos:
        pseudo = info.raw.get("pseudo_labels")
        if pseudo:
            rows.append([info.path.name, pseudo["added"], pseudo["rows"], f"{pseudo['min_agreement']:g}",
                         pseudo["file"], pseudo["digest"]])
    if not rows:
        return ""
    return "\n".join([
        "<h2>Pseudo-labels</h2>",
        "<p>Unlabelled images the vote agreed on, added to these models' training share with the vote's label "
        "(never to validation: the scores above are on labelled images only).</p>",
        table_html(["model", "images added", "rows in the CSV", "agreement at least", "CSV", "CSV digest"], rows),
    ])
