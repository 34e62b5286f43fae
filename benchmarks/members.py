"""The voting trios the predict benchmark runs, fine-tuned with quorum itself (once, then reused).

1. `reference`: the issue's trio, mobilenet_v2 at 64 and 224 px and resnet50 at 224 (tie-breaker).
   No ImageNet weights can be downloaded here and fine-tuning these backbones in full is hours of
   CPU, so they start from random weights and only the head trains. Their cost per image is the
   real one; their agreement is whatever that training gives (see RESULTS.md: it is degenerate).
2. `pretrained`: the same shape (one small model at 64 and at its native size, a bigger one as
   tie-breaker) from the offline ImageNet weights in ../shared/weights: timm's tf_efficientnet_lite0
   at 64 and 224 px and lite2 at 260 px. Members with real features agree for real.

Every member trains the same way: frozen backbone, head on cached features (one augmented view),
20 epochs at lr 3e-3, where the cache makes the extra epochs nearly free.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from quorum.models.bundle import MODEL_JSON
from quorum.models.registry import get_backbone
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe


@dataclass(frozen=True)
class Trio:
    name: str
    recipes: tuple[Recipe, ...]  # cheapest first, as the table lists them
    tie_breaker: str  # a member's folder name

    def model_dirs(self) -> list[Path]:
        return [Path(recipe.models_dir) / _resolved(recipe).name for recipe in self.recipes]


def trios(models_dir: Path, labelled: Path, weights_dir: Path, sizes: dict[str, tuple[int, ...]],
          epochs: int, workers: int) -> list[Trio]:
    """Both trios; `sizes` gives each one's three input sizes (the --quick run shrinks them)."""
    def recipe(trio: str, backbone: str, size: int, weights: str) -> Recipe:
        return Recipe(backbone=backbone, data=str(labelled), image_size=size, epochs=epochs, unfreeze_after=epochs,
                      lr=3e-3, weights=weights, models_dir=str(models_dir / trio), workers=workers, seed=0,
                      cache_views=1)

    lite = [(f"timm/tf_efficientnet_lite{k}", str(weights_dir / f"tf_efficientnet_lite{k}.safetensors"))
            for k in (0, 0, 2)]
    reference = [("mobilenet_v2", "none"), ("mobilenet_v2", "none"), ("resnet50", "none")]
    made = []
    for name, members in (("reference", reference), ("pretrained", lite)):
        recipes = tuple(recipe(name, backbone, size, weights)
                        for (backbone, weights), size in zip(members, sizes[name]))
        made.append(Trio(name, recipes, _resolved(recipes[-1]).name))
    return made


def build(trio: Trio, quiet: bool = True) -> list[Path]:
    """Fine-tune every member whose folder is missing or was made by another recipe; return the folders."""
    for recipe, model_dir in zip(trio.recipes, trio.model_dirs()):
        if not _made_by(model_dir, recipe):
            finetune(recipe, quiet=quiet)
    return trio.model_dirs()


def _resolved(recipe: Recipe) -> Recipe:
    backbone = get_backbone(recipe.backbone)
    return recipe.resolve(backbone.native_size, backbone.pretrained_available)


def _made_by(model_dir: Path, recipe: Recipe) -> bool:
    path = model_dir / MODEL_JSON
    if not path.is_file():
        return False
    saved = json.loads(path.read_text()).get("recipe", {})
    return saved == json.loads(json.dumps(dataclasses.asdict(_resolved(recipe))))  # JSON types on both sides
