"""Running under `torchrun`: one process per device, PyTorch's own process group, rank 0 writes files.

Nothing here is needed for a single process: `current()` then says world size 1 and every helper
is a no-op, so the same code path serves a laptop and a cluster.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from quorum.errors import QuorumError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> list[int]:
        """This process's positions out of n items: every size-th one, so shares differ by at most one."""
        return list(range(self.rank, n, self.size))

    def share_padded(self, n: int) -> list[int]:
        """Like `share`, but every process gets the same count (wrapping around, as DistributedSampler
        does): DDP needs the same number of steps everywhere."""
        total = -(-n // self.size) * self.size
        return [i % n for i in range(self.rank, total, self.size)]


def is_main_process() -> bool:
    """Rank 0 of a torchrun run, or a run of one process: known from torchrun's environment before the group is
    joined (the process that will write)."""
    return int(os.environ.get("RANK", "0")) == 0


def current(device: str = "auto") -> World:
    """The world torchrun describes in the environment, joining its process group on first call.

    `device` is the --device asked for: it decides the backend, so --device cpu on a GPU machine
    runs on gloo."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device, torch.cuda.is_available()))
        atexit.register(leave)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def leave() -> None:
    """Leave the process group before the interpreter exits, as PyTorch asks: left to the group's destructor at
    exit, a gloo process whose peer has already gone can abort (SIGABRT, seen on this loaded machine in the
    torchrun tests, rarely)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def backend_for(requested: str, cuda_available: bool) -> str:
    """nccl between GPUs, gloo between CPU (or MPS) processes: PyTorch's own backends, nothing home-made.
    `auto` takes a GPU when there is one (as `device_for` does), so it takes nccl then."""
    on_gpu = cuda_available and (requested == "auto" or requested.startswith("cuda"))
    return "nccl" if on_gpu else "gloo"


def device_for(world: World, requested: str) -> str:
    """Under torchrun each process takes its own GPU; `requested` stands otherwise."""
    if world.active and torch.cuda.is_available() and requested in ("auto", "cuda"):
        torch.cuda.set_device(world.local_rank)
        return f"cuda:{world.local_rank}"
    return requested


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def gather(world: World, value):
    """Every process's `value`, in rank order (a list of one outside torchrun)."""
    if not world.active:
        return [value]
    values = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def broadcast(world: World, value):
    """Rank 0's `value` on every process."""
    if not world.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(world: World, value):
    """Every process's `value`, in rank order, on rank 0 only (None elsewhere): only rank 0 writes."""
    if not world.active:
        return [value]
    values = [None] * world.size if world.is_main else None
    dist.gather_object(value, values, dst=0)
    return values


def _all_reduce(value: int, op) -> int:
    """`value` reduced over every process of the group torchrun started (itself outside torchrun)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    box = torch.tensor([value], device=device)
    dist.all_reduce(box, op=op)
    return int(box.item())


def most(n: int) -> int:
    """The largest `n` of all processes: how many steps each must take so none is left waiting."""
    return _all_reduce(n, dist.ReduceOp.MAX)


def everyone(flag: bool) -> bool:
    """True only if `flag` is true in every process: DDP steps must be taken by all or by none."""
    return bool(_all_reduce(int(flag), dist.ReduceOp.MIN))


def run_on_main(world: World, compute):
    """`compute()` on rank 0 only (None elsewhere). Its QuorumError is raised on every process,
    so none waits forever for a rank that stopped."""
    result, error = None, None
    if world.is_main:
        try:
            result = compute()
        except QuorumError as exc:
            error = str(exc)
        except BaseException as exc:  # a bug or an OSError: the others must not wait for it either
            broadcast(world, f"the main process (rank 0) failed: {type(exc).__name__}: {exc}")
            raise
    error = broadcast(world, error)
    if error:
        raise QuorumError(error)
    return result
