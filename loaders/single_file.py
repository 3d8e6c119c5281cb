"""``single-file:FILE [--config DIR]``: one checkpoint file, fully offline.

Spec forms: ``single-file:FILE --config DIR``, ``single-file:FILE?config=DIR`` or ``load_model("single-file:FILE",
config=DIR)`` (the CLI's ``--config``); options of original Stable Diffusion files also as a query, e.g.
``single-file:v2-1_512.safetensors?prediction=epsilon&image_size=512``.

Supported key layouts of ``FILE``:

* the original CompVis / Stability layout of Stable Diffusion 1.x, 2.x and SDXL (``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.*`` / ``conditioner.embedders.*``): the architecture is detected and its
  configs are built in code (:mod:`.ldm_checkpoint`); ``DIR`` is optional and only supplies the tokenizers
  (``tokenizer/``, ``tokenizer_2/``) when they are not in the local Hugging Face cache.  Keyword arguments
  ``image_size`` (pixels) and ``prediction`` (``epsilon`` | ``v_prediction``, e.g. for SD 2.x-base) override the
  family defaults;
* diffusers naming, with ``DIR`` a diffusers folder as for ``diffusers:DIR`` (a pipeline folder with
  ``model_index.json``, or a UNet ``config.json`` with ``scheduler_config.json``) whose configs are used - the weights
  come from ``FILE`` (components that are not in ``FILE`` are read from ``DIR``):

  * unprefixed diffusers UNet keys (``conv_in.weight``, ``down_blocks.0...``) - what ``unet.state_dict()`` /
    ``save_file(unet.state_dict(), FILE)`` writes; the other components come from ``DIR``;
  * component-prefixed keys ``unet.*``, ``vae.*`` / ``vqvae.*``, ``text_encoder.*``, ``text_encoder_2.*`` (a whole
    pipeline in one file, each component's diffusers/transformers ``state_dict`` under its folder name).

``.safetensors`` is the format; ``.ckpt``/``.pt``/``.bin`` are read only with ``torch.load(weights_only=True)`` (no
arbitrary unpickling; a ``{"state_dict": ...}`` wrapper is unwrapped).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from .base import Denoiser, ModelSpecError, register_resolver, spec_options
from .checkpoint import read_checkpoint
from .components import check_expect, quiet_hub_logs, require_diffusers, resolve_dtype
from .diffusers_folder import load_folder
from .ldm_checkpoint import is_ldm_layout, load_ldm_checkpoint

COMPONENT_PREFIXES = ("unet.", "vae.", "vqvae.", "text_encoder_2.", "text_encoder.")
LDM_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.")


def parse_spec(rest: str, config: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """(checkpoint file, config folder) of ``FILE --config DIR`` / ``FILE?config=DIR`` / ``FILE`` + ``config``."""
    m = re.fullmatch(r"\s*(.+?)\s+--config(?:\s+|=)(.+?)\s*", rest)
    if m:
        rest, inline = m.group(1), m.group(2)
    else:
        rest, opts = spec_options(rest, {"config": str})
        inline = opts.get("config")
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
            f"{source}: original CompVis/A1111 key layout without a model.diffusion_model.* U-Net (a VAE or text "
            "encoder alone?); give the whole checkpoint (U-Net, VAE and text encoder in one file)"
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
                     expect: str | None = None, default_cfg: float = 1.0, image_size: int | None = None,
                     prediction: str | None = None) -> Denoiser:
    """Checkpoint ``file`` (+ config folder ``config``) -> :class:`~.diffusers_denoiser.DiffusersDenoiser`."""
    path = Path(file).expanduser()
    cfg_dir = None if config is None else Path(config).expanduser()
    if cfg_dir is not None and not cfg_dir.is_dir():
        raise ModelSpecError(f"{cfg_dir}: --config folder not found (single-file:{path})")
    sd = read_checkpoint(path)
    if is_ldm_layout(sd):
        require_diffusers()
        dev = torch.device(device) if device is not None else torch.device("cpu")
        with quiet_hub_logs():
            den = load_ldm_checkpoint(sd, str(path), resolve_dtype(dtype, dev), tokenizer_dir=cfg_dir,
                                      prediction=prediction, default_cfg=default_cfg, image_size=image_size)
        check_expect(expect, str(path), "Stable Diffusion checkpoint", den.family, True, True)
        return den.to(dev)
    if cfg_dir is None:
        raise ModelSpecError(
            f"single-file:{path} needs a config folder: add --config DIR (a diffusers folder with model_index.json, "
            "or a UNet config.json + scheduler_config.json), e.g. single-file:model.safetensors --config ./sd15-config"
        )
    if image_size is not None or prediction is not None:
        raise ModelSpecError(f"single-file:{path}: image_size / prediction are for original Stable Diffusion "
                             "checkpoints; a diffusers-layout file takes them from --config DIR")
    comps = split_components(sd, path)
    return load_folder(cfg_dir, device=device, dtype=dtype, expect=expect, overrides=comps, source=str(path),
                       default_cfg=default_cfg)


def _resolve(rest: str, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
             config: str | os.PathLike | None = None, **kw: Any) -> Denoiser:
    if not rest:
        raise ModelSpecError("single-file: spec needs a file, e.g. single-file:unet.safetensors --config DIR")
    rest, opts = spec_options(rest, {"config": str, "image_size": int, "prediction": str})
    if "config" in opts:
        rest = f"{rest}?config={opts.pop('config')}"
    file, cfg = parse_spec(rest, config)
    return load_single_file(file, cfg, device=device, dtype=dtype, **{**opts, **kw})


register_resolver("single-file", _resolve)
