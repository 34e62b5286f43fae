"""Time per image of a model on this machine: eval inference on random pixels at its input size."""

from __future__ import annotations

import os
import time

import torch

from quorum.bundle import ModelInfo, load_model
from quorum.device import autocast

MAX_BATCH = 16


def seconds_per_image(info: ModelInfo, device: torch.device, budget_s: float = 2.0) -> float:
    """Forward time per image, after a warm-up, in batches of up to MAX_BATCH, within about `budget_s`.

    The fastest of a few batches counts: other work on the machine only ever adds time, so the
    minimum is the steadiest estimate (as `timeit` advises). Random pixels are enough: a CNN's cost
    does not depend on what the image shows.
    """
    model, _ = load_model(info.path, device)
    make = lambda n: torch.randn(n, 3, info.image_size, info.image_size, device=device)  # noqa: E731
    with torch.inference_mode(), autocast(device):
        _run(model, make(1), device)  # first call: allocations, kernel choices
        began = time.perf_counter()
        _run(model, make(1), device)
        guess = time.perf_counter() - began
        # A batch takes about a sixth of the budget: big enough to be fair, small enough to repeat.
        batch = int(max(1, min(MAX_BATCH, budget_s / 6 / max(guess, 1e-6))))
        x = make(batch)
        _run(model, x, device)  # a new batch shape pays its own set-up once (oneDNN, cuDNN)
        times: list[float] = []
        while len(times) < 3 or (len(times) < 7 and sum(times) < budget_s / 2):
            began = time.perf_counter()
            _run(model, x, device)
            times.append(time.perf_counter() - began)
    return min(times) / batch


def _run(model, x: torch.Tensor, device: torch.device) -> None:
    model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()  # CUDA returns before the work is done


def busy_cpu() -> str | None:
    """Why CPU timings just taken cannot be trusted, or None: other work was using the cores.

    Torch's CPU threads wait for each other at every layer, so a busy machine slows them far
    more than its load suggests.
    """
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]  # includes this process's own threads, hence the slack
    return f"the machine was busy (load {load:.1f} on {cores} cores)" if load > cores + 1 else None
