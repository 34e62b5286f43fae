"""Images of no known class: how unlike the labelled classes each image looks, and where the line is drawn.

Every image gets a class from the vote, even a photo in a folder of clothes, often unanimously. The
score, `unknown_score` (higher = less like the labelled classes), is the entropy of the members' mean
probability. Of the candidates measured in benchmarks/RESULTS.md ("Images of no known class": max
probability, entropy, energy, the members' disagreement, kNN distance in a member's features) it is
the best of those that need only the probabilities both engines give (above max probability on every
source), but it misses the issue's target on handwritten digits; kNN in the features meets it and
needs a second ONNX output and the training features in the bundle: the next step.

The line is drawn where the truth is known: on the shared validation split (every member's
`val_predictions.csv`), every image is of a known class, so the threshold is the score that `keep` of
them stay at or under (`--unknown-keep`, default 0.95). A row above it is `unknown`. With --lazy the
score is over the members that ran on the row (as `confidence` is), so a row two members settled
is scored by those two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import entropy

from quorum.errors import QuorumError
from quorum.predict.vote import mean_probability

if TYPE_CHECKING:  # the bundle module loads torch: review and report --preds must fail fast without it
    from quorum.models.bundle import ModelInfo

SCORE = "entropy of the members' mean probability"
DEFAULT_KEEP = 0.95


def unknown_score(probs: np.ndarray, ran: np.ndarray) -> np.ndarray:
    """(images,): the entropy (nats) of the mean probability over the members that ran; `probs`
    (members, images, classes), `ran` (members, images)."""
    return entropy(mean_probability(probs, ran), axis=1)


@dataclass(frozen=True)
class Threshold:
    keep: float  # the share of validation images at or under `value`
    value: float | None  # None: no line could be drawn, `reason` says why
    images: int  # validation images it was set on
    reason: str = ""

    def flag(self, scores: np.ndarray) -> np.ndarray | None:
        return None if self.value is None else np.asarray(scores) > self.value

    def as_dict(self) -> dict:
        """What the CSV's sidecar records (and what a resumed or merged run must share)."""
        return {"score": SCORE, "keep": self.keep, "threshold": self.value, "validation_images": self.images,
                **({"reason": self.reason} if self.reason else {})}


def check_keep(keep: float) -> None:
    if not 0 < keep <= 1:
        raise QuorumError(f"--unknown-keep must be above 0 and at most 1 (got {keep}): the share of validation "
                          f"images that must pass, e.g. {DEFAULT_KEEP}")


def threshold(infos: list[ModelInfo], keep: float | None = None, flag: bool = True) -> Threshold:
    """The line for these members. `keep` None: DEFAULT_KEEP where the members' validation predictions
    allow it, else no line (old or copied bundles still predict); a number: the line, or a QuorumError.
    `flag` False: no line (`--no-unknown-flag`)."""
    from quorum.predict.validation import aligned_probs, mismatch, read_validation

    required = keep is not None
    keep = DEFAULT_KEEP if keep is None else float(keep)
    check_keep(keep)
    if not flag:
        return Threshold(keep, None, 0, "--no-unknown-flag")
    try:
        runs = [read_validation(info) for info in infos]
        why = mismatch(infos, runs) if len(infos) > 1 else None
        if why:
            raise QuorumError(f"{why}: fine-tune the members on one split "
                              "(quorum finetune reuses MODELS_DIR/split.csv)")
    except QuorumError as exc:
        if required:
            raise QuorumError(f"--unknown-keep needs the members' validation predictions: {exc}") from None
        return Threshold(keep, None, 0, str(exc))
    probs = aligned_probs(runs)
    scores = unknown_score(probs, np.ones(probs.shape[:2], bool))
    # The smallest score that at least `keep` of the validation images are at or under.
    return Threshold(keep, float(np.quantile(scores, keep, method="inverted_cdf")), len(scores))
