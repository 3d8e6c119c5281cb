"""Data-parallel helpers (docs/ALGORITHMS.md section 3.5: the batch is split across GPUs, gradients averaged).

Only the coefficient parameters are synchronised: each rank runs its own shard of trajectories (seeded by the
trajectory's global index, so the union of the shards is exactly the single-process batch), gradients are summed with
``all_reduce`` and divided by the world size, and rank 0 writes every file.  Works with ``torchrun`` (env://) and the
gloo backend on CPU.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

from ..runtime import barrier, init_distributed, rank_world  # noqa: F401 - re-exported for the engine


def allreduce_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """In-place mean of ``tensors`` over all ranks (no-op without a process group)."""
    _, size = rank_world()
    if size == 1:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(size)


def allreduce_status(flag: float, values: list[float], device: torch.device) -> tuple[bool, list[float]]:
    """One collective per student step: (any rank failed, values averaged over ranks)."""
    _, size = rank_world()
    if size == 1:
        return flag > 0, values
    t = torch.tensor([flag, *values], dtype=torch.float64, device=device)
    f = t[:1].clone()
    dist.all_reduce(f, op=dist.ReduceOp.MAX)
    v = t[1:].clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return bool(f.item() > 0), (v / size).tolist()


