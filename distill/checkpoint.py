"""Training checkpoints: one ``.safetensors`` file with the raw parameters and the Adam moments, plus JSON metadata
(iteration, Adam step counts, settings, loss history) in the header under ``"adasde_checkpoint"``.  Written atomically
(tmp + ``os.replace``); never pickled.  All randomness is derived from (seed, trajectory index), and the learning
rate is a pure function of the iteration, so resuming from a checkpoint continues bit-exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

KEY = "adasde_checkpoint"


def save_checkpoint(path: str | os.PathLike, params: dict[str, torch.Tensor], optimizer: Any,
                    meta: dict[str, Any]) -> None:
    """Atomically write parameters, Adam state and ``meta`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    steps: dict[str, float] = {}
    names = list(params)
    for name in names:
        tensors[f"param.{name}"] = params[name].detach().cpu().contiguous().clone()
        st = optimizer.state.get(params[name], {})
        if st:
            tensors[f"adam.{name}.exp_avg"] = st["exp_avg"].detach().cpu().contiguous().clone()
            tensors[f"adam.{name}.exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous().clone()
            steps[name] = float(st["step"])
    meta = dict(meta, adam_steps=steps, param_names=names)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={KEY: json.dumps(meta)})
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a checkpoint; clear error when the file is not one."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({exc}); "
                         f"delete it or pass resume=False") from exc
    if KEY not in header:
        raise ValueError(f"{path}: safetensors file without '{KEY}' metadata, not a distillation checkpoint; "
                         f"delete it or pass another checkpoint= path")
    return tensors, json.loads(header[KEY])


def restore(params: dict[str, torch.Tensor], optimizer: Any, tensors: dict[str, torch.Tensor],
            meta: dict[str, Any], path: str | os.PathLike) -> None:
    """Copy saved parameters and Adam moments into ``params`` / ``optimizer`` (in place)."""
    missing = [n for n in params if f"param.{n}" not in tensors]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks parameters {missing}; it was written by a different run")
    with torch.no_grad():
        for name, p in params.items():
            src = tensors[f"param.{name}"]
            if src.shape != p.shape:
                raise ValueError(f"{path}: parameter {name} has shape {tuple(src.shape)}, expected {tuple(p.shape)}")
            p.copy_(src.to(device=p.device, dtype=p.dtype))
    steps = meta.get("adam_steps", {})
    for name, p in params.items():
        if name in steps:
            optimizer.state[p] = {
                "step": torch.tensor(float(steps[name])),
                "exp_avg": tensors[f"adam.{name}.exp_avg"].to(device=p.device, dtype=p.dtype),
                "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].to(device=p.device, dtype=p.dtype),
            }
