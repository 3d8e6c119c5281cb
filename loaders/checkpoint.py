"""Weights files and state dicts, checked before use: every loader reads weights through this module.

* :func:`read_json` - a config file, with the file named in the error;
* :func:`check_safetensors` / :func:`component_weights` - safetensors files of a diffusers component folder (pickle-only
  folders are refused, never unpickled);
* :func:`read_checkpoint` - one checkpoint file: ``.safetensors``, or a pickle read only with
  ``torch.load(weights_only=True)`` (a Lightning ``{"state_dict": ...}`` wrapper is unwrapped); a flat dict of tensors;
* :func:`load_checked` - the state-dict checker: missing/unexpected keys and wrong shapes are listed in one error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import ModelSpecError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelSpecError(f"{path}: missing {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"{path}: cannot read {what} ({exc}); the file is truncated or not JSON") from exc


def check_safetensors(path: Path) -> list[str]:
    """Keys of a safetensors file; truncated/corrupt files raise :class:`ModelSpecError` naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # noqa: BLE001 - SafetensorError and OSError
        raise ModelSpecError(
            f"{path}: not a readable .safetensors file ({exc}); the file is truncated or corrupt - download or "
            "convert it again"
        ) from exc


def component_weights(folder: Path) -> list[Path]:
    """The safetensors weights of one component folder; refuses pickle-only folders (never unpickled)."""
    st = sorted(folder.glob("*.safetensors"))
    if st:
        for f in st:
            check_safetensors(f)
        return st
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".ckpt", ".pt", ".pth", ".pkl"))
    if pickles:
        raise ModelSpecError(
            f"{folder}: only pickle weights ({', '.join(pickles)}); adasde loads .safetensors only. Convert once with "
            "`model.save_pretrained(folder, safe_serialization=True)` in a trusted environment"
        )
    return []



def load_checked(model: nn.Module, sd: dict[str, torch.Tensor], source: str, what: str, fix: str | None = None,
                 finite: bool = False) -> None:
    """``model.load_state_dict(sd)`` after checking it: missing/unexpected tensors and wrong shapes are listed in one
    :class:`ModelSpecError` ``"{source}: the weights do not fit the {what} (...); {fix}"``; ``finite`` also refuses
    NaN/inf values.  The one state-dict checker of every loader."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    # transformers' CLIP keeps a non-persistent-like position_ids buffer in some versions
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    fix = fix or "the checkpoint is of another model family or the --config folder is wrong"
    if missing or unexpected or shapes:
        def few(v: list[str]) -> str:
            return ", ".join(v[:4]) + (f" ... ({len(v)} in all)" if len(v) > 4 else "")

        parts = []
        if missing:
            parts.append(f"missing tensors {few(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {few(unexpected)}")
        if shapes:
            parts.append(f"wrong shapes {few(shapes)}")
        raise ModelSpecError(f"{source}: the weights do not fit the {what} ({'; '.join(parts)}); {fix}")
    if finite:
        bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ModelSpecError(f"{source}: non-finite values in {', '.join(bad[:5])}; {fix}")
    model.load_state_dict(sd, strict=False)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file (safetensors; pickles only through ``torch.load(weights_only=True)``)."""
    if not path.is_file():
        raise ModelSpecError(f"{path}: checkpoint file not found")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError (truncated zip), ...
            raise ModelSpecError(
                f"{path}: cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: {exc}); the file "
                "is truncated, or holds more than tensors - convert it to .safetensors in a trusted environment"
            ) from exc
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
            raise ModelSpecError(f"{path}: expected a flat dict of tensors (a state_dict)")
        return dict(obj)
    if path.suffix.lower() != ".safetensors":
        raise ModelSpecError(f"{path}: unknown checkpoint format {path.suffix!r}; expected .safetensors")
    check_safetensors(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelSpecError(f"{path}: cannot read the tensors ({exc}); the file is truncated or corrupt") from exc
