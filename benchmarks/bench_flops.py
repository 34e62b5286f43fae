"""How far each member is from the machine's limit: its achieved GFLOP/s against a matrix multiply's.

FLOPs come from `torch.utils.flop_counter` on one forward pass (a multiply-add counts as 2);
images/s from inference on random tensors, so no decoding is included, in both memory formats:
NCHW (what a plain script runs) and channels_last (what quorum predict converts its members to).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from quorum.models.bundle import load_model

MATMUL_SIZE = 2048


@dataclass(frozen=True)
class FlopsResult:
    model: str
    image_size: int
    gflop_per_image: float
    images_per_s: float
    images_per_s_channels_last: float


def matmul_gflops(size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """float32 (size x size) @ (size x size): what this machine's BLAS reaches on dense work."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: threads started, buffers allocated
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - began) / 1e9


def gflop_per_image(model: torch.nn.Module, size: int) -> float:
    """The forward pass's GFLOP on one `size` x `size` image, as torch counts them."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def model_flops(model_dir: Path, batch_size: int) -> FlopsResult:
    model, info = load_model(model_dir, "cpu")
    size = info.image_size
    gflop = gflop_per_image(model, size)
    x = torch.randn(batch_size, 3, size, size)
    plain = _images_per_s(model, x)
    channels_last = _images_per_s(model.to(memory_format=torch.channels_last),
                                  x.contiguous(memory_format=torch.channels_last))
    return FlopsResult(model_dir.name, size, gflop, plain, channels_last)


@torch.inference_mode()
def _images_per_s(model: torch.nn.Module, x: torch.Tensor, seconds: float = 2.0) -> float:
    """Batches until `seconds` have passed (at least two), after two warm-up batches."""
    for _ in range(2):  # oneDNN picks and caches its kernels for this shape on the first calls
        model(x)
    batches, began = 0, time.perf_counter()
    while batches < 2 or time.perf_counter() - began < seconds:
        model(x)
        batches += 1
    return batches * len(x) / (time.perf_counter() - began)
