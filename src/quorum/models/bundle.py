"""A model bundle, `models/<name>/`: weights plus a `model.json` that says how to rebuild and feed them.

    model.safetensors     weights of the best epoch (no pickle: loading never runs code)
    model.onnx            the same network as an ONNX graph, for `quorum predict --engine onnx` (onnx_export.py)
    model.int8.onnx       that graph quantized to int8, for `--engine int8` (quantize.py; `quorum export --int8`)
    model.json            backbone, image size, mean/std, classes in order, recipe, metrics, split hash,
                          and the temperature that calibrates its probabilities (models/temperature.py)
    history.csv           one row per epoch
    val_predictions.csv   path, true label, predicted label, one probability per class: the raw ones
                          (before the temperature), which the temperature was fitted on
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from quorum import files
from quorum.data.preprocess import INTERPOLATIONS, Preprocessing
from quorum.errors import QuorumError
from quorum.models.classifier import Classifier
from quorum.models.registry import get_backbone

MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
INT8_ONNX = "model.int8.onnx"  # models/quantize.py
HISTORY = "history.csv"
VAL_PREDICTIONS = "val_predictions.csv"
FEATURES = "features.npz"  # models.features: training and validation images' features, for the unknown score
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelInfo:
    """What `model.json` says, typed where the rest of quorum reads it."""

    path: Path
    backbone: str
    image_size: int
    classes: tuple[str, ...]
    raw: dict = field(default_factory=dict, repr=False)  # all of model.json, for the keys read once

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_model_json(self.raw)

    @property
    def val_accuracy(self) -> float:
        return float(self.raw.get("metrics", {}).get("accuracy", 0.0))

    @property
    def kept_epoch(self) -> int | None:
        """The epoch whose weights the bundle holds (bundles from before `--keep` say best_epoch: the same)."""
        return self.raw.get("kept_epoch", self.raw.get("best_epoch"))

    @property
    def labelled_root(self) -> Path | None:
        """The labelled folder the model was fine-tuned on, where model.json records it."""
        root = self.raw.get("split", {}).get("root")
        return Path(root) if root else None


def lock_path(model_dir: Path) -> Path:
    """The lock a run holds while it makes or changes `model_dir` (finetune, calibrate): beside the folder,
    since finetune replaces the folder itself."""
    return files.lock_beside(model_dir)


def find_models(models_dir: Path) -> list[Path]:
    """Every finished model under `models_dir`, sorted by name (in-progress runs are hidden `.name`)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.iterdir() if (p / MODEL_JSON).is_file() and not p.name.startswith("."))


def is_model_folder(path: Path) -> bool:
    """A folder (not a link) that quorum made for a model: its model.json, or a model's files without one
    (an unfinished or damaged model). finetune replaces only such a folder."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and any((path / name).exists()
                                                           for name in (MODEL_JSON, WEIGHTS, ONNX, HISTORY))


def find_unfinished(models_dir: Path) -> list[Path]:
    """Folders under `models_dir` that hold a model's files but no model.json: a copy cut short, a damaged
    model. find_models leaves them out; whoever uses its list must say so."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and not (p / MODEL_JSON).is_file() and any((p / name).exists() for name in (WEIGHTS, ONNX, HISTORY)))


def read_info(model_dir: Path) -> ModelInfo:
    model_dir = Path(model_dir)
    try:
        raw = json.loads((model_dir / MODEL_JSON).read_text())
    except FileNotFoundError:
        raise QuorumError(f"{model_dir} is not a quorum model (no {MODEL_JSON}): "
                          "fine-tune one with quorum finetune") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QuorumError(f"{model_dir / MODEL_JSON} is broken ({exc!r}): fine-tune the model again") from None
    check_model_json(raw, model_dir / MODEL_JSON)
    return ModelInfo(path=model_dir, backbone=raw["backbone"], image_size=raw["image_size"],
                     classes=tuple(raw["classes"]), raw=raw)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rgb(values, above_zero: bool = False) -> bool:
    return (isinstance(values, list) and len(values) == 3 and all(_number(v) for v in values)
            and (not above_zero or all(v > 0 for v in values)))


def _class_names(values) -> bool:
    return (isinstance(values, list) and len(values) > 0 and all(isinstance(v, str) and v for v in values)
            and len(set(values)) == len(values))


# model.json's schema: key -> (required, check, what the value must be). Every value decides what
# pixels a model sees or what its outputs mean, so an edited one would change labels silently.
SCHEMA = {
    "name": (True, lambda v: isinstance(v, str) and v, "a non-empty string"),
    "backbone": (True, lambda v: isinstance(v, str) and v, "a backbone name (quorum backbones lists them)"),
    "image_size": (True, lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                   "a positive whole number of pixels"),
    "mean": (True, _rgb, "a list of 3 numbers, one per RGB channel"),
    "std": (True, lambda v: _rgb(v, above_zero=True), "a list of 3 numbers above 0, one per RGB channel"),
    "crop_fraction": (True, lambda v: _number(v) and 0 < v <= 1, "a number above 0 and at most 1"),
    "interpolation": (True, lambda v: v in INTERPOLATIONS, f"one of {', '.join(INTERPOLATIONS)}"),
    "classes": (True, _class_names, "a non-empty list of distinct class names"),
    "metrics": (False, lambda v: isinstance(v, dict), "an object"),
}


def check_model_json(raw, path: Path) -> None:
    """One error naming the file, the key and the fix for the first value that breaks SCHEMA."""
    fix = "restore the file or fine-tune the model again"
    if not isinstance(raw, dict):
        raise QuorumError(f"{path} is not a JSON object: {fix}")
    for key, (required, valid, must_be) in SCHEMA.items():
        if key not in raw:
            if required:
                raise QuorumError(f"{path} has no {key} (it must be {must_be}): {fix}")
        elif not valid(raw[key]):
            shown = json.dumps(raw[key])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise QuorumError(f"{path}: {key} is {shown}; it must be {must_be}: {fix}")


def load_model(model_dir: Path, device: str | torch.device = "cpu") -> tuple[Classifier, ModelInfo]:
    """Rebuild the network from `model.json` and load its weights, ready for inference."""
    info = read_info(model_dir)
    backbone = get_backbone(info.backbone)
    model = backbone.split(backbone.make(False), len(info.classes))
    try:
        model.load_state_dict(load_file(str(Path(model_dir) / WEIGHTS)))
    except Exception as exc:
        raise unreadable_weights(model_dir, exc) from None
    return model.to(device).eval(), info


def unreadable_weights(model_dir: Path, exc: Exception) -> QuorumError:
    """The one wording for weights that cannot be read, wherever they are read (loaded, sized, hashed)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
    return QuorumError(f"cannot load the weights of {model_dir} ({reason}): fine-tune it again")


def save_weights(model: Classifier, model_dir: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with files.atomic_path(Path(model_dir) / WEIGHTS) as tmp:
        # A plain write: a full disk is an OSError, not safetensors' own error.
        tmp.write_bytes(safetensors_bytes(state))


def write_model_json(model_dir: Path, info: dict) -> None:
    files.write_json(Path(model_dir) / MODEL_JSON, {"format_version": FORMAT_VERSION, **info})


def read_val_predictions(model_dir: Path, classes: tuple[str, ...]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A bundle's val_predictions.csv: (paths, true class indices, raw probabilities (images, classes))."""
    model_dir = Path(model_dir)
    path = model_dir / VAL_PREDICTIONS
    try:
        frame = files.read_csv(path, keep_default_na=False)
        index = {name: i for i, name in enumerate(classes)}
        y_true = np.array([index[label] for label in frame["true_label"]], dtype=int)
        probs = frame[[f"p_{name}" for name in classes]].to_numpy(float)
    except FileNotFoundError:
        raise QuorumError(f"{model_dir} has no {VAL_PREDICTIONS}: fine-tune it again with quorum finetune") from None
    except (KeyError, ValueError, pd.errors.ParserError) as exc:
        raise QuorumError(f"{path} is broken ({exc!r}): fine-tune {model_dir.name} again") from None
    if not (np.isfinite(probs) & (probs >= 0) & (probs <= 1)).all():  # an edited cell: a temperature fitted on it
        raise QuorumError(f"{path} is broken (probabilities that are not numbers from 0 to 1): fine-tune "
                          f"{model_dir.name} again")
    return list(frame["path"].astype(str)), y_true, probs
