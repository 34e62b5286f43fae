"""Images as feature vectors: a pretrained backbone's (what `quorum check` compares) and a member's own
(what the unknown score measures distance in).

A member's features are the flat vector its head reads. `finetune` stores those of its training and
validation images beside its weights (`features.npz`), so predict can say how far an image lies from
every training image without the labelled folder at hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quorum import files
from quorum.console import track
from quorum.data.datasets import LabelledImages, make_loader
from quorum.data.preprocess import Preprocessing
from quorum.models.bundle import FEATURES, WEIGHTS, ModelInfo

BACKBONE = "timm/tf_efficientnet_lite0"
# Enough neighbours to stand for the training set, few enough to keep a bundle small: 5,000 x 1,280 float16
# numbers are 12 MB.
MAX_TRAINING_IMAGES = 5000


@torch.inference_mode()
def image_features(features_of: Callable[[torch.Tensor], np.ndarray], preprocessing: Preprocessing, root: Path,
                   paths: list[str], batch_size: int = 32, workers: int = 0, description: str = "features",
                   quiet: bool = False) -> np.ndarray:
    """(images, features) float32 in `paths` order, from `features_of(uint8 pixels)`; a row of NaN for an
    image that cannot be read."""
    dataset = LabelledImages(root, [(path, 0) for path in paths], preprocessing.eval_pixels())
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers)
    out = None
    for batch in track(loader, len(loader), description, quiet):
        if batch is None:  # every image of the batch unreadable
            continue
        pixels, _, positions = batch
        features = features_of(pixels)
        if out is None:
            out = np.full((len(paths), features.shape[1]), np.nan, dtype=np.float32)
        out[positions.numpy()] = features
    return out if out is not None else np.full((len(paths), 1), np.nan, dtype=np.float32)


def frozen_features(root: Path, paths: list[str], image_size: int = 224, batch_size: int = 32, workers: int = 0,
                    quiet: bool = False) -> np.ndarray:
    """EfficientNet-Lite0's ImageNet features (the `demo` extra's weights, no download), as phase 1 sees them."""
    from quorum.models import weights  # timm: only when a backbone is built
    from quorum.models.efficientnet_keys import packaged_weights
    from quorum.models.registry import get_backbone

    backbone = get_backbone(BACKBONE)
    model = weights.build(backbone, 2, str(packaged_weights(BACKBONE))).eval()  # the head is never used
    preprocessing = backbone.preprocessing(image_size)
    normalize = preprocessing.normalizer()
    return image_features(lambda pixels: model.forward_blocks(normalize(pixels)).float().numpy(), preprocessing,
                          root, paths, batch_size, workers, f"features of {len(paths)} images ({BACKBONE}, "
                          f"{image_size} px)", quiet)


@dataclass(frozen=True)
class TrainingFeatures:
    """A member's features of (up to MAX_TRAINING_IMAGES of) its training images and of its validation images."""

    train: np.ndarray  # (images, width) float32
    val: np.ndarray  # (images, width) float32, in val_paths order
    val_paths: list[str]


def training_sample(paths: list[str]) -> list[str]:
    """At most MAX_TRAINING_IMAGES of `paths`, evenly spread through them (the split's order mixes classes)."""
    if len(paths) <= MAX_TRAINING_IMAGES:
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, MAX_TRAINING_IMAGES).astype(int)]


def store_training_features(model_dir: Path, inference, root: Path, train_paths: list[str], val_paths: list[str],
                            batch_size: int = 32, workers: int = 0, quiet: bool = False) -> None:
    """model_dir/features.npz from `inference` (a `TorchInference` of the bundle's model) on its training
    images (a sample of MAX_TRAINING_IMAGES at most) and its validation images, under `root`."""
    train_paths = training_sample(train_paths)

    def features_of(pixels: torch.Tensor) -> np.ndarray:
        return inference.with_features(pixels)[1]

    found = [image_features(features_of, inference.preprocessing, root, paths, batch_size, workers,
                            f"features of the {len(paths)} {share} images", quiet)
             for share, paths in (("training", train_paths), ("validation", val_paths))]
    save_training_features(model_dir, *found, val_paths)


def save_training_features(model_dir: Path, train: np.ndarray, val: np.ndarray, val_paths: list[str]) -> None:
    """model_dir/features.npz, tagged with the weights it came from (a model fine-tuned again never meets
    another's features). Unreadable images' NaN rows are left out of `train`."""
    train = train[~np.isnan(train).any(axis=1)]
    with files.atomic_path(Path(model_dir) / FEATURES) as tmp, open(tmp, "wb") as out:
        np.savez(out, train=train.astype(np.float16), val=val.astype(np.float16), val_paths=np.array(val_paths),
                 weights_sha256=np.array(files.sha256(Path(model_dir) / WEIGHTS)))


def read_training_features(info: ModelInfo) -> TrainingFeatures | None:
    """The member's stored features, or None: none stored (a bundle from before they were), unreadable, or
    from other weights."""
    try:
        with np.load(info.path / FEATURES, allow_pickle=False) as stored:
            if str(stored["weights_sha256"]) != files.sha256(info.path / WEIGHTS):
                return None
            return TrainingFeatures(stored["train"].astype(np.float32), stored["val"].astype(np.float32),
                                    stored["val_paths"].tolist())
    except (OSError, KeyError, ValueError):
        return None


def add_training_features(info: ModelInfo, quiet: bool = False) -> str | None:
    """features.npz for a bundle fine-tuned before finetune stored it, from the labelled folder and the split
    its model.json records (`quorum calibrate`); None once written, else why it could not be."""
    from quorum.models.bundle import load_model, read_val_predictions
    from quorum.models.inference import TorchInference

    root, table = info.labelled_root, info.path.parent / info.raw.get("split", {}).get("file", "split.csv")
    if root is None or not root.is_dir() or not table.is_file():
        return f"its labelled folder ({root or 'not recorded'}) or {table} is not there"
    train_paths = files.read_csv(table, dtype={"path": str}).query("subset == 'train'")["path"].tolist()
    val_paths = read_val_predictions(info.path, info.classes)[0]
    model, _ = load_model(info.path, "cpu")
    store_training_features(info.path, TorchInference(model, info.preprocessing, torch.device("cpu")), root,
                            train_paths, val_paths, quiet=quiet)
    return None
