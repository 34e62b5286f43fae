"""Time per image of a model on this machine: eval inference on random pixels at its input size."""

from __future__ import annotations

import os
import time

import torch

from quorum.predict.members import Member

MAX_BATCH = 16


def seconds_per_image(member: Member, budget_s: float = 2.0) -> float:
    """Time per image of the member's own inference path (as predict runs it), after a warm-up, in
    batches of up to MAX_BATCH, within about `budget_s`.

    The fastest of a few batches counts: other work on the machine only ever adds time, so the
    minimum is the steadiest estimate (as `timeit` advises). Random pixels are enough: a CNN's cost
    does not depend on what the image shows.
    """
    size = member.info.image_size
    make = lambda n: torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)  # noqa: E731
    member.run(make(1))  # first call: allocations, kernel choices
    began = time.perf_counter()
    member.run(make(1))
    guess = time.perf_counter() - began
    # A batch takes about a sixth of the budget: big enough to be fair, small enough to repeat.
    batch = int(max(1, min(MAX_BATCH, budget_s / 6 / max(guess, 1e-6))))
    x = make(batch)
    member.run(x)  # a new batch shape pays its own set-up once (oneDNN, cuDNN)
    times: list[float] = []
    while len(times) < 3 or (len(times) < 7 and sum(times) < budget_s / 2):
        began = time.perf_counter()
        member.run(x)  # returns numpy: the device has finished
        times.append(time.perf_counter() - began)
    return min(times) / batch


def busy_cpu() -> str | None:
    """Why CPU timings just taken cannot be trusted, or None: other work was using the cores.

    Torch's CPU threads wait for each other at every layer, so a busy machine slows them far
    more than its load suggests.
    """
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]  # includes this process's own threads, hence the slack
    return f"the machine was busy (load {load:.1f} on {cores} cores)" if load > cores + 1 else None
