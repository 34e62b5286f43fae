"""Labelled images as a torch Dataset, and the loader that drops unreadable files instead of crashing."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.markup import escape
from torch.utils.data import DataLoader, Dataset, default_collate

from quorum.console import say
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
            image = load_rgb(self.root / path)
        except UnreadableImage:
            return None  # dropped by collate_readable: never a crash mid-epoch, never a stand-in image
        try:
            return self.transform(image), label, i
        except Exception as exc:  # decoded, but the resize or crop refused it (predict gives it an error row)
            reason = f"cannot preprocess ({type(exc).__name__}: {str(exc)[:120]})"
            say(f"[yellow]{escape(f'left out {path}: {reason}')}[/yellow]")
            return None


def collate_readable(batch):
    batch = [item for item in batch if item is not None]
    return default_collate(batch) if batch else None


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0,
                sampler=None, pin_memory: bool = False) -> DataLoader:
    """`pin_memory` only for batches bound for a CUDA device: on the CPU it is a copy for nothing."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=collate_readable, generator=generator,
                      persistent_workers=False, pin_memory=pin_memory)
