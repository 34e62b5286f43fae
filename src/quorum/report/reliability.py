"""Do the probabilities mean what they say? Each member's and the vote's expected calibration error (ECE)
before and after the members' temperatures, and the reliability curves the report draws.

The report's probabilities are calibrated ones (predict.members and report.sources apply the temperatures),
so the raw ones are recovered with the inverse temperature: calibrate(calibrate(p, T), 1 / T) is p again
(softmax of log-probabilities scaled by T, then by 1/T). The vote is scored on its `confidence` (the rule's
probability of the voted label) against whether the vote was right: before, the raw members' mean; after,
the calibrated members' and then the vote's own temperature, as predict writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from quorum.calibration import (
    ECE_BINS,
    calibrate,
    confidence_calibration_error,
    expected_calibration_error,
)
from quorum.predict.vote import MAJORITY_RULE, vote
from quorum.report.sources import Labelled


@dataclass(frozen=True)
class Reliability:
    ece_raw: float  # before the temperatures
    ece: float  # as quorum reports them
    curve_raw: pd.DataFrame  # reliability_curve of the raw confidences
    curve: pd.DataFrame


def reliability(labelled: Labelled, names: list[str], temperatures: list[float], tie_breaker: int | None,
                rule: str = MAJORITY_RULE, weights: list[float] | None = None,
                vote_temperature: float = 1.0) -> dict[str, Reliability]:
    """Per member (and, given a tie-breaker, for the vote by `rule` under `ensemble`): ECE and curves, raw and
    calibrated."""
    calibrated = labelled.probs
    raw = np.stack([calibrate(p, 1.0 / t) for p, t in zip(calibrated, temperatures)])
    y = labelled.y_true
    out = {}
    for m, name in enumerate(names):
        (conf_raw, right_raw), (conf, right) = (_top(p, y) for p in (raw[m], calibrated[m]))
        out[name] = Reliability(expected_calibration_error(raw[m], y), expected_calibration_error(calibrated[m], y),
                                reliability_curve(conf_raw, right_raw), reliability_curve(conf, right))
    if tie_breaker is not None:
        before = vote(raw, tie_breaker, rule=rule, weights=weights)
        after = vote(calibrated, tie_breaker, rule=rule, weights=weights, temperature=vote_temperature)
        out["ensemble"] = Reliability(
            confidence_calibration_error(before.confidence, before.label == y),
            confidence_calibration_error(after.confidence, after.label == y),
            reliability_curve(before.confidence, before.label == y),
            reliability_curve(after.confidence, after.label == y))
    return out


def _top(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return probs.max(axis=1), probs.argmax(axis=1) == y


def reliability_curve(confidence, correct, bins: int = ECE_BINS) -> pd.DataFrame:
    """Per non-empty equal-width confidence bin (as the ECE's): mean confidence, accuracy, images.
    Written here because torchmetrics and netcal return the ECE but not its bins in a plain form."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, bool)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # (lo, hi] as torchmetrics bins
    frame = pd.DataFrame({"bin": which, "confidence": confidence, "accuracy": correct})
    curve = frame.groupby("bin").agg(confidence=("confidence", "mean"), accuracy=("accuracy", "mean"),
                                     images=("accuracy", "size"))
    return curve.reset_index(drop=True)
