"""Phase 1 from cached features: pay for the frozen backbone once, not once per epoch.

While blocks [0, start) are frozen (and in eval mode), their output for a given input image never
changes, so we compute it once for a few augmented views of each training image (cycled across
epochs) and once for the validation images, then train the head (and the last `train_blocks`
blocks) on those tensors.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from quorum.console import track
from quorum.data.datasets import LabelledImages, make_loader
from quorum.models.classifier import Classifier

# Keep the cache to a quarter of the machine's memory: the rest is for the model, the loader
# workers and everything else the user runs.
MEMORY_SHARE = 0.25


def memory_budget() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_SHARE)


class FeatureCache:
    def __init__(self, start: int, train_views: list[TensorDataset], val: TensorDataset):
        self.start, self.train_views, self.val = start, train_views, val

    def train_loader(self, epoch: int, batch_size: int, seed: int) -> DataLoader | list:
        view = self.train_views[epoch % len(self.train_views)]
        if not len(view):  # nothing readable in this process's share: it takes empty steps (see train_one_epoch)
            return []
        return DataLoader(view, batch_size=batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(seed))

    def val_loader(self, batch_size: int) -> DataLoader:
        return DataLoader(self.val, batch_size=batch_size)


def estimate_bytes(model: Classifier, start: int, image_size: int, images: int, device: torch.device) -> int:
    """Size of the cache, from the shape of one image's features."""
    with torch.inference_mode():
        model.eval()
        features = model.prefix(torch.zeros(1, 3, image_size, image_size, device=device), start)
    return features.numel() * features.element_size() * images


@torch.inference_mode()
def _features(model: Classifier, normalize: nn.Module, dataset: LabelledImages, start: int, device: torch.device,
              batch_size: int, workers: int, seed: int, quiet: bool, description: str) -> TensorDataset:
    """(features, label, position) for every readable image; augmentation draws from `seed`."""
    model.eval()  # the frozen blocks must run exactly as they do during training
    torch.manual_seed(seed)
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers, seed=seed,
                         pin_memory=device.type == "cuda")
    parts: list[list[torch.Tensor]] = [[], [], []]
    for batch in track(loader, len(loader), description, quiet):
        if batch is None:
            continue
        parts[0].append(model.prefix(normalize(batch[0].to(device, non_blocking=True)), start).float().cpu())
        parts[1].append(batch[1])
        parts[2].append(batch[2])
    if not parts[0]:  # every image unreadable (a process's whole share, under torchrun): an empty set
        return TensorDataset(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    return TensorDataset(*(torch.cat(p) for p in parts))


def build(model: Classifier, normalize: nn.Module, start: int, train_set: LabelledImages, val_set: LabelledImages,
          views: int, device: torch.device, batch_size: int, workers: int, seed: int, quiet: bool) -> FeatureCache:
    train_views = [
        _features(model, normalize, train_set, start, device, batch_size, workers, seed + 10_000 + view, quiet,
                  f"caching features, view {view + 1}/{views}")
        for view in range(views)
    ]
    val = _features(model, normalize, val_set, start, device, batch_size, workers, seed, quiet,
                    "caching validation features")
    return FeatureCache(start, train_views, val)
