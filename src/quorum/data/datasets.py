"""Labelled images as a torch Dataset, and the loader that drops unreadable files instead of crashing."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from quorum.data.images import UnreadableImage, load_rgb


class LabelledImages(Dataset):
    """(image tensor, class index, position) per item; None for a file that became unreadable."""

    def __init__(self, root: Path, items: list[tuple[str, int]], transform):
        self.root, self.items, self.transform = Path(root), items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        try:
            return self.transform(load_rgb(self.root / path)), label, i
        except UnreadableImage:
            return None  # dropped by collate_readable: never a crash mid-epoch, never a stand-in image


def collate_readable(batch):
    batch = [item for item in batch if item is not None]
    return default_collate(batch) if batch else None


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0,
                sampler=None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=collate_readable, generator=generator,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())
