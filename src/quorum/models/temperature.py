"""A bundle's temperature: the one number that makes its probabilities mean what they say (quorum.calibration).

1. `quorum finetune` fits it on the kept epoch's validation predictions and stores it in model.json:
   "calibration": {"temperature": T, "ece_before": .., "ece_after": .., "fitted_on": "validation", "images": n}.
2. A bundle from before that has none: it is fitted from its val_predictions.csv when loaded (said once per
   process, nothing written), and `quorum calibrate` writes it into its model.json.
3. A bundle without val_predictions.csv too: predict and report run it uncalibrated (temperature 1) with a
   warning naming it, since the user asked for nothing calibration-specific; `quorum calibrate` stops with
   an `Error:` line.
val_predictions.csv keeps the raw probabilities, the ones the temperature was fitted on, so fitting again
always gives the stored temperature back. Every probability quorum writes or votes with is calibrated:
predict.members wraps each member's inference in `inference.Calibrated`, report.sources calibrates the
stored validation predictions.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path

from quorum import files
from quorum.calibration import fit_calibration
from quorum.console import say
from quorum.errors import QuorumError
from quorum.models.bundle import (
    FEATURES,
    MODEL_JSON,
    VAL_PREDICTIONS,
    ModelInfo,
    lock_path,
    read_info,
    read_val_predictions,
    write_model_json,
)
from quorum.models.features import add_training_features, read_training_features

CALIBRATION = "calibration"  # the model.json key
_fitted: dict[tuple, dict | None] = {}  # per process: an older bundle is fitted, and said so, once


def stored(info: ModelInfo) -> dict | None:
    """The calibration block in model.json, or None for a bundle from before calibration."""
    block = info.raw.get(CALIBRATION)
    if block is None:
        return None
    value = block.get("temperature") if isinstance(block, dict) else None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise QuorumError(f"{info.path / MODEL_JSON} has a broken calibration ({block!r}): "
                          f"run quorum calibrate {info.path.name} --models-dir {info.path.parent}")
    return block


def fit_bundle(info: ModelInfo) -> dict:
    """A calibration block fitted now on the bundle's val_predictions.csv (QuorumError if it has none)."""
    _, y_true, probs = read_val_predictions(info.path, info.classes)
    if not len(y_true):
        raise QuorumError(f"{info.path / VAL_PREDICTIONS} has no rows: fine-tune {info.path.name} again")
    return fit_calibration(probs, y_true)


def calibration(info: ModelInfo, quiet: bool = False) -> dict | None:
    """The bundle's calibration block: stored, else fitted from val_predictions.csv; None where neither exists."""
    block = stored(info)
    if block is not None:
        return block
    csv = info.path / VAL_PREDICTIONS
    key = (str(info.path.resolve()), files.fingerprint(csv) if csv.is_file() else None)
    if key not in _fitted:
        name = info.path.name
        try:
            block = fit_bundle(info)
            say(f"{name} has no calibration in its {MODEL_JSON}: fitted temperature {block['temperature']:.3f} on its "
                f"{block['images']} validation predictions "
                f"(ECE {block['ece_before']:.3f} -> {block['ece_after']:.3f}); "
                f"quorum calibrate {name} stores it", quiet)
        except QuorumError as exc:
            block = None
            say(f"[yellow]Warning: {name}'s probabilities are not calibrated (temperature 1): {exc}[/yellow]")
        _fitted[key] = block
    return _fitted[key]


def temperature(info: ModelInfo, quiet: bool = False) -> float:
    """The temperature to divide the bundle's log-probabilities by: 1 where it cannot be fitted."""
    block = calibration(info, quiet)
    return 1.0 if block is None else float(block["temperature"])


def calibrate_models(model_dirs: list[Path], quiet: bool = False) -> dict[str, dict]:
    """`quorum calibrate`: fit each bundle's temperature on its val_predictions.csv and store it in its model.json.
    Every bundle is fitted before any is written, so a bundle that cannot be leaves every model.json as it was;
    each is locked as finetune locks it, so a run replacing the model meanwhile cannot be overwritten."""
    with ExitStack() as locks:
        fitted = {}
        for model_dir in map(Path, model_dirs):
            locks.enter_context(files.exclusive(lock_path(model_dir), f"another quorum run is making or calibrating "
                                                f"{model_dir} now: calibrate it when that run has finished"))
            info = read_info(model_dir)
            try:
                fitted[info.path] = (info, fit_bundle(info))
            except QuorumError as exc:
                raise QuorumError(f"cannot calibrate {info.path.name}: {exc}") from None
        _store(fitted, quiet)
        for info, _ in fitted.values():  # bundles from before features.npz: the unknown score's distances
            if read_training_features(info) is None:
                why = add_training_features(info, quiet)
                say(f"{info.path.name}: {info.path / FEATURES} written (the unknown score's training features)"
                    if why is None else f"[yellow]Warning: no {FEATURES} for {info.path.name}: {why}; predict scores "
                    "its images by entropy (fine-tune it again for the distance score)[/yellow]", quiet)
    return {path.name: block for path, (_, block) in fitted.items()}


def _store(fitted: dict[Path, tuple[ModelInfo, dict]], quiet: bool) -> None:
    for path, (info, block) in fitted.items():
        write_model_json(path, {**info.raw, CALIBRATION: block})
        say(f"{path.name}: temperature {block['temperature']:.3f}, ECE on its {block['images']} validation images "
            f"{block['ece_before']:.3f} -> {block['ece_after']:.3f}; written to {path / MODEL_JSON}", quiet)
