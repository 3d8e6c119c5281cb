"""Training checkpoints: one ``.safetensors`` file with the raw parameters and the Adam moments, plus JSON metadata
(iteration, Adam step counts, settings, loss history) in the header under ``"adasde_checkpoint"``.  Written atomically
(tmp + ``os.replace``); never pickled.  All randomness is derived from (seed, trajectory index), and the learning
rate is a pure function of the iteration, so resuming from a checkpoint continues bit-exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputFileError, UsageError
from ..fileio import atomic_write_bytes

KEY = "adasde_checkpoint"
FINGERPRINT_MAX_BYTES = 256 << 20  # hash the weights of models up to this size (the builtin U-Net: ~4 MB)


def weights_fingerprint(model: Any, max_bytes: int = FINGERPRINT_MAX_BYTES) -> str | None:
    """sha256 over the names, dtypes, shapes and bytes of a module's parameters and buffers; None for a plain
    callable, a module without tensors, or one larger than ``max_bytes`` (hashing gigabytes at every start would cost
    more than it protects; large models are identified by family, prediction, sigma range and name)."""
    if not isinstance(model, torch.nn.Module):
        return None
    state = model.state_dict()
    total = sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    if total == 0 or total > max_bytes:
        return None
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not torch.is_tensor(t):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run_identity(model: Any) -> dict[str, Any]:
    """What identifies the model a distillation trains against (compared on resume): family, prediction, sigma range,
    name and a weights fingerprint where available (``Denoiser.identity()`` plus :func:`weights_fingerprint`)."""
    out: dict[str, Any] = {}
    ident = getattr(model, "identity", None)
    if callable(ident):
        try:
            out.update(dict(ident()))
        except Exception:  # noqa: BLE001 - a host object with another identity() signature
            pass
    for key in ("family", "prediction", "sigma_min", "sigma_max", "flow"):
        if key not in out and getattr(model, key, None) is not None:
            out[key] = getattr(model, key)
    for key in ("sigma_min", "sigma_max"):
        if isinstance(out.get(key), (int, float)) and math.isfinite(float(out[key])):
            out[key] = float(out[key])
    out.setdefault("type", f"{type(model).__module__}.{type(model).__qualname__}")
    if out.get("fingerprint") is None:
        out["fingerprint"] = weights_fingerprint(model)
    return json.loads(json.dumps(out, default=str))


def check_resume(path: str | os.PathLike, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Raise :class:`UsageError` unless a checkpoint's settings (``saved``) equal this run's (``now``).

    The model identity (``now["model"]``, :func:`run_identity`) is compared first with its own message; then every
    other setting that changes the result (grid, teacher, scales, loss, lr, batch, seed, ...).
    """
    fix = "rerun with the same model and settings, delete the checkpoint, or start over without --resume"
    mine, theirs = now.get("model"), saved.get("model")
    if mine != theirs:
        if not isinstance(theirs, dict):
            raise UsageError(f"{path}: checkpoint records no model identity (written by an older adasde), so it "
                             f"may belong to another model; {fix}")
        keys = sorted(set(mine or {}) | set(theirs))
        diff = [f"{k}: checkpoint {theirs.get(k)!r} vs now {(mine or {}).get(k)!r}" for k in keys
                if theirs.get(k) != (mine or {}).get(k)]
        raise UsageError(f"{path}: checkpoint was made for another model ({'; '.join(diff)}); {fix}")
    keys = sorted((set(saved) | set(now)) - {"model"})
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
    if diff:
        raise UsageError(f"{path}: checkpoint was written with other settings ({'; '.join(diff)}); {fix}")


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
    from safetensors.torch import save as save_bytes

    meta = dict(meta, adam_steps=steps, param_names=names)
    atomic_write_bytes(path, save_bytes(tensors, metadata={KEY: json.dumps(meta)}))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a checkpoint; clear error when the file is not one."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:  # one open file: header and tensors of the same version
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(header[KEY]) if KEY in header else None
    except Exception as exc:  # noqa: BLE001 - safetensors / json raise several types on a corrupt file
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise InputFileError(f"{path}: not a readable distillation checkpoint ({why}); delete it or start over "
                             f"without --resume") from None
    if not isinstance(meta, dict):
        raise InputFileError(f"{path}: safetensors file without '{KEY}' metadata, not a distillation checkpoint; "
                             f"delete it or pass another --checkpoint path")
    return tensors, meta


def restore(params: dict[str, torch.Tensor], optimizer: Any, tensors: dict[str, torch.Tensor],
            meta: dict[str, Any], path: str | os.PathLike) -> None:
    """Copy saved parameters and Adam moments into ``params`` / ``optimizer`` (in place)."""
    missing = [n for n in params if f"param.{n}" not in tensors]
    if missing:
        raise InputFileError(f"{path}: checkpoint lacks parameters {missing}; it was written by a different run "
                             f"(delete it or start over without --resume)")
    with torch.no_grad():
        for name, p in params.items():
            src = tensors[f"param.{name}"]
            if src.shape != p.shape:
                raise InputFileError(f"{path}: parameter {name} has shape {tuple(src.shape)}, expected "
                                     f"{tuple(p.shape)}; the checkpoint belongs to another run (delete it)")
            p.copy_(src.to(device=p.device, dtype=p.dtype))
    steps = meta.get("adam_steps", {})
    for name, p in params.items():
        if name in steps:
            optimizer.state[p] = {
                "step": torch.tensor(float(steps[name])),
                "exp_avg": tensors[f"adam.{name}.exp_avg"].to(device=p.device, dtype=p.dtype),
                "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].to(device=p.device, dtype=p.dtype),
            }
