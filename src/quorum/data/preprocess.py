"""Preprocessing, written once: what pixels a model sees, from the settings saved in its model.json.

Training, validation, predict and report all build their pixels here, so a model sees the same
pixels everywhere. Images leave the loader as uint8 (a quarter of float32's bytes to copy); the
float conversion and normalisation run on the device, in `Preprocessing.normalizer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import functional as F

# Resize to size / 0.875 before the centre crop: the ImageNet convention most backbones were trained with.
CROP_FRACTION = 0.875
TTA_MAX_VIEWS = 10  # the centre crop, four shifted crops and the mirror of each
INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
                  "nearest": T.InterpolationMode.NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_fraction: float = CROP_FRACTION
    interpolation: str = "bilinear"

    @classmethod
    def from_model_json(cls, raw: dict) -> Preprocessing:
        return cls(size=int(raw["image_size"]), mean=tuple(raw["mean"]), std=tuple(raw["std"]),
                   crop_fraction=float(raw["crop_fraction"]), interpolation=str(raw["interpolation"]))

    def as_dict(self) -> dict:
        """The fields model.json keeps (image_size, not size: the name the rest of model.json uses)."""
        fields = asdict(self)
        fields["image_size"] = fields.pop("size")
        fields["mean"], fields["std"] = list(self.mean), list(self.std)
        return fields

    @property
    def pixel_key(self) -> tuple:
        """What decides the eval pixels (mean and std act later): members sharing it share one copy."""
        return self.size, self.crop_fraction, self.interpolation

    @property
    def resize_mode(self) -> T.InterpolationMode:
        """The model's own interpolation, for training and evaluation alike."""
        return INTERPOLATIONS[self.interpolation]

    def eval_pixels(self) -> Callable[[Image.Image], torch.Tensor]:
        """Resize the short side to size / crop_fraction (floored, as timm does), centre-crop: uint8 (3, size, size)."""
        return T.Compose([self._eval_resize(), T.CenterCrop(self.size), T.PILToTensor()])

    def _eval_resize(self) -> T.Resize:
        return T.Resize(math.floor(self.size / self.crop_fraction), interpolation=self.resize_mode, antialias=True)

    def tta_pixels(self, views: int) -> Callable[[Image.Image], torch.Tensor]:
        """Test-time augmentation: uint8 (views, 3, size, size) from one decode and one resize. View 0 is
        exactly `eval_pixels`; then its horizontal mirror; then centre crops shifted by a sixteenth of
        the size towards each corner, and their mirrors (fastai's `tta` and timm's `--tta` use flips
        and shifted crops the same way). Beyond the eval crop's margin, a shift reads black padding."""
        if not 1 <= views <= TTA_MAX_VIEWS:
            raise ValueError(f"views must be 1..{TTA_MAX_VIEWS}, got {views}")
        resize = self._eval_resize()
        shift = max(1, self.size // 16)
        offsets = [(0, 0), (-shift, -shift), (shift, shift), (-shift, shift), (shift, -shift)]

        def pixels(image: Image.Image) -> torch.Tensor:
            resized = resize(image)
            # T.CenterCrop's own arithmetic, so that view 0 is the eval crop to the pixel.
            top, left = round((resized.height - self.size) / 2), round((resized.width - self.size) / 2)
            crops = [F.pil_to_tensor(F.crop(resized, top + dy, left + dx, self.size, self.size)) for dy, dx in offsets]
            mirrored = [crop.flip(-1) for crop in crops]
            ordered = [item for pair in zip(crops, mirrored) for item in pair]  # centre, its mirror, shift, ...
            return torch.stack(ordered[:views])

        return pixels

    def train_pixels(self, strong: bool = False) -> Callable[[Image.Image], torch.Tensor]:
        """Mild, label-preserving augmentation: uint8 (3, size, size). `strong` adds RandAugment (2 ops,
        magnitude 9), the noise Noisy Student puts on a student so it learns more than its teachers' answers."""
        steps = [T.RandomResizedCrop(self.size, scale=(0.6, 1.0), interpolation=self.resize_mode, antialias=True),
                 T.RandomHorizontalFlip(), T.RandomRotation(10)]
        return T.Compose([*steps, *([T.RandAugment(num_ops=2, magnitude=9)] if strong else []), T.PILToTensor()])

    def normalizer(self) -> Normalizer:
        return Normalizer(self.mean, self.std)


class Normalizer(nn.Module):
    """uint8 pixels -> the float input a model was trained on: /255, minus the mean, over the std
    (exactly torchvision's ToTensor + Normalize, done on the device)."""

    def __init__(self, mean, std):
        super().__init__()
        # Not saved in state dicts: model.json holds mean and std, the weights file only weights.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # One new tensor, then in place: the same arithmetic, but a new 19 MB tensor per step (a batch of 32 at
        # 224 px) made each batch 35 ms instead of 3.5 on the CPU, a twentieth of predict --engine int8's time.
        # The copy keeps a float input of the caller's unchanged.
        return pixels.to(torch.float32, copy=True).div_(255).sub_(self.mean).div_(self.std)
