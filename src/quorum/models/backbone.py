"""What quorum needs to know about a backbone: how to build it, split it into blocks + head, and feed it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from quorum.data.preprocess import CROP_FRACTION, Preprocessing
from quorum.models.classifier import Classifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    name: str
    make: Callable[[bool], nn.Module]  # pretrained? -> the original architecture
    split: Callable[[nn.Module, int], Classifier]  # (original, num_classes) -> blocks + new head
    head_keys: tuple[str, ...]  # state-dict prefixes of the original head, dropped on load
    native_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    fixed_size: bool = False  # ViT's position embeddings only fit its native size
    pretrained_available: bool = True
    crop_fraction: float = CROP_FRACTION  # eval: resize to size / crop_fraction, then centre-crop
    interpolation: str = "bilinear"

    def preprocessing(self, image_size: int) -> Preprocessing:
        return Preprocessing(image_size, self.mean, self.std, self.crop_fraction, self.interpolation)
