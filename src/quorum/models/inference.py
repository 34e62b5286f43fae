"""One inference path: a member's uint8 pixels in, its class probabilities out.

Validation during training, `quorum predict`, the report's `--data` scoring and its timing all
call a model through `TorchInference`, so the pixels a model sees and the arithmetic it runs on
them are written once.
"""

from __future__ import annotations

import numpy as np
import torch

from quorum.data.preprocess import Preprocessing
from quorum.device import autocast
from quorum.models.classifier import Classifier


class TorchInference:
    """A model on a device: uint8 pixels (n, 3, size, size) -> softmax probabilities (n, classes).

    `start` > 0 means the input is already the input of block `start` (phase 1's cached features),
    so it is neither normalised nor run through the blocks before it.
    """

    def __init__(self, model: Classifier, preprocessing: Preprocessing, device: torch.device,
                 channels_last: bool = False):
        self.model, self.preprocessing, self.device = model, preprocessing, torch.device(device)
        self.normalize = preprocessing.normalizer().to(self.device)
        # NHWC: oneDNN on the CPU ran these backbones 1.2-1.7x faster with it (benchmarks/RESULTS.md),
        # tensor cores take it without transposes. Off while training: the trainer owns the weights' layout.
        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor, start: int = 0) -> np.ndarray:
        self.model.eval()
        x = inputs.to(self.device, non_blocking=True)
        if start == 0:
            x = self.normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device):
            logits = self.model(x, start=start)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()
