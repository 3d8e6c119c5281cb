"""``diffusers:DIR`` -> :class:`~.diffusers_denoiser.DiffusersDenoiser` (docs/ALGORITHMS.md section 1.1;
docs/ARCHITECTURE.md, "The model contract").

Supported local folders (nothing is ever downloaded; weights must be ``.safetensors``):

* ``UNet2DModel`` pixel models: a ``DDPMPipeline``/``DDIMPipeline`` folder (``unet/`` + ``scheduler/``) or a bare UNet
  folder (``config.json`` + weights) with ``scheduler_config.json`` beside it or in ``../scheduler/``;
* latent pipelines (``LDMPipeline``: ``unet/`` + ``vqvae/`` or ``vae/``);
* ``StableDiffusionPipeline`` (SD 1.x/2.x) and ``StableDiffusionXLPipeline`` with their ``transformers`` text encoders;
* the flow-model transformer pipelines ``StableDiffusion3Pipeline`` (SD3, shift 3; the T5 encoder may be absent) and
  ``FluxPipeline`` (Flux, resolution-dependent shift) -> :class:`~.flow_denoiser.FlowTransformerDenoiser`.  Their
  latent size follows ``image_size`` (pixels; default: the transformer's ``sample_size``, 1024 for Flux).

The noise parameterisation comes from the scheduler config (:mod:`.parameterisation`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .base import ModelSpecError, register_resolver, spec_options
from .checkpoint import read_json
from .components import (
    Layout,
    check_expect,
    index_components,
    load_modules,
    quiet_hub_logs,
    require_diffusers,
    resolve_dtype,
    text_pipeline,
)
from .conditioning import TextEncoderBundle
from .diffusers_denoiser import DiffusersDenoiser
from .flow_folder import FLOW_PIPELINES, load_flow_pipeline
from .parameterisation import Parameterization


def _family(index_class: str, unet_cfg: dict[str, Any], param: Parameterization, latent: bool) -> str:
    if param.kind == "edm":
        return "edm"
    if unet_cfg.get("addition_embed_type") == "text_time" or "XL" in index_class:
        return "sdxl"
    if "StableDiffusion" in index_class:
        return {768: "sd15", 1024: "sd2"}.get(int(unet_cfg.get("cross_attention_dim") or 0), "sd")
    if latent:
        return "ldm"
    return "flow" if param.kind == "flow" else "ddpm"


def _locate(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """(folder, model_index or None) for a pipeline folder, a bare UNet folder or a ``unet/`` subfolder."""
    if not path.exists():
        raise ModelSpecError(f"{path}: no such folder")
    if path.is_file():
        raise ModelSpecError(
            f"{path}: diffusers: expects a folder (model_index.json or a UNet config.json); for a single "
            f".safetensors checkpoint use  single-file:{path} --config DIR"
        )
    if (path / "model_index.json").is_file():
        return path, read_json(path / "model_index.json", "pipeline index (model_index.json)")
    if (path / "config.json").is_file():
        return path, None
    raise ModelSpecError(
        f"{path}: not a diffusers folder: expected model_index.json (a saved pipeline) or config.json + "
        "scheduler_config.json (a UNet folder)"
    )


def load_folder(path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
                expect: str | None = None, overrides: dict[str, dict[str, torch.Tensor]] | None = None,
                source: str | None = None, default_cfg: float = 1.0, image_size: int | None = None
                ) -> DiffusersDenoiser:
    """Load a local diffusers folder (module docstring) as a :class:`DiffusersDenoiser`.

    ``expect``: ``"pixel" | "latent" | "text" | "sd" | "sdxl"`` - raise :class:`ModelSpecError` when the folder is of
    another family.  ``overrides``: component name -> state dict taking the place of the folder's weights
    (single-file checkpoints; ``source`` names that file in errors).  ``image_size``: image side in pixels of the
    SD3/Flux pipelines (sets their latent size and, for Flux, the shift).
    """
    require_diffusers()
    with quiet_hub_logs():
        return _load_folder(path, device, dtype, expect, overrides, source, default_cfg, image_size)


def _layout(root: Path, index: dict[str, Any] | None) -> Layout:
    """The components of a pipeline folder (``index``) or of a bare UNet folder (``index`` None)."""
    if index is None:  # a bare UNet folder
        ucfg = read_json(root / "config.json", "UNet config")
        sched = root / "scheduler_config.json"
        if not sched.is_file():
            sched = root.parent / "scheduler" / "scheduler_config.json"
        if not sched.is_file():
            raise ModelSpecError(
                f"{root}: no scheduler config (looked for {root / 'scheduler_config.json'} and {sched}); the noise "
                "schedule (betas, prediction_type) is needed to wrap the UNet - copy the scheduler_config.json of the "
                "pipeline it came from"
            )
        components = {"unet": ["diffusers", ucfg.get("_class_name", "UNet2DModel")]}
        return Layout(root, "", components, {"unet": root}, ucfg, sched)
    index_class = str(index.get("_class_name", ""))
    components = index_components(index, root)
    if "unet" not in components:
        kinds = ", ".join(sorted(components)) or "none"
        raise ModelSpecError(
            f"{root}: {index_class or 'this pipeline'} has no 'unet' component (has: {kinds}); adasde wraps "
            "UNet-based diffusers pipelines (DDPM/LDM/Stable Diffusion/SDXL) and the transformer pipelines "
            f"{', '.join(FLOW_PIPELINES)}"
        )
    folders = {k: root / k for k in components}
    ucfg = read_json(folders["unet"] / "config.json", "UNet config (unet/config.json)")
    return Layout(root, index_class, components, folders, ucfg, root / "scheduler" / "scheduler_config.json")


def _check_unet(lay: Layout) -> bool:
    """Refuse UNet classes and pipelines we do not wrap; True when the pipeline is text-conditioned."""
    root, index_class, components, ucfg = lay.root, lay.index_class, lay.components, lay.unet_cfg
    unet_cls = components["unet"][1]
    if ucfg.get("_class_name") and ucfg["_class_name"] != unet_cls:
        raise ModelSpecError(
            f"{lay.folders['unet'] / 'config.json'}: is a {ucfg['_class_name']} but {root / 'model_index.json'} "
            f"expects a {unet_cls}; the folder mixes model families"
        )
    if unet_cls not in ("UNet2DModel", "UNet2DConditionModel"):
        raise ModelSpecError(f"{root}: unet is a {unet_cls}; supported: UNet2DModel, UNet2DConditionModel")
    text = "text_encoder" in components
    if unet_cls == "UNet2DConditionModel" and not text:
        raise ModelSpecError(
            f"{root}: a UNet2DConditionModel needs its text encoder(s); give the whole StableDiffusionPipeline / "
            "StableDiffusionXLPipeline folder (model_index.json with unet, vae, text_encoder, tokenizer, scheduler)"
        )
    if text and "StableDiffusion" not in index_class:
        raise ModelSpecError(f"{root}: text-conditioned pipeline {index_class!r} is not supported "
                             "(StableDiffusionPipeline, StableDiffusionXLPipeline)")
    return text


def _load_folder(path: str | Path, device: torch.device | str | None, dtype: torch.dtype | str | None,
                 expect: str | None, overrides: dict[str, dict[str, torch.Tensor]] | None, source: str | None,
                 default_cfg: float, image_size: int | None = None) -> DiffusersDenoiser:
    root, index = _locate(Path(path).expanduser())
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dt = resolve_dtype(dtype, dev)
    src = source or str(root)
    if index is not None and "transformer" in index:
        return load_flow_pipeline(root, index, dt, expect, dict(overrides or {}), src, source, default_cfg,
                                   image_size).to(dev)
    if image_size is not None:
        raise ModelSpecError(f"{src}: image_size is for the SD3/Flux transformer pipelines; a UNet model's size is "
                             "fixed by its config (sample_size)")
    lay = _layout(root, index)
    scfg = read_json(lay.sched, "scheduler config")
    param = Parameterization.from_scheduler_config(scfg, str(lay.sched))
    text = _check_unet(lay)
    vae_name = "vae" if "vae" in lay.components else "vqvae" if "vqvae" in lay.components else None
    latent = vae_name is not None
    family = _family(lay.index_class, lay.unet_cfg, param, latent)
    check_expect(expect, src, lay.index_class or lay.components["unet"][1], family, latent, text)
    mods = load_modules(lay, ("unet", vae_name, "text_encoder", "text_encoder_2"), dt, dict(overrides or {}), src,
                         source)
    vae = mods.get(vae_name) if vae_name else None
    if vae is not None and dt == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae = vae.float()  # e.g. the SDXL VAE overflows in fp16
    bundle = None
    if text:
        pipe = text_pipeline(root, lay.index_class, lay.components, mods, scfg)
        vsf = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        size = lay.unet_cfg.get("sample_size", 64)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        bundle = TextEncoderBundle(pipe, family == "sdxl", (int(size[0]) * vsf, int(size[1]) * vsf))
    den = DiffusersDenoiser(mods["unet"], param, family=family, name=Path(src).name or src, vae=vae,
                            vae_kind=vae_name, text=bundle, default_cfg=default_cfg)
    return den.to(dev)


def _resolve(rest: str, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
             **kw: Any) -> DiffusersDenoiser:
    rest, opts = spec_options(rest, {"image_size": int})
    if not rest:
        raise ModelSpecError("diffusers: spec needs a folder, e.g. diffusers:/models/stable-diffusion-v1-5")
    if kw.get("config") is not None:
        raise ModelSpecError(f"diffusers:{rest}: --config is for single-file:FILE specs; a diffusers folder carries "
                             "its own configs")
    kw.pop("config", None)
    return load_folder(os.path.expanduser(rest), device=device, dtype=dtype, **{**opts, **kw})


register_resolver("diffusers", _resolve)
