"""Images of no known class: how unlike the labelled classes each image looks, and where the line is drawn.

Every image gets a class from the vote, even a photo in a folder of clothes, often unanimously. The
score, `unknown_score` (higher = less like the labelled classes), is how far the image lies from the
training images in the members' own features: per member, the mean cosine distance to its 10 nearest
training images (cleanlab's `OutOfDistribution`, which scales it by the median such distance among the
training images and maps it to 1 - exp(-d)); the row's score is the mean over the members. Measured in
benchmarks/RESULTS.md ("Images of no known class") against max probability, entropy, energy and the
members' disagreement, it is the one that separates every kind of foreign image tried (digits, photos,
textures). Members whose bundle holds no training features (`features.npz`, written by finetune since
this score) make the run fall back to the entropy of the members' mean probability, the best of the
probability-only scores, and say so.

The line is drawn where the truth is known: on the shared validation split every image is of a known
class, so the threshold is the score that `keep` of them stay at or under (`--unknown-keep`, default
0.95). A row above it is `unknown`. With --lazy the score is over the members that ran on the row (as
`confidence` is), so a row two members settled is scored by those two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import entropy

from quorum.errors import QuorumError
from quorum.predict.vote import mean_probability

if TYPE_CHECKING:  # the bundle module loads torch: review and report --preds must fail fast without it
    from quorum.models.bundle import ModelInfo
    from quorum.models.features import TrainingFeatures
    from quorum.predict.validation import OwnValidation

NEIGHBOURS = "distance to the nearest training images in the members' features"
ENTROPY = "entropy of the members' mean probability"
DEFAULT_KEEP = 0.95
NEAREST = 10  # neighbours averaged over (cleanlab's default)


def unknown_score(probs: np.ndarray, ran: np.ndarray, distances: np.ndarray | None = None) -> np.ndarray:
    """(images,): with `distances` (members, images; `Neighbours.score` where a member ran), their mean over
    the members that ran; without, the entropy (nats) of the mean probability over them. `probs`
    (members, images, classes), `ran` (members, images)."""
    if distances is not None:
        return np.nanmean(np.where(ran, distances, np.nan), axis=0)
    return entropy(mean_probability(probs, ran), axis=1)


class Neighbours:
    """One member's training images in its features: scores how far other images lie from them.

    cleanlab's OutOfDistribution rather than our own kNN: it is the field's maintained implementation
    (cosine distance for wide features, scaled by the training images' own median distance, so the members'
    scores are on one scale and can be averaged)."""

    def __init__(self, features: TrainingFeatures):
        from cleanlab.outlier import OutOfDistribution

        self.val, self.val_paths = features.val, features.val_paths
        self.detector = OutOfDistribution({"k": min(NEAREST, len(features.train) - 1)})
        with one_blas_thread():
            self.detector.fit(features=features.train, verbose=False)

    def score(self, features: np.ndarray) -> np.ndarray:
        """(images,) in [0, 1): higher = farther from the training images."""
        with one_blas_thread():
            return 1.0 - self.detector.score(features=np.asarray(features, np.float32))


def one_blas_thread():
    """BLAS (the kNN's distances) on one thread: the products are small, a batch against a few hundred training
    images, and on a busy machine a second OpenBLAS thread, preempted, makes each wait for it (ResNet50's 2048
    features, 32 images against 300, load average 6 on 2 cores: 300 ms a batch on OpenBLAS's 2 threads, 14 on one).
    The cached controller: finding the loaded libraries anew (`threadpool_limits`) took 5 ms a call, 27 calls per
    200 images with three members, a twentieth of predict --engine int8's time on the reference trio."""
    from threadpoolctl import get_cached_controller

    return get_cached_controller().limit(limits=1, user_api="blas")


def load_neighbours(infos: list[ModelInfo]) -> tuple[list[Neighbours] | None, str]:
    """Every member's `Neighbours`, or (None, why not) when a member has no stored training features, or
    features of other validation images than its val_predictions.csv (the line could not be drawn on them)."""
    from quorum.models.bundle import read_val_predictions
    from quorum.models.features import read_training_features

    stored = [read_training_features(info) for info in infos]
    missing = [info.path.name for info, features in zip(infos, stored)
               if features is None or len(features.train) < 2]
    if missing:
        return None, (f"no training features in {', '.join(missing)} (fine-tuned before quorum stored them; "
                      "quorum calibrate adds them)")
    for info, features in zip(infos, stored):
        try:
            validated = read_val_predictions(info.path, info.classes)[0]
        except QuorumError:
            continue  # no validation predictions: `threshold` draws no line and says why
        if set(validated) != set(features.val_paths):
            return None, (f"{info.path.name}'s features.npz lists other validation images than its "
                          "val_predictions.csv (fine-tune it again for the distance score)")
    return [Neighbours(features) for features in stored], ""


@dataclass(frozen=True)
class Threshold:
    keep: float  # the share of validation images at or under `value`
    value: float | None  # None: no line could be drawn, `reason` says why
    images: int  # validation images it was set on
    reason: str = ""
    score: str = ENTROPY  # NEIGHBOURS or ENTROPY: what `unknown_score` measures
    # The validation images at or under `value` (None: no line), for the trust lines printed beside the flag;
    # not part of the run's record (`as_dict`).
    passed: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def flag(self, scores: np.ndarray) -> np.ndarray | None:
        return None if self.value is None else np.asarray(scores) > self.value

    def as_dict(self) -> dict:
        """What the CSV's sidecar records (and what a resumed or merged run must share)."""
        return {"score": self.score, "keep": self.keep, "threshold": self.value, "validation_images": self.images,
                **({"reason": self.reason} if self.reason else {})}


def check_keep(keep: float) -> None:
    if not 0 < keep <= 1:
        raise QuorumError(f"--unknown-keep must be above 0 and at most 1 (got {keep}): the share of validation "
                          f"images that must pass, e.g. {DEFAULT_KEEP}")


def threshold(infos: list[ModelInfo], keep: float | None = None, flag: bool = True,
              neighbours: list[Neighbours] | None = None, fallback: str = "") -> Threshold:
    """The line for these members, on `neighbours`' distances (`load_neighbours`) or, without them, on
    entropy (`fallback` says why). `keep` None: DEFAULT_KEEP where the members' validation predictions
    allow it, else no line (old or copied bundles still predict); a number: the line, or a QuorumError.
    `flag` False: no line (`--no-unknown-flag`)."""
    from quorum.predict.validation import shared_runs

    required = keep is not None
    keep = DEFAULT_KEEP if keep is None else float(keep)
    check_keep(keep)
    score = NEIGHBOURS if neighbours is not None else ENTROPY
    if not flag:
        return Threshold(keep, None, 0, "--no-unknown-flag", score)
    try:
        runs = shared_runs(infos)
    except QuorumError as exc:
        if required:
            raise QuorumError(f"--unknown-keep needs the members' validation predictions: {exc}") from None
        return Threshold(keep, None, 0, str(exc), score)
    scores = validation_scores(runs, neighbours)
    # The smallest score that at least `keep` of the validation images are at or under.
    value = float(np.quantile(scores, keep, method="inverted_cdf"))
    passed = frozenset(path for path, image_score in zip(runs[0].paths, scores) if image_score <= value)
    return Threshold(keep, value, len(scores), fallback, score, passed)


def validation_scores(runs: list[OwnValidation], neighbours: list[Neighbours] | None) -> np.ndarray:
    """(images,): each shared validation image's `unknown_score` (every member ran on it), in the first
    member's order (`validation.aligned_probs`'); by distance with `neighbours`, else by entropy."""
    from quorum.predict.validation import aligned_probs

    probs = aligned_probs(runs)
    ran = np.ones(probs.shape[:2], bool)
    if neighbours is None:
        return unknown_score(probs, ran)
    distances = []
    for member in neighbours:
        position = {path: i for i, path in enumerate(member.val_paths)}
        if set(position) != set(runs[0].paths):
            raise QuorumError("a member's features.npz lists other validation images than its val_predictions.csv: "
                              "fine-tune it again")
        distances.append(member.score(member.val[[position[path] for path in runs[0].paths]]))
    return unknown_score(probs, ran, np.stack(distances))
