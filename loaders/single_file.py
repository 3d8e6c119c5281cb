"""``single-file:FILE --config DIR``: one checkpoint file plus a local diffusers config folder, fully offline.

Spec forms: ``single-file:FILE --config DIR``, ``single-file:FILE?config=DIR`` or ``load_model("single-file:FILE",
config=DIR)`` (the CLI's ``--config``).  ``DIR`` is a diffusers folder as for ``diffusers:DIR`` (a pipeline folder with
``model_index.json``, or a UNet ``config.json`` with ``scheduler_config.json``); only its configs are needed - the
weights come from ``FILE`` (components that are not in ``FILE`` are read from ``DIR``).

Supported key layouts of ``FILE`` (diffusers naming):

* unprefixed diffusers UNet keys (``conv_in.weight``, ``down_blocks.0...``) - what ``unet.state_dict()`` /
  ``save_file(unet.state_dict(), FILE)`` writes; the other components come from ``DIR``;
* component-prefixed keys ``unet.*``, ``vae.*`` / ``vqvae.*``, ``text_encoder.*``, ``text_encoder_2.*`` (a whole
  pipeline in one file, each component's diffusers/transformers ``state_dict`` under its folder name).

The original CompVis/A1111 layout (``model.diffusion_model.*``, ``first_stage_model.*``) is recognised and refused with
the one-line conversion to run.  ``.safetensors`` is the format; ``.ckpt``/``.pt``/``.bin`` are read only with
``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from .base import Denoiser, ModelSpecError, register_resolver
from .checkpoint import read_checkpoint
from .diffusers_folder import load_folder

COMPONENT_PREFIXES = ("unet.", "vae.", "vqvae.", "text_encoder_2.", "text_encoder.")
LDM_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.")


def parse_spec(rest: str, config: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """(checkpoint file, config folder) of ``FILE --config DIR`` / ``FILE?config=DIR`` / ``FILE`` + ``config``."""
    m = re.fullmatch(r"\s*(.+?)\s+--config(?:\s+|=)(.+?)\s*", rest)
    if m:
        rest, inline = m.group(1), m.group(2)
    else:
        m = re.fullmatch(r"(.+?)\?config=(.+)", rest)
        rest, inline = (m.group(1), m.group(2)) if m else (rest, None)
    if inline is not None and config is not None and Path(inline) != Path(config):
        raise ModelSpecError(f"single-file:{rest}: two different config folders given ({inline} and {config})")
    cfg = inline if inline is not None else config
    return Path(rest.strip()).expanduser(), None if cfg is None else Path(str(cfg)).expanduser()


def split_components(sd: dict[str, torch.Tensor], source: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Component name -> state dict, by key layout (module docstring)."""
    if not sd:
        raise ModelSpecError(f"{source}: the checkpoint holds no tensors")
    if any(k.startswith(LDM_PREFIXES) for k in sd):
        raise ModelSpecError(
            f"{source}: original CompVis/A1111 key layout (model.diffusion_model.*); adasde reads diffusers-layout "
            "files. Convert once, offline: `StableDiffusionPipeline.from_single_file(FILE, config=DIR, "
            "local_files_only=True).save_pretrained(OUT)` (StableDiffusionXLPipeline for SDXL), then use diffusers:OUT"
        )
    comps: dict[str, dict[str, torch.Tensor]] = {}
    plain: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        for p in COMPONENT_PREFIXES:
            if k.startswith(p):
                comps.setdefault(p[:-1], {})[k[len(p):]] = v
                break
        else:
            plain[k] = v
    if comps and plain:
        raise ModelSpecError(
            f"{source}: mixes component-prefixed keys ({', '.join(sorted(comps))}) with unprefixed keys (e.g. "
            f"{next(iter(plain))}); use one layout: all keys prefixed by component, or a bare UNet state_dict"
        )
    return comps or {"unet": plain}


def load_single_file(file: str | os.PathLike, config: str | os.PathLike | None,
                     device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
                     expect: str | None = None, default_cfg: float = 1.0) -> Denoiser:
    """Checkpoint ``file`` + diffusers config folder ``config`` -> :class:`~.diffusers_denoiser.DiffusersDenoiser`."""
    path = Path(file).expanduser()
    if config is None:
        raise ModelSpecError(
            f"single-file:{path} needs a config folder: add --config DIR (a diffusers folder with model_index.json, "
            "or a UNet config.json + scheduler_config.json), e.g. single-file:model.safetensors --config ./sd15-config"
        )
    cfg_dir = Path(config).expanduser()
    if not cfg_dir.is_dir():
        raise ModelSpecError(f"{cfg_dir}: --config folder not found (single-file:{path})")
    comps = split_components(read_checkpoint(path), path)
    return load_folder(cfg_dir, device=device, dtype=dtype, expect=expect, overrides=comps, source=str(path),
                       default_cfg=default_cfg)


def _resolve(rest: str, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
             config: str | os.PathLike | None = None, **kw: Any) -> Denoiser:
    if not rest:
        raise ModelSpecError("single-file: spec needs a file, e.g. single-file:unet.safetensors --config DIR")
    file, cfg = parse_spec(rest, config)
    return load_single_file(file, cfg, device=device, dtype=dtype, **kw)


register_resolver("single-file", _resolve)
