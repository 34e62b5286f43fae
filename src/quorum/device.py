"""Which device runs the work: `auto` takes cuda, then mps, then the CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from quorum.errors import QuorumError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise QuorumError("--device cuda: no CUDA GPU is visible to torch; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise QuorumError("--device mps: Apple's MPS is not available here; use --device auto or cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """Mixed precision on CUDA (bf16 where supported, else fp16); plain fp32 elsewhere."""
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@contextmanager
def threads_for(workers: int, processes: int = 1) -> Iterator[int]:
    """Within it, torch uses this process's share of the cores (`processes` share them, e.g. under
    torchrun) less what its loader workers take: oversubscribed cores make every parallel region wait
    for a preempted thread. OMP_NUM_THREADS, when the user set it, wins. The previous count is
    restored on the way out."""
    previous = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(min(previous, max(1, cores // max(1, processes) - workers)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
