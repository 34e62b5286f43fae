"""Each member's stored predictions on the shared validation split (`val_predictions.csv`), read and
aligned: where the truth is known, so the trust table, the `unknown` threshold, the weighted vote's
weights and the vote's temperature are set there."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quorum.calibration import calibrate
from quorum.errors import QuorumError
from quorum.models.bundle import ModelInfo, read_val_predictions
from quorum.models.temperature import temperature
from quorum.predict.vote import fit_vote_temperature
from quorum.predict.weights import METHODS


@dataclass(frozen=True)
class OwnValidation:
    """One member's stored validation predictions."""

    paths: list[str]
    y_true: np.ndarray
    probs: np.ndarray  # (images, classes), calibrated


def read_validation(info: ModelInfo) -> OwnValidation:
    """The stored validation predictions, calibrated as predict calibrates (the CSV keeps the raw ones)."""
    paths, y_true, probs = read_val_predictions(info.path, info.classes)
    return OwnValidation(paths, y_true, calibrate(probs, temperature(info)))


def mismatch(infos: list[ModelInfo], runs: list[OwnValidation]) -> str | None:
    """Why the members' validation predictions cannot be stacked into one vote, or None if they can."""
    digests = {info.path.name: info.raw.get("split", {}).get("digest") for info in infos}
    if len(set(digests.values())) > 1:
        listed = ", ".join(f"{name}: {digest or 'none'}" for name, digest in digests.items())
        return f"the models were validated on different splits ({listed})"
    first = set(runs[0].paths)
    for info, run in zip(infos[1:], runs[1:]):
        if set(run.paths) != first:
            return (f"{info.path.name} was validated on other images than {infos[0].path.name} "
                    f"({len(set(run.paths) ^ first)} differ)")
    return None


def shared_runs(infos: list[ModelInfo]) -> list[OwnValidation]:
    """Every member's validation predictions, on one shared split (else a QuorumError saying why not)."""
    runs = [read_validation(info) for info in infos]
    why = mismatch(infos, runs) if len(infos) > 1 else None
    if why:
        raise QuorumError(f"{why}: fine-tune the members on one split (quorum finetune reuses MODELS_DIR/split.csv)")
    return runs


def aligned_probs(runs: list[OwnValidation]) -> np.ndarray:
    """(members, images, classes): every member's probabilities in the first member's image order
    (call only when `mismatch` is None)."""
    order = runs[0].paths
    probs = []
    for run in runs:
        position = {path: i for i, path in enumerate(run.paths)}
        probs.append(run.probs[[position[path] for path in order]])
    return np.stack(probs)


def fitted_weights(infos: list[ModelInfo], method: str = "caruana") -> list[float]:
    """The weighted vote's member weights, fitted on the members' shared validation split (calibrated)."""
    runs = [read_validation(info) for info in infos]
    reason = mismatch(infos, runs) if len(infos) > 1 else None
    if reason is not None:
        raise QuorumError(f"--vote weighted fits its weights on the shared validation split, but {reason}: "
                          "fine-tune the models again so they share models/split.csv, or use --vote soft")
    return [float(w) for w in METHODS[method](aligned_probs(runs), runs[0].y_true)]


def fitted_vote_temperature(infos: list[ModelInfo], rule: str, weights: list[float] | None = None) -> float:
    """The vote's temperature for `rule` (with the weighted rule's `weights`), fitted on the members' shared
    validation split; 1 where they share none (their own temperatures still apply; the unknown line says why)."""
    try:
        runs = shared_runs(infos)
    except QuorumError:
        return 1.0
    return fit_vote_temperature(aligned_probs(runs), runs[0].y_true, rule, weights)
