"""torch.distributed set-up shared by evaluation, training and data prep.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), each process takes a shard;
launched plainly, everything runs in one process and the collectives are no-ops.
gloo serves CPUs, nccl GPUs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """Every ``world_size``-th item starting at ``rank``: balanced and order-preserving."""
        return list(items[self.rank :: self.world_size])

    def device(self, requested: str) -> torch.device:
        """``cuda`` becomes this process's GPU under torchrun; anything else is kept."""
        if requested == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return torch.device(requested)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_ints(self, values: Sequence[int]) -> list[int]:
        """Exact integer sums across processes (int64)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.int64, device=_collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [int(v) for v in tensor.tolist()]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def distributed(device: str = "cpu") -> Iterator[Context]:
    """Join the torchrun process group for the duration of the block (a no-op when alone)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield Context()
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend=backend)
    try:
        yield Context(rank=rank, world_size=world_size, local_rank=local_rank)
    finally:
        if owns_group:
            dist.destroy_process_group()
