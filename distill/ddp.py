"""Data-parallel helpers (docs/ALGORITHMS.md section 3.5: the batch is split across GPUs, gradients averaged).

Only the coefficient parameters are synchronised: each rank runs its own shard of trajectories (seeded by the
trajectory's global index, so the union of the shards is exactly the single-process batch), gradients are summed with
``all_reduce`` and divided by the world size, and rank 0 writes every file.  Works with ``torchrun`` (env://) and the
gloo backend on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(world size, rank); (1, 0) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def init_from_env(device: torch.device | str | None = None) -> bool:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1).  Returns whether it did."""
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def allreduce_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """In-place mean of ``tensors`` over all ranks (no-op without a process group)."""
    size, _ = world()
    if size == 1:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(size)


def allreduce_status(flag: float, values: list[float], device: torch.device) -> tuple[bool, list[float]]:
    """One collective per student step: (any rank failed, values averaged over ranks)."""
    size, _ = world()
    if size == 1:
        return flag > 0, values
    t = torch.tensor([flag, *values], dtype=torch.float64, device=device)
    f = t[:1].clone()
    dist.all_reduce(f, op=dist.ReduceOp.MAX)
    v = t[1:].clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return bool(f.item() > 0), (v / size).tolist()


def barrier() -> None:
    if world()[0] > 1:
        dist.barrier()
