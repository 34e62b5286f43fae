"""The fine-tuning recipe: every setting of a run, resolved and saved with the model it made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from quorum.errors import QuorumError


@dataclass(frozen=True)
class Recipe:
    backbone: str
    data: str = "sample_data/labelled"
    image_size: int | None = None  # None: the backbone's native size
    epochs: int = 40
    unfreeze_after: int | None = None  # None: 3/4 of the epochs; 0 without pretrained weights
    train_blocks: int = 0  # blocks before the head that also train in phase 1
    lr: float = 1e-3  # phase 1 (head, plus `train_blocks`)
    finetune_lr: float = 1e-4  # phase 2 (everything): low, so pretrained features are kept
    batch_size: int = 32
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0  # linear warm-up at the start of each phase, then cosine decay
    weights: str | None = None  # imagenet | none | PATH; None: imagenet where the backbone has it
    name: str | None = None  # None: <backbone>-<size>
    models_dir: str = "models"
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    cache_features: bool = True  # phase 1 trains on cached frozen features when they fit in memory
    cache_views: int = 2  # augmented views of each training image in that cache, cycled across epochs
    pseudo_labels: str | None = None  # a quorum predict CSV: rows the vote agreed on join the training share
    pseudo_min_agreement: float = 1.0  # the agreement a row needs to be taken (1.0: unanimous)
    distill: str | None = None  # a `predict --probs` CSV: every readable row joins with the ensemble's probabilities
    # BatchNorm in phase 2: keep (running statistics, as phase 1 saw them) | update (batch statistics).
    # None: keep for pretrained weights, update for a backbone that starts from random ones.
    norm_stats: str | None = None
    # The epoch whose weights the bundle keeps: last (the final one, as fastai's fine_tune: the validation images
    # then fit the temperature and the trust table without having also chosen the epoch) | best (highest
    # validation accuracy, then lowest loss). None: last. Last is the default because on benchmarks/studies'
    # 18 paired runs it read +0.14 points on test on average, and best-on-validation picks on 60-200 images
    # doubled the spread of retrained models (RESULTS.md, "The kept epoch").
    keep: str | None = None

    def resolve(self, native_size: int, pretrained_available: bool) -> Recipe:
        """Fill every default that depends on the backbone, and check the numbers."""
        self.check()
        size = self.image_size or native_size
        weights = self.weights or ("imagenet" if pretrained_available else "none")
        if self.unfreeze_after is not None:
            unfreeze = self.unfreeze_after
        else:  # a random backbone learns nothing while frozen: train it whole from the first epoch
            unfreeze = 0 if weights == "none" else self.epochs * 3 // 4
        norm_stats = self.norm_stats or ("update" if weights == "none" else "keep")
        keep = self.keep or "last"
        name = self.name or f"{self.backbone.replace('timm/', '')}-{size}"
        resolved = dataclasses.replace(self, image_size=size, unfreeze_after=unfreeze, weights=weights, name=name,
                                       norm_stats=norm_stats, keep=keep)
        resolved.check()
        return resolved

    def check(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (self.unfreeze_after is None or self.unfreeze_after >= 0,
             f"--unfreeze-after must be 0 or more (got {self.unfreeze_after})"),
            (self.unfreeze_after is None or self.unfreeze_after <= self.epochs,
             f"--unfreeze-after {self.unfreeze_after} is more than --epochs {self.epochs}: the backbone would never "
             f"unfreeze; give at most --unfreeze-after {self.epochs} (= --epochs: train only the head)"),
            (self.norm_stats in (None, "keep", "update"),
             f"--norm-stats must be keep or update (got {self.norm_stats})"),
            (self.keep in (None, "best", "last"), f"--keep must be best or last (got {self.keep})"),
            (self.train_blocks >= 0, f"--train-blocks must be 0 or more (got {self.train_blocks})"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (0 <= self.seed < 2**32, f"--seed must be 0 to {2**32 - 1}, numpy's range (got {self.seed})"),
            (self.lr > 0 and self.finetune_lr > 0, "--lr and --finetune-lr must be positive"),
            (0 < self.val_fraction < 1, f"--val-fraction must be between 0 and 1 (got {self.val_fraction})"),
            (self.image_size is None or self.image_size >= 16,
             f"--image-size must be at least 16 (got {self.image_size})"),
            (self.distill is None or self.pseudo_labels is None,
             "--distill and --pseudo-labels both add the unlabelled images: give one of them"),
            (self.name is None or ("/" not in self.name and not self.name.startswith(".")),
             f"--name '{self.name}' must be a plain folder name (no '/', not starting with '.')"),
        ]
        for ok, message in checks:
            if not ok:
                raise QuorumError(message)
        if Path(self.models_dir).resolve().is_relative_to(Path(self.data).resolve()):
            raise QuorumError(f"--models-dir {self.models_dir} is inside --data {self.data}: its folders would be "
                              "taken for classes; choose a models folder outside the labelled one")

    @property
    def frozen_epochs(self) -> int:
        return min(self.unfreeze_after or 0, self.epochs)

    @property
    def keeps_norm_stats(self) -> bool:
        """Phase 2 BatchNorm uses running statistics (`resolve` sets norm_stats)."""
        return self.norm_stats == "keep"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
