"""Where work runs: device, dtype, CPU threads and the torchrun process group, decided in one place.

Every entry point (sampling, scoring, distillation) calls these, so ``--device``, ``--dtype``, ``--threads`` and
``torchrun`` mean the same everywhere.  Distributed helpers return ``(rank, world)`` in that order.
"""

from __future__ import annotations

import os

import torch

from .errors import UsageError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def device(name: str | torch.device | None = None) -> torch.device:
    """``name`` as a torch device; by default this rank's CUDA device when there is one, else the CPU."""
    if name is not None:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError) as exc:
            raise UsageError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``fp32`` / ``fp16`` / ``bf16`` (or a torch dtype) -> torch dtype; None keeps the model's own dtype."""
    if name is None or isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise UsageError(f"--dtype {name!r} is not known; use fp32, fp16 or bf16") from None


def set_threads(n: int | None) -> None:
    """Limit torch's CPU threads (``--threads``); None leaves torch's default."""
    if n is None:
        return
    if int(n) < 1:
        raise UsageError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(int(n))


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(dev: torch.device | str | None = None) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1): NCCL when this rank uses CUDA, else gloo.
    Returns ``(rank, world)``; a no-op for a single process or when already initialised."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (dev is None or torch.device(dev).type == "cuda")
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank_world()


def barrier() -> None:
    """Wait for every rank (no-op for a single process)."""
    import torch.distributed as dist

    if rank_world()[1] > 1:
        dist.barrier()
