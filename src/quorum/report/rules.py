"""Every vote rule (`predict.vote.RULES`) side by side on the same labelled images, and the one they support.

Scored on the validation split, the weighted rule's weights cannot be fitted on the images they are
scored on (that flatters it), so there they are cross-fitted: fitted on four fifths, applied to the
fifth left out, five times. On --data the weights are predict's own, from the validation split.
Which rule to use: the most accurate, but only above majority (the default) when the paired
bootstrap interval of the difference excludes zero; otherwise the images are too few to tell.
The ECE column is of each rule's combined probabilities before the vote's own temperature (fitted per
rule on the validation split by predict): it compares the rules as they combine, not as predict scales them.
"""

from __future__ import annotations

import numpy as np

from quorum.calibration import expected_calibration_error
from quorum.predict.vote import MAJORITY_RULE, RULES, WEIGHTED, vote
from quorum.predict.weights import caruana_weights
from quorum.report.scores import scores
from quorum.report.sources import Labelled

FOLDS = 5
RESAMPLES = 2000  # bootstrap resamples of the paired difference; the interval is 95%


def compare_rules(labelled: Labelled, tie_breaker: int, classes, weights: list[float] | None = None) -> dict:
    """Accuracy, macro F1 and ECE per rule, the ceiling and a recommendation. `weights`: the weighted
    rule's, fitted elsewhere; None cross-fits them on `labelled` itself."""
    y, probs = labelled.y_true, labelled.probs
    rows, right = {}, {}
    for rule in RULES:
        if rule == WEIGHTED and weights is None:
            label, combined = _cross_fitted(probs, y, tie_breaker)
        else:
            result = vote(probs, tie_breaker, rule=rule, weights=weights if rule == WEIGHTED else None)
            label, combined = result.label, result.combined
        right[rule] = label == y
        rows[rule] = {"accuracy": float(right[rule].mean()), "macro_f1": scores(y, label, classes)["macro_f1"],
                      "ece": expected_calibration_error(combined, y)}
    best = max(RULES, key=lambda rule: rows[rule]["accuracy"])  # the first on a tie: majority, then soft
    low, high = paired_interval(right[best], right[MAJORITY_RULE])
    return {"rules": rows, "ceiling": float((probs.argmax(axis=2) == y).any(axis=0).mean()), "best": best,
            "interval": [low, high], "images": len(y),
            "weights": "cross-fitted on these images (5 folds)" if weights is None else [float(w) for w in weights],
            "advice": advice(best, rows, low, high, len(y))}


def paired_interval(right_a: np.ndarray, right_b: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of accuracy(a) - accuracy(b) on the same images (percentile method; by hand,
    because scipy.stats.bootstrap warns on the all-equal differences a small split often gives)."""
    difference = right_a.astype(float) - right_b.astype(float)
    picks = np.random.default_rng(seed).integers(0, len(difference), (RESAMPLES, len(difference)))
    means = difference[picks].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def advice(best: str, rows: dict, low: float, high: float, images: int) -> str:
    if best == MAJORITY_RULE:
        return "majority (the default): no other rule did better on these images"
    gain = rows[best]["accuracy"] - rows[MAJORITY_RULE]["accuracy"]
    interval = f"95% interval of the difference {low * 100:+.1f} to {high * 100:+.1f} points"
    if low > 0:
        return f"--vote {best}: {gain * 100:+.1f} points over majority on {images} images ({interval})"
    return (f"too few images to tell: {best} was {gain * 100:+.1f} points over majority on {images} images, but the "
            f"{interval} includes 0; keep majority, or compare again on more labelled images with --data")


def _cross_fitted(probs: np.ndarray, y: np.ndarray, tie_breaker: int) -> tuple[np.ndarray, np.ndarray]:
    fold = np.random.default_rng(0).permutation(len(y)) % FOLDS
    label, combined = np.zeros(len(y), int), np.zeros(probs.shape[1:])
    for k in range(min(FOLDS, len(y))):
        held = fold == k
        weights = caruana_weights(probs[:, ~held], y[~held]) if (~held).any() else None
        result = vote(probs[:, held], tie_breaker, rule=WEIGHTED if weights is not None else "soft", weights=weights)
        label[held], combined[held] = result.label, result.combined
    return label, combined
