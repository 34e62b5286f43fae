"""One shape for every backbone: an ordered list of blocks, then a linear head.

Seeing every network as `head(blocks[n-1](...blocks[0](x)))` is what makes the rest simple:
freezing "all but the last K blocks", caching the input of those K blocks while the rest is
frozen, and counting trainable parameters all work the same for ResNet, MobileNet, ViT or timm.
"""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """`blocks` run in order (the last one ends in a flat feature vector); `head` maps it to logits."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward_blocks(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        for block in self.blocks[start:]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Logits; `start` > 0 means `x` is already the input of block `start` (cached features)."""
        return self.head(self.forward_blocks(x, start))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the flat feature vector the head reads): what the unknown score measures distance in."""
        features = self.forward_blocks(x)
        return self.head(features), features

    def prefix(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """The input of block `stop`: what a frozen prefix hands to the trainable part."""
        for block in self.blocks[:stop]:
            x = block(x)
        return x


def linear_head(in_features: int, num_classes: int, dropout: float) -> nn.Module:
    linear = nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else nn.Sequential(linear)


def first_trainable_block(model: Classifier, train_blocks: int | None) -> int:
    """Index of the first block that trains: all of them (None), or only the last `train_blocks`."""
    if train_blocks is None:
        return 0
    return max(0, len(model.blocks) - train_blocks)


def freeze(model: Classifier, train_blocks: int | None) -> None:
    """Phase 1 (`train_blocks` = K): only the head and the last K blocks learn. Phase 2 (None): all."""
    start = first_trainable_block(model, train_blocks)
    for index, block in enumerate(model.blocks):
        block.requires_grad_(index >= start)
    model.head.requires_grad_(True)


def set_train_mode(model: Classifier, train_blocks: int | None, keep_norm_stats: bool = False) -> None:
    """Training mode, except frozen blocks stay in eval mode so their BatchNorm statistics keep
    their pretrained values (a frozen layer whose running mean drifts is not frozen).

    `keep_norm_stats`: every BatchNorm of the backbone also stays in eval mode, normalising with its
    running statistics while its weights train. Phase 1 fitted the head to features computed that
    way; switching BatchNorm to batch statistics at the unfreeze changes those features at once
    (a Lite0 head fell from 82% to 66.5% val accuracy in one epoch), so a pretrained backbone keeps them.
    """
    model.train()
    for block in model.blocks[: first_trainable_block(model, train_blocks)]:
        block.eval()
    if keep_norm_stats:
        for module in model.blocks.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
