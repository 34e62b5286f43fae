"""Time per image of each member on this machine, through the inference path predict runs it on.

1. Warm-up: a first call (allocations, kernel choices), then one at the batch that is timed (a new
   shape pays its own set-up once: oneDNN, cuDNN, ONNX Runtime's buffers).
2. Rounds: every member times one batch per round, in turn, for REPEATS rounds. A burst of other
   work then falls on all members alike instead of on whichever one was being timed.
3. The median round counts (one slow or lucky round moves nothing). Rounds that spread widely, or
   a load average above the cores, mean the machine was busy: the caller says so.
Random pixels are enough: a CNN's cost does not depend on what the image shows.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

from quorum.models.inference import cpu_cores
from quorum.predict.members import Member

MAX_BATCH = 16
REPEATS = 5
STEADY_SPREAD = 1.5  # slowest / fastest round of one member, beyond which the timings are unsteady


@dataclass(frozen=True)
class Timings:
    seconds: dict[str, float]  # member name -> median seconds per image
    spread: dict[str, float]  # member name -> slowest round / fastest round


def seconds_per_image(members: list[Member], budget_s: float = 2.0) -> Timings:
    """Each member's time per image within about `budget_s` each, batches of up to MAX_BATCH."""
    batches = {member.name: _warm_batch(member, budget_s) for member in members}
    rounds: dict[str, list[float]] = {member.name: [] for member in members}
    for _ in range(REPEATS):
        for member in members:
            x = batches[member.name]
            began = time.perf_counter()
            member.run(x)  # returns numpy: the device has finished
            rounds[member.name].append((time.perf_counter() - began) / len(x))
    return Timings({name: statistics.median(times) for name, times in rounds.items()},
                   {name: max(times) / max(min(times), 1e-12) for name, times in rounds.items()})


def _warm_batch(member: Member, budget_s: float) -> torch.Tensor:
    size = member.info.image_size
    make = lambda n: torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)  # noqa: E731
    member.run(make(1))
    began = time.perf_counter()
    member.run(make(1))
    guess = time.perf_counter() - began
    # A batch takes about a tenth of the budget: big enough to be fair, small enough to repeat.
    x = make(int(max(1, min(MAX_BATCH, budget_s / (2 * REPEATS) / max(guess, 1e-6)))))
    member.run(x)
    return x


def busy_cpu(timings: Timings | None = None) -> str | None:
    """Why CPU timings just taken cannot be trusted, or None: other work was using the cores."""
    cores = cpu_cores()
    load = os.getloadavg()[0]  # includes this process's own threads, hence the slack
    if load > cores + 1:
        return f"the machine was busy (load {load:.1f} on {cores} cores)"
    unsteady = {name: spread for name, spread in (timings.spread if timings else {}).items() if spread > STEADY_SPREAD}
    if unsteady:
        name = max(unsteady, key=unsteady.get)
        return f"the timings were unsteady ({name}'s rounds differed up to {unsteady[name]:.1f}x)"
    return None
