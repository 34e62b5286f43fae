"""Finetune: phase 1 (frozen backbone) from cached features against the plain way, on the same data.

Both runs are the same recipe (seed, workers, epochs, data), differing only in `cache_features`;
each is timed whole, as a user waits for it: split check, model build, cache, every epoch, saving.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from quorum.models.bundle import MODEL_JSON
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe


@dataclass(frozen=True)
class FinetuneResult:
    backbone: str
    image_size: int
    epochs: int
    train_images: int
    val_images: int
    seconds: dict[str, float]  # plain, cached
    val_accuracy: dict[str, float]  # the kept (best) epoch's, as model.json records it


def bench_finetune(labelled: Path, weights: Path, work_dir: Path, image_size: int, epochs: int,
                   workers: int) -> FinetuneResult:
    recipe = Recipe(backbone="timm/tf_efficientnet_lite0", data=str(labelled), image_size=image_size, epochs=epochs,
                    unfreeze_after=epochs, weights=str(weights), name="lite0", workers=workers, seed=0)
    seconds, accuracy = {}, {}
    for variant, cached in (("plain", False), ("cached", True)):
        models_dir = work_dir / variant
        shutil.rmtree(models_dir, ignore_errors=True)  # both make their split and model from nothing
        began = time.perf_counter()
        model_dir = finetune(dataclasses.replace(recipe, models_dir=str(models_dir), cache_features=cached), quiet=True)
        seconds[variant] = time.perf_counter() - began
        info = json.loads((model_dir / MODEL_JSON).read_text())
        accuracy[variant] = float(info["metrics"]["accuracy"])
        val_images = int(info["split"]["val_images"])
    train_images = sum(1 for path in labelled.glob("train/*/*") if path.is_file())
    return FinetuneResult("timm/tf_efficientnet_lite0", image_size, epochs, train_images, val_images, seconds, accuracy)
