"""DDP under ``torchrun``: which rank this process is, and the process group's setup and barrier."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: object = None  # a gloo group for host-side agreement (stop flags): no device synchronisation

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    """DDP under torchrun (RANK/WORLD_SIZE set): NCCL on GPUs, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    control = dist.new_group(backend="gloo") if device_type == "cuda" else None
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), control)


def any_rank(dist: Dist, flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank must call it at the same point). A CPU all-reduce on a
    gloo group: under NCCL it does not wait for the GPU. Used so that a signal stops every rank at one step."""
    if dist.world <= 1:
        return flag
    import torch
    import torch.distributed as tdist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=dist.control)
    return bool(t.item())


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def shutdown(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.destroy_process_group()
