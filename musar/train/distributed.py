"""Data parallelism over torch.distributed (gloo on CPU, nccl on GPU), or a single process.

Every process draws the same sample indices and per-sample seeds for a step; process r trains
the samples at positions r, r + W, r + 2W ... of the step's global batch. After the backward pass
the gradients are all-reduced and averaged, so each process applies the same update; only
process 0 writes checkpoints, validation images and the LoRA.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def positions(self, count: int) -> list[int]:
        """This process's positions in a global batch of ``count`` samples."""
        return list(range(self.rank, count, self.world))

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """All-reduce and average ``tensors`` in place (one flat buffer, one call)."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def mean(self, value: float, device=None) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world

    def any(self, flag: bool, device=None) -> bool:
        """True on every process when any process says True (a collective stop)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def current() -> Dist:
    """The process group torchrun set up (init_process_group already called), or one process."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist()
