"""Preprocessing. Eval: resize the short side, centre-crop. Train: mild, label-preserving augmentation."""

from __future__ import annotations

from torchvision import transforms as T

# Resize to size / 0.875 before the centre crop: the ImageNet convention the backbones were trained with.
CROP_FRACTION = 0.875


def eval_transform(image_size: int, mean, std) -> T.Compose:
    return T.Compose([
        T.Resize(round(image_size / CROP_FRACTION), antialias=True),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def train_transform(image_size: int, mean, std) -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomRotation(10),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
