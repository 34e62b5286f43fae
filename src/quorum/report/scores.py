"""Scores for a report, computed from predictions only (no models, no files).

The ensemble is scored with `vote.vote`, the rule `quorum predict` uses, so a report's ensemble
row is what predict would have said on the same images.
"""

from __future__ import annotations

import warnings

import pandas as pd

from quorum.data.predictions_csv import flagged_unknown
from quorum.metrics import classification_metrics
from quorum.predict.table import OK, member_columns
from quorum.predict.vote import (
    DECIDED_BY,
    TIE_BREAKER,
    UNANIMOUS,
    UNKNOWN,
    default_tie_breaker,
    vote,
)
from quorum.report.sources import Labelled


def scores(y_true, y_pred, classes) -> dict:
    """`metrics.classification_metrics`, without sklearn's warning when a class is predicted but absent:
    small test sets have that often, and the per-class table already shows it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
        return classification_metrics(y_true, y_pred, classes)


def member_scores(labelled: Labelled, names: list[str], classes) -> dict[str, dict]:
    return {name: scores(labelled.y_true, labelled.probs[m].argmax(axis=1), classes) for m, name in enumerate(names)}


def ensemble_scores(labelled: Labelled, names: list[str], classes, tie_breaker: int, accuracies: list[float],
                    rule: str = "majority", weights: list[float] | None = None) -> dict:
    """The vote's scores by `rule`, and what the vote adds over its members (leave-one-out: majority's)."""
    y, probs = labelled.y_true, labelled.probs
    result = vote(probs, tie_breaker, rule=rule, weights=weights)
    top = probs.argmax(axis=2)  # (members, images)
    right = top == y
    # A tie goes to the tie-breaker's label when it is among the tied ones, else to the best mean probability.
    decided = (result.decided_by == TIE_BREAKER) & (result.label == top[tie_breaker])
    agreement = (top[:, None, :] == top[None, :, :]).mean(axis=2)
    return {
        "metrics": scores(y, result.label, classes),
        "members": names,
        "tie_breaker": names[tie_breaker],
        # The best any vote could do: the images at least one member gets right.
        "ceiling": float(right.any(axis=0).mean()),
        "all_wrong": int((~right).all(axis=0).sum()),
        "pairwise_agreement": agreement.round(6).tolist(),
        "decided_by": {kind: int((result.decided_by == kind).sum()) for kind in DECIDED_BY},
        "tie_breaker_decided": int(decided.sum()),
        "tie_breaker_right": int((result.label[decided] == y[decided]).sum()),
        "leave_one_out": leave_one_out(labelled, names, tie_breaker, accuracies),
    }


def leave_one_out(labelled: Labelled, names: list[str], tie_breaker: int, accuracies: list[float]) -> dict[str, float]:
    """Accuracy of the vote without each member in turn; its tie-breaker stays unless it is the one left out."""
    scores = {}
    for left_out, name in enumerate(names):
        rest = [m for m in range(len(names)) if m != left_out]
        tie = (rest.index(tie_breaker) if tie_breaker in rest
               else rest.index(default_tie_breaker(accuracies, names, rest)))
        labels = vote(labelled.probs[rest], tie).label
        scores[name] = float((labels == labelled.y_true).mean())
    return scores


def describe_predictions(frame: pd.DataFrame, names: list[str], classes, labels: pd.Series | None = None) -> dict:
    """What the members did on an unlabelled folder, from predict's CSV; scores too where labels are given."""
    ok = frame[frame["status"] == OK]
    failed = frame[frame["status"] != OK]
    agreement = ok["agreement"].astype(float)
    unknown = int((ok["decided_by"] == UNKNOWN).sum())
    summary = {
        "rows": len(frame),
        "members": names,
        "errors": [{"path": str(p), "error": str(e)} for p, e in zip(failed["path"], failed["error"])],
        "agreement": {**{f"{value:.3f}": int(count) for value, count in agreement.value_counts().sort_index().items()},
                      **({"unknown": int(agreement.isna().sum())} if agreement.isna().any() else {})},
        "predicted": {str(label): int(count) for label, count in ok["prediction"].value_counts().items()},
        "decided_by": {kind: int((ok["decided_by"] == kind).sum()) for kind in DECIDED_BY},
        "unknown": unknown,  # lazy rows where skipped members could have changed how it was decided
        "ran": {name: int(ok[member_columns(name)[0]].notna().sum()) for name in names},
        "review_rule": "review column" if "review" in frame.columns else "not unanimous",
    }
    # Flagged: the CSV's own review column, else every row that is not unanimous (review's default).
    flagged = ok[ok["review"].fillna(False).astype(bool)] if "review" in frame.columns else \
        ok[ok["decided_by"].isin([kind for kind in DECIDED_BY if kind != UNANIMOUS])]
    # Rows flagged unknown (no known class) are shown too, whatever their agreement, as review places them.
    no_class = flagged_unknown(ok)
    flagged = ok[ok.index.isin(flagged.index) | no_class]
    summary["no_class"] = int(no_class.sum())
    summary["review"] = [{"path": str(row["path"]), "prediction": str(row["prediction"]),
                          "agreement": float(row["agreement"]), "unknown": bool(no_class[index]),
                          **{name: ("" if pd.isna(row[member_columns(name)[0]]) else str(row[member_columns(name)[0]]))
                             for name in names}}
                         for index, row in flagged.iterrows()]
    if labels is not None:
        summary.update(labelled_preds_scores(ok, names, classes, labels))
    return summary


def labelled_preds_scores(ok: pd.DataFrame, names: list[str], classes, labels: pd.Series) -> dict:
    """The vote and each member scored on the rows that have a true label."""
    truth = ok["path"].map(labels)
    rows = ok[truth.notna()]
    truth = truth[truth.notna()]
    labels_of = {name: rows[member_columns(name)[0]] for name in names}
    seen = set(truth) | set(rows["prediction"]) | {label for name in names for label in labels_of[name].dropna()}
    classes = list(classes) + sorted(seen - set(classes))  # a label the models never saw is still scored
    index = {name: i for i, name in enumerate(classes)}
    y_true = truth.map(index).to_numpy(int)
    scored = {"ensemble": scores(y_true, rows["prediction"].map(index).to_numpy(int), classes)}
    for name in names:
        voted = labels_of[name].notna().to_numpy()  # a lazy run skips members whose vote could not matter
        scored[name] = scores(y_true[voted], labels_of[name][voted].map(index).to_numpy(int), classes)
    return {"labelled": len(rows), "unlabelled": len(ok) - len(rows), "scores": scored, "score_classes": classes}
