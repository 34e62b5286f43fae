"""How far to trust the vote at each level of agreement, measured where the truth is known.

On the shared validation split every member's prediction is stored, so the vote can be replayed
there and counted: for each agreement level (3 of 3, 2 of 3, ...) and each `decided_by`, the share
of images it covers and how many of them the vote got right. Those counts are what a person
needs to decide which predictions on an unlabelled folder to check and which to accept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Agreement levels are fractions like 2/3; a level typed as 0.67 means "2 of 3", so levels are
# compared to two decimals rather than exactly (2/3 < 0.67 would otherwise flag every 2-of-3 row).
from quorum.data.predictions_csv import AGREEMENT_TOLERANCE
from quorum.predict.vote import DECIDED_BY, Votes

TRUST_COLUMNS = ["group", "level", "images", "coverage", "correct", "accuracy"]


def below(agreement, level: float):
    """True where `agreement` is under `level`, to two decimals (NaN, unknown, is never below)."""
    return np.asarray(agreement, dtype=float) < level - AGREEMENT_TOLERANCE


def at_least(agreement, level: float):
    """True where `agreement` reaches `level`, to two decimals (NaN, unknown, never does)."""
    return np.asarray(agreement, dtype=float) >= level - AGREEMENT_TOLERANCE


def trust_table(y_true: np.ndarray, result: Votes) -> pd.DataFrame:
    """One row per agreement level (`k of n`), per `decided_by`, and per 'at least k of n' threshold.

    coverage: the share of all images in the row's group; accuracy: the vote's, on those images.
    """
    y_true = np.asarray(y_true)
    right = result.label == y_true
    n = len(y_true)
    rows = []

    def add(group: str, level: str, mask: np.ndarray) -> None:
        count = int(mask.sum())
        rows.append({"group": group, "level": level, "images": count, "coverage": count / n if n else np.nan,
                     "correct": int(right[mask].sum()), "accuracy": right[mask].mean() if count else np.nan})

    members = int(result.members.max()) if n else 0
    for votes in range(members, 0, -1):
        add("agreement", f"{votes} of {members}", result.votes == votes)
    for kind in DECIDED_BY:
        add("decided_by", kind, result.decided_by == kind)
    for votes in range(members, 0, -1):
        add("at least", f"{votes} of {members}", result.votes >= votes)
    return pd.DataFrame(rows, columns=TRUST_COLUMNS)


def coverage_curve(y_true: np.ndarray, result: Votes) -> pd.DataFrame:
    """Accept images from the most agreed (then most confident) down: coverage and accuracy at each step."""
    order = np.lexsort((-result.confidence, -result.votes))  # last key sorts first
    right = (result.label == np.asarray(y_true))[order]
    accepted = np.arange(1, len(order) + 1)
    return pd.DataFrame({"coverage": accepted / max(len(order), 1), "accuracy": np.cumsum(right) / accepted,
                         "votes": result.votes[order]})


def on_validation(correct: int, images: int) -> str:
    """'on validation 96% right, 159 images, 95% interval 92-98%': a few hundred validation images pin an
    accuracy down only to a few points (Wilson's interval, scipy), and a folder's rows may fall anywhere in it."""
    from scipy.stats import binomtest

    interval = binomtest(int(correct), int(images)).proportion_ci(0.95, method="wilson")
    return (f"on validation {correct / images:.0%} right, {images} images, 95% interval "
            f"{interval.low:.0%}-{interval.high:.0%}")


def expected_here(confidence: np.ndarray) -> str:
    """'expected 93% right by their confidence': the mean calibrated confidence of a folder's rows, what
    they should score if the probabilities hold there (NannyML's confidence-based performance estimation,
    one mean, written here). Unlike the validation figure it follows the folder: on bench_unknown's three
    draws it missed the unanimous rows' accuracy by 0.0-2.4 points where validation missed by 0.6-4.7."""
    return f"expected {np.mean(confidence):.0%} right by their confidence"


def trust_part(expected: np.ndarray | None, correct: int, images: int, say_none: bool = False) -> str:
    """' (expected ...; on validation ...)', whichever of the two is known ('none on validation' with
    `say_none`); '' when there is nothing to say."""
    validation = on_validation(correct, images) if images else "none on validation" if say_none else None
    said = [*([expected_here(expected)] if expected is not None and len(expected) else []),
            *([validation] if validation else [])]
    return f" ({'; '.join(said)})" if said else ""


def decided_by_lines(shares: dict[str, float], table: pd.DataFrame | None,
                     confidence: dict[str, np.ndarray] | None = None) -> list[str]:
    """'78% unanimous (expected 93% right by their confidence; on validation 97% right, ...)', one part per
    decided_by seen; `confidence`: the folder's rows' calibrated confidence, by decided_by."""
    accuracy, confidence = {}, confidence or {}
    if table is not None:
        rows = table[table["group"] == "decided_by"]
        accuracy = {row.level: (row.correct, row.images) for row in rows.itertuples()}
    parts = []
    for kind, share in shares.items():
        correct, images = accuracy.get(kind, (0, 0))
        say_none = table is not None and kind in DECIDED_BY
        parts.append(f"{share:.0%} {kind}" + trust_part(confidence.get(kind), correct, images, say_none))
    return parts


def at_least_lines(agreed: np.ndarray, members: int, table: pd.DataFrame | None,
                   confidence: np.ndarray | None = None) -> list[str]:
    """A --lazy run's trust line, where skipped members leave most rows' `decided_by` unknown:
    'at least 2 of 3 agree on 96% of rows (expected ...; on validation 91% right, 57 images, ...)', from
    k = n - 1 down to a majority. `agreed` per row: the members that ran and voted its prediction, a lower
    bound; `confidence`: each row's."""
    accuracy = {}
    if table is not None:
        rows = table[table["group"] == "at least"]
        accuracy = {row.level: (row.correct, row.images) for row in rows.itertuples()}
    agreed, parts = np.asarray(agreed), []
    for k in range(members - 1, members // 2, -1):
        part = f"at least {k} of {members} agree on {np.mean(agreed >= k) if len(agreed) else 0:.0%} of rows"
        correct, images = accuracy.get(f"{k} of {members}", (0, 0))
        expected = None if confidence is None else np.asarray(confidence)[agreed >= k]
        parts.append(part + trust_part(expected, correct, images))
    return parts
