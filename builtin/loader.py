"""``builtin:fmnist``: the embedded Fashion-MNIST U-Net as a :class:`loaders.Denoiser` (docs/ARCHITECTURE.md).

Weights are read with safetensors only (loading never executes code).  A missing, truncated or foreign file, or one
whose tensors do not match the architecture recorded in its metadata, raises :class:`loaders.ModelSpecError`
naming the file and the fix (reinstall the package, or retrain with ``adasde train-builtin``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..loaders.base import ModelSpecError, register_resolver
from ..loaders.checkpoint import load_checked
from .unet import FMNISTDenoiser, UNetConfig

HERE = Path(__file__).resolve().parent
WEIGHTS_DIR = HERE / "weights"
FMNIST_WEIGHTS = WEIGHTS_DIR / "fmnist_unet.safetensors"
META_KEY = "adasde"
UNET_FORMAT = "adasde-builtin-unet"


def read_weights(path: str | os.PathLike, expected_format: str, fix: str) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, Any]]:
    """Read a safetensors file written by ``builtin`` training: its tensors and the JSON metadata ``"adasde"``.

    Raises :class:`ModelSpecError` (message: file, problem, ``fix``) for a missing, unreadable or foreign file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"weights file {path} not found; {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        size = path.stat().st_size
        raise ModelSpecError(f"weights file {path} ({size} bytes) is not a readable safetensors file ({exc}); "
                             f"it is truncated or damaged; {fix}") from exc
    try:
        meta = json.loads(raw_meta) if raw_meta else {}
    except json.JSONDecodeError as exc:
        raise ModelSpecError(f"weights file {path}: metadata {META_KEY!r} is not valid JSON ({exc}); {fix}") from exc
    if meta.get("format") != expected_format:
        raise ModelSpecError(f"weights file {path} has format {meta.get('format')!r}, expected {expected_format!r} "
                             f"(wrong file?); {fix}")
    return tensors, meta


_UNET_FIX = ("reinstall adasde (pip install --force-reinstall adasde) or retrain the weights with "
             "'adasde train-builtin --minutes 75'")


def load_fmnist(device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                path: str | os.PathLike | None = None) -> FMNISTDenoiser:
    """The embedded Fashion-MNIST denoiser (EMA weights) in eval mode, without gradients.

    ``dtype`` (default float32) is the U-Net's compute dtype; inputs of another dtype are handled by ``denoise``.
    """
    path = Path(path) if path is not None else FMNIST_WEIGHTS
    tensors, meta = read_weights(path, UNET_FORMAT, _UNET_FIX)
    try:
        cfg = UNetConfig.from_dict(meta["arch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelSpecError(f"weights file {path}: bad architecture metadata ({exc}); {_UNET_FIX}") from exc
    model = FMNISTDenoiser(cfg, meta=meta)
    load_checked(model.unet, tensors, f"weights file {path}", "architecture in its metadata", _UNET_FIX, True)
    model.eval().requires_grad_(False)
    return model.to(device=device or "cpu", dtype=dtype or torch.float32)


def _resolve(rest: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
             **kw: Any) -> FMNISTDenoiser:
    name = rest.strip().lower()
    if name != "fmnist":
        raise ModelSpecError(f"unknown built-in model 'builtin:{rest}'; available: builtin:fmnist")
    return load_fmnist(device=device, dtype=dtype, path=kw.get("path"))


register_resolver("builtin", _resolve)
